"""The segmentation-model contract every consumer relies on (FCN, LateFusion, TrimmedFCN implement it).

A model holds its ``spec`` (what rebuilds it), its ``heads`` (name → classes, always a dict), the
``preprocessing`` its weights expect and its ``output_stride``. ``forward`` maps preprocessed images to a
dict of per-head scores at the input's size; ``features`` / ``forward_features`` split it at the backbone
taps so that cached taps can be scored without the trunk; ``predict`` goes from RGB 0–255 to labels.
"""
from __future__ import annotations

from abc import ABCMeta, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import nn

from fcnseg.data.io import as_image_batch
from fcnseg.models.preprocessing import Preprocessing, StreamPreprocessing

__all__ = ["CUSTOM", "HEAD", "ModelSpec", "SegmentationModel", "is_single", "single", "unwrap"]

CUSTOM = "custom"  # name and backbone of a spec for a net built without create_model

_NAMED = ("name", "backbone", "alignment", "learn_upsampling", "num_classes", "streams")


@dataclass(frozen=True)
class ModelSpec:
    """What builds a model: ``create_model(**spec.to_dict())`` rebuilds it; checkpoints store ``spec.to_dict()``.

    ``options`` holds every other ``create_model`` keyword (width, fc_channels, dropout, in_channels,
    fusion, depth_init, layout, weights ...), as given.
    """

    name: str
    num_classes: int | dict[str, int]
    backbone: str = "vgg16"
    alignment: str = "caffe"
    learn_upsampling: bool = False
    streams: dict[str, int] | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Flat: the keys (and order) of the old ``model.config`` dict; ``streams`` only for late fusion."""
        d: dict[str, Any] = {"name": self.name, "backbone": self.backbone, "alignment": self.alignment,
                             "learn_upsampling": self.learn_upsampling,
                             "num_classes": dict(self.num_classes) if isinstance(self.num_classes, dict)
                             else self.num_classes}
        if self.streams:
            d["streams"] = dict(self.streams)
        return {**d, **self.options}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelSpec:
        """Read ``to_dict()`` output, or an old checkpoint's ``"config"`` dict (``name@backbone`` accepted)."""
        d = dict(d)
        name = str(d.pop("name"))
        if "@" in name and "backbone" not in d:
            name, d["backbone"] = name.split("@", 1)
        named = {f.name: d.pop(f.name) for f in fields(cls) if f.name in _NAMED and f.name in d}
        if named.get("streams") is not None:
            named["streams"] = dict(named["streams"])
        return cls(name=name, **{k: v for k, v in named.items() if k != "name"}, options=d)

    def with_options(self, **options: Any) -> ModelSpec:
        """A copy with ``options`` updated (the spec itself never changes)."""
        return ModelSpec(self.name, self.num_classes, self.backbone, self.alignment, self.learn_upsampling,
                         self.streams, {**self.options, **options})


HEAD = "out"  # the head of a single-head model


def is_single(heads: Mapping[str, Any]) -> bool:
    """True for the heads (or outputs) of a single-head model: exactly the head ``"out"``."""
    return list(heads) == [HEAD]


def single(out: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The scores of head ``"out"``; a clear ValueError for other nets."""
    if HEAD not in out:
        raise ValueError(f"expected a single-head model (head 'out'), got heads {', '.join(out) or 'none'}")
    return out[HEAD]


def unwrap(out: Mapping[str, Any]) -> Any:
    """The single-head convenience for results: head ``"out"``'s value for a single-head model, else the dict."""
    return out[HEAD] if is_single(out) else dict(out)


class SegmentationModel(nn.Module, metaclass=ABCMeta):
    """Abstract base: what every segmentation model declares and does.

    Subclasses set ``spec``, ``heads`` and ``preprocessing`` and implement ``features``,
    ``forward_features``, ``output_stride`` and ``in_channels``; ``forward`` and ``predict`` follow.
    """

    spec: ModelSpec
    heads: dict[str, int]                                  # always a dict; one head is {"out": K}
    preprocessing: Preprocessing | StreamPreprocessing

    @property
    @abstractmethod
    def output_stride(self) -> int:
        """Stride of the coarsest tap the head reads (inputs are tiled on multiples of it)."""

    @property
    @abstractmethod
    def in_channels(self) -> int:
        """Input channels the model reads (3 for RGB; more for early/late fusion)."""

    @property
    def input_padding(self) -> int:
        """Pixels the network pads its input by on every side (100 for Caffe-aligned nets)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                return 0 if isinstance(m.padding, str) else int(max(m.padding))
        return 0

    @abstractmethod
    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Preprocessed N×C×H×W images → the backbone taps the head reads."""

    @abstractmethod
    def forward_features(self, features: dict[str, torch.Tensor], size: tuple[int, int]
                         ) -> dict[str, torch.Tensor]:
        """Resume from (cached) backbone taps: head → N×K×H×W scores at H×W = ``size``."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Preprocessed N×C×H×W images → head → N×K×H×W scores at the input's H×W, always a dict."""
        return self.forward_features(self.features(x), tuple(x.shape[-2:]))

    @torch.inference_mode()
    def predict(self, images) -> torch.Tensor | dict[str, torch.Tensor]:
        """Label maps for RGB 0–255 images: a tensor N×C×H×W or C×H×W (uint8 or float), a PIL image or a
        numpy H×W×3 / H×W array (see :func:`fcnseg.data.io.as_image_batch`); applies the preprocessing.
        One image in, an H×W map out; else N×H×W. One head → a tensor, several → a dict of them."""
        x, one = as_image_batch(images, "images", self.in_channels)
        device = next(self.parameters()).device
        out = self(self.preprocessing(x.to(device)))
        return unwrap({k: (v.argmax(1)[0] if one else v.argmax(1)) for k, v in out.items()})
