"""Building the model a run trains: classes from the data, staged initialisation, freezing."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from fcnseg.config import ModelConfig, RunConfig
from fcnseg.errors import CheckpointError, ConfigError, FcnsegError
from fcnseg.models import FCN, create_model
from fcnseg.models.base import SegmentationModel
from fcnseg.models.checkpoint import load_checkpoint
from fcnseg.models.fusion import LateFusion
from fcnseg.models.preprocessing import Preprocessing, StreamPreprocessing
from fcnseg.models.trimmed import TrimmedFCN, trim_supported

__all__ = ["Resumable", "prepare_model", "stepped_net", "dataset_classes", "build_model", "init_from_checkpoint",
           "freeze_backbone", "set_dropout", "override_preprocessing"]


class Resumable(nn.Module):
    """The trained model as DDP wraps it: one ``forward`` for images and for cached backbone taps
    (DDP synchronises gradients only through ``forward``)."""

    def __init__(self, model: SegmentationModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor | None = None, features: dict[str, torch.Tensor] | None = None,
                size: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
        """``model(x)``, or ``model.forward_features(features, size)`` when ``features`` are given."""
        if features is None:
            return self.model(x)
        return self.model.forward_features(features, size)


def stepped_net(model: SegmentationModel, trim_border: bool) -> SegmentationModel:
    """The net a training step runs (``train.trim_border``): ``model`` itself, or the border-trimmed
    wrapper that trains through it (same parameters, loss and gradients to fp32 rounding)."""
    if not trim_border:
        return model
    if not trim_supported(model):
        spec = getattr(model, "spec", None)
        what = f"{spec.name}@{spec.backbone} ({spec.alignment} alignment)" if spec else type(model).__name__
        raise ConfigError(f"train.trim_border: {what} has no image-independent border to trim (needs a "
                          "single-stream FCN with alignment caffe whose first stages are conv/ReLU/max-pool, "
                          "e.g. VGG16)")
    return TrimmedFCN(model, trainable=True)


def dataset_classes(dataset: Any) -> int | dict:
    """Classes per head: ``dataset.heads`` if it has them, SIFT Flow's two heads for dict labels,
    else ``dataset.num_classes``."""
    heads = getattr(dataset, "heads", None)
    if isinstance(heads, dict):
        return dict(heads)
    if getattr(dataset, "task", None) == "both" and hasattr(dataset, "geo_classes"):
        return {"semantic": len(dataset.classes), "geometric": len(dataset.geo_classes)}
    n = getattr(dataset, "num_classes", None)
    if not n:
        raise ConfigError("cannot tell the number of classes from the dataset; set model.num_classes")
    return int(n)


def build_model(m: ModelConfig, num_classes: int | dict) -> SegmentationModel:
    """``create_model`` from the model section (None fields keep the backbone's defaults)."""
    kwargs: dict[str, Any] = {}
    if m.fc_channels is not None:
        kwargs["fc_channels"] = m.fc_channels
    if m.width is not None:
        kwargs["width"] = m.width
    if m.in_channels is not None:
        kwargs["in_channels"] = m.in_channels
    if m.streams:
        kwargs["streams"] = dict(m.streams)
        kwargs["fusion"] = m.fusion or "average"
    kwargs["depth_init"] = m.depth_init or "mean"
    try:
        model = create_model(m.name, num_classes, backbone=m.backbone, weights=m.weights, alignment=m.alignment,
                             learn_upsampling=m.learn_upsampling, **kwargs)
    except FcnsegError:
        raise
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"model: {e}") from None
    if m.dropout is not None:
        set_dropout(model, m.dropout)
    if m.preprocessing:
        override_preprocessing(model, m.preprocessing)
    return model


def prepare_model(cfg: RunConfig, classes: int | dict, device: torch.device, say: Callable[[str], None],
                  init: bool = True) -> tuple[SegmentationModel, list[str]]:
    """The net a run trains or scores, on ``device``: built from ``cfg.model`` (seeded by ``train.seed``),
    its backbone frozen as ``train.freeze_backbone`` says, initialised from ``model.init_from`` when ``init``.
    Returns it and its frozen stages."""
    t = cfg.train
    torch.manual_seed(t.seed)  # the same initialisation on every rank
    model = build_model(cfg.model, classes)
    frozen = freeze_backbone(model, t.freeze_backbone)
    if cfg.model.init_from and init:
        copied, fresh = init_from_checkpoint(model, cfg.model.init_from)
        listed = f" ({', '.join(fresh[:6])}{', ...' if len(fresh) > 6 else ''})" if fresh else ""
        say(f"initialised {len(copied)} tensors from {cfg.model.init_from}; "
            f"{len(fresh)} keep their initialisation{listed}")
    model.to(device)
    if t.channels_last:
        model.to(memory_format=torch.channels_last)
    return model, frozen


