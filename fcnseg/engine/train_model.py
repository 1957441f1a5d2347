"""Building the model a run trains: classes from the data, staged initialisation, freezing."""
from __future__ import annotations

from typing import Any, Union

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import CheckpointError, ConfigError
from ..models import FCN, create_model
from .checkpoint import load_checkpoint

__all__ = ["dataset_classes", "build_model", "init_from_checkpoint", "freeze_backbone", "set_dropout"]


def dataset_classes(dataset: Any) -> Union[int, dict]:
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


def build_model(m: ModelConfig, num_classes: Union[int, dict]) -> FCN:
    """``create_model`` from the model section (None fields keep the backbone's defaults)."""
    kwargs: dict[str, Any] = {}
    if m.fc_channels is not None:
        kwargs["fc_channels"] = m.fc_channels
    if m.width is not None:
        kwargs["width"] = m.width
    try:
        model = create_model(m.name, num_classes, backbone=m.backbone, weights=m.weights, alignment=m.alignment,
                             learn_upsampling=m.learn_upsampling, **kwargs)
    except (KeyError, TypeError) as e:
        raise ConfigError(f"model: {e}") from None
    if m.dropout is not None:
        set_dropout(model, m.dropout)
    return model


def set_dropout(model: nn.Module, p: float) -> None:
    if not 0 <= p < 1:
        raise ConfigError(f"model.dropout must be in [0, 1), got {p}")
    for mod in model.modules():
        if isinstance(mod, (nn.Dropout, nn.Dropout2d)):
            mod.p = p


def init_from_checkpoint(model: nn.Module, path: str) -> tuple[list[str], list[str]]:
    """Copy every tensor of checkpoint ``path`` whose name and shape match (staged 32s→16s→8s).

    Returns (copied names, model names left at their initialisation).
    """
    state = load_checkpoint(path)["model"]
    own = model.state_dict()
    copied = [k for k, v in state.items() if k in own and own[k].shape == v.shape]
    if not copied:
        raise CheckpointError(f"model.init_from {path}: no tensor matches the model's names and shapes")
    with torch.no_grad():
        for k in copied:
            own[k].copy_(state[k])
    return copied, [k for k in own if k not in set(copied)]


def freeze_backbone(model: FCN) -> list[str]:
    """Freeze the conv trunk: every stage but ``fc7`` for VGG/AlexNet, all stages otherwise.

    Returns the frozen stage names (a prefix of the backbone). Frozen stages stay in eval mode
    (see :func:`keep_frozen_eval`).
    """
    names = list(model.backbone.stages.keys())
    frozen = [n for n in names if n != "fc7"] if model.config.get("backbone") in ("vgg16", "alexnet") else names
    for n in frozen:
        for p in model.backbone.stages[n].parameters():
            p.requires_grad_(False)
        model.backbone.stages[n].eval()
    return frozen


def keep_frozen_eval(model: FCN, frozen: list[str]) -> None:
    """After ``model.train()``: frozen stages back to eval (batch norm statistics stay fixed)."""
    for n in frozen:
        model.backbone.stages[n].eval()
