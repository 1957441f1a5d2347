"""torchvision-layout state_dicts (vgg16, alexnet, googlenet, resnet50/101) → our backbones.

Each backbone module's ``TORCHVISION_NAMES`` maps torchvision module prefixes to ours; a key
takes the longest matching prefix. Linear fc6/fc7 weights are reshaped to convolutions.
Torchvision keys we have no place for (``classifier.6``, ``fc``, ``aux*``) are returned as
unused; backbone tensors the file does not provide are an error.
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping

import torch
from torch import nn

from fcnseg.models.backbones import BACKBONES
from fcnseg.models.base import SegmentationModel
from fcnseg.models.preprocessing import TORCHVISION, Preprocessing
from fcnseg.models.weights.common import WeightsError, backbone_name, fit, load_into, set_preprocessing, trunk_of

__all__ = ["torchvision_names", "torchvision_preprocessing", "convert_torchvision", "load_torchvision"]


def _backbone_module(backbone: str):
    if backbone not in BACKBONES:
        raise WeightsError(f"unknown backbone {backbone!r}; choose from {sorted(BACKBONES)}")
    return importlib.import_module(BACKBONES[backbone].__module__)


def torchvision_names(backbone: str) -> dict[str, str]:
    """torchvision module prefix → our module path (relative to the backbone)."""
    table = getattr(_backbone_module(backbone), "TORCHVISION_NAMES", None)
    if callable(table):
        table = table(backbone)
    if table and all(isinstance(v, Mapping) for v in table.values()):  # one table per depth
        table = table.get(backbone)
    if not table:
        raise WeightsError(f"backbone {backbone!r} declares no TORCHVISION_NAMES table")
    return dict(table)


def torchvision_preprocessing(backbone: str) -> Preprocessing:
    """The module's ``TORCHVISION_PREPROCESSING`` (googlenet: its transform_input), else ImageNet mean/std."""
    return getattr(_backbone_module(backbone), "TORCHVISION_PREPROCESSING", TORCHVISION)


def convert_torchvision(state: Mapping[str, torch.Tensor], backbone: str, target: Mapping[str, torch.Tensor],
                        source: str = "state_dict") -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename and reshape ``state`` onto ``target`` (a backbone's ``state_dict``).

    Returns (converted tensors keyed like ``target``, unused source keys). Raises
    :class:`WeightsError` when a backbone tensor is not provided or does not fit.
    """
    table = torchvision_names(backbone)
    prefixes = sorted(table, key=len, reverse=True)
    out: dict[str, torch.Tensor] = {}
    unused: list[str] = []
    for key, value in state.items():
        p = next((p for p in prefixes if key.startswith(p + ".")), None)
        dst = table[p] + key[len(p):] if p is not None else None
        if dst is None or dst not in target:
            unused.append(key)
            continue
        out[dst] = fit(value, target[dst], f"{source}: {key} → {dst}")
    if not out:
        raise WeightsError(f"{source}: no key matches a torchvision {backbone} state_dict "
                           f"(first keys: {list(state)[:3]})")
    missing = [k for k in target if k not in out and not k.endswith("num_batches_tracked")]
    if missing:
        raise WeightsError(f"{source}: no weights for {len(missing)} {backbone} tensor(s), e.g. {missing[:3]}")
    return out, unused


def load_torchvision(model: nn.Module, state: Mapping[str, torch.Tensor], *, backbone: str | None = None,
                     source: str = "state_dict") -> list[str]:
    """Load a torchvision state_dict into an FCN's (or a bare) backbone; returns the unused keys.

    Sets the model's preprocessing to torchvision's (ImageNet mean/std on RGB in 0–1).
    """
    trunk = trunk_of(model)
    name = backbone_name(model, backbone)
    if name == "alexnet" and _caffenet_layout(model, trunk):
        raise WeightsError(f"{source}: torchvision alexnet weights need the torchvision layout; build the model "
                           "with create_model(..., backbone='alexnet', layout='torchvision')")
    converted, unused = convert_torchvision(state, name, trunk.state_dict(), source)
    load_into(trunk, converted)
    set_preprocessing(model, torchvision_preprocessing(name))
    return unused


def _caffenet_layout(model: nn.Module, trunk: nn.Module) -> bool:
    layout = model.spec.options.get("layout") if isinstance(model, SegmentationModel) else None
    if layout is not None:
        return layout != "torchvision"
    return any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in trunk.modules())