def override_preprocessing(model: nn.Module, spec: Mapping[str, Any]) -> None:
    """Replace fields of the model's preprocessing (``model.preprocessing`` of the config).

    ``spec``: ``{bgr, scale, mean, std, name}``, fields left out keep their value. For late fusion either
    one such dict for every stream or ``{stream name: dict}``.
    """
    if not isinstance(model, LateFusion):
        model.preprocessing = _replace(model.preprocessing, spec, "model.preprocessing")
        return
    streams = model.streams
    per_stream = bool(spec) and all(isinstance(v, Mapping) for v in spec.values())
    for name, stream in streams.items():
        given = spec.get(name) if per_stream else spec
        if given:
            stream.preprocessing = _replace(stream.preprocessing, given, f"model.preprocessing.{name}")
    model.preprocessing = StreamPreprocessing(tuple((n, s.backbone.in_channels, s.preprocessing)
                                                    for n, s in streams.items()))


def _replace(pre: Preprocessing, given: Mapping[str, Any], where: str) -> Preprocessing:
    values = {k: tuple(float(x) for x in v) if k in ("mean", "std") else v for k, v in given.items()}
    values.setdefault("name", "config")
    try:
        return dataclasses.replace(pre, **values)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


def set_dropout(model: nn.Module, p: float) -> None:
    if not 0 <= p < 1:
        raise ConfigError(f"model.dropout must be in [0, 1), got {p}")
    for mod in model.modules():
        if isinstance(mod, (nn.Dropout, nn.Dropout2d)):
            mod.p = p


def init_from_checkpoint(model: nn.Module, path: str | Mapping[str, str]) -> tuple[list[str], list[str]]:
    """Copy every tensor of checkpoint ``path`` whose name and shape match (staged 32s→16s→8s).

    For a late-fusion net ``path`` may map stream names to checkpoints (each stream starts from its
    single-modality net, as the reference's color-HHA net does). Returns (copied names, model names
    left at their initialisation).
    """
    if isinstance(path, Mapping):
        streams = model.streams if isinstance(model, LateFusion) else None
        if streams is None or set(path) - set(streams):
            have = sorted(streams) if streams is not None else "none (not a late-fusion net)"
            raise ConfigError(f"model.init_from names streams {sorted(path)}; the model's streams: {have}")
        copied = [f"streams.{n}.{k}" for n, p in path.items() for k in init_from_checkpoint(streams[n], p)[0]]
        done = set(copied)
        return copied, [k for k in model.state_dict() if k not in done]
    state = load_checkpoint(path)["model"]
    own = model.state_dict()
    copied = [k for k, v in state.items() if k in own and own[k].shape == v.shape]
    if not copied:
        raise CheckpointError(f"model.init_from {path}: no tensor matches the model's names and shapes")
    with torch.no_grad():
        for k in copied:
            own[k].copy_(state[k])
    return copied, [k for k in own if k not in set(copied)]


def freeze_backbone(model: SegmentationModel, upto: bool | str = True) -> list[str]:
    """Freeze the backbone up to and including stage ``upto`` (``train.freeze_backbone``).

    ``True``: every stage but the backbone's classifier stage (``fc6``/``fc7`` of VGG/AlexNet,
    ``Backbone.classifier_tap``), all stages where it has none; ``False``: nothing; a stage name (one of
    the backbone's taps): that stage and every earlier one — ``pool4`` leaves conv5 and fc6/fc7 learning,
    the classifier stage (``fc7``) the whole trunk, so only the score layers learn.

    Returns the frozen stage names (a prefix of the backbone). Frozen stages stay in eval mode
    (see :func:`keep_frozen_eval`) and out of the optimizer.
    """
    if upto is False:
        return []
    if not isinstance(model, FCN):
        raise ConfigError(f"train.freeze_backbone: needs a single-stream FCN, not {type(model).__name__}")
    names = list(model.backbone.stages.keys())
    if upto is True:
        frozen = [n for n in names if n != model.backbone.classifier_tap]
    elif upto in names:
        frozen = names[:names.index(upto) + 1]
    else:
        raise ConfigError(f"train.freeze_backbone: {upto!r} is not a stage of {model.spec.name}'s "
                          f"{model.spec.backbone} backbone; choose true, false or one of {', '.join(names)}")
    for n in frozen:
        for p in model.backbone.stages[n].parameters():
            p.requires_grad_(False)
        model.backbone.stages[n].eval()
    return frozen


def keep_frozen_eval(model: FCN, frozen: list[str]) -> None:
    """After ``model.train()``: frozen stages back to eval (batch norm statistics stay fixed)."""
    for n in frozen:
        model.backbone.stages[n].eval()
