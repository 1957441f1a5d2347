"""Shared bits of the importers: the error type and writing converted tensors into a model."""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn

from fcnseg.errors import FcnsegError, first_line
from fcnseg.models.backbones.base import Backbone
from fcnseg.models.base import CUSTOM, SegmentationModel
from fcnseg.models.preprocessing import Preprocessing
from fcnseg.models.surgery import fit_tensor

__all__ = ["WeightsError", "trunk_of", "backbone_name", "fit", "load_into", "set_preprocessing", "torch_load_failure"]


class WeightsError(FcnsegError, ValueError):
    """A weights file or name that cannot be loaded; the message names it."""


def trunk_of(model: nn.Module) -> Backbone:
    """The backbone of an FCN, or ``model`` itself when it is a backbone."""
    trunk = getattr(model, "backbone", model)
    if not isinstance(trunk, Backbone):
        raise TypeError(f"expected an FCN or a Backbone, got {type(model).__name__}")
    return trunk


def backbone_name(model: nn.Module, given: str | None = None) -> str:
    """The backbone's registry name: ``given``, else ``model.spec.backbone``."""
    name = given or (model.spec.backbone if isinstance(model, SegmentationModel) else None)
    name = None if name == CUSTOM else name
    if not name:
        raise WeightsError("cannot tell the model's backbone: build it with create_model() or pass backbone=")
    return name


def fit(value: torch.Tensor, target: torch.Tensor, where: str) -> torch.Tensor:
    """``value`` reshaped (see :func:`fit_tensor`) and cast to ``target``'s dtype, or a WeightsError."""
    try:
        return fit_tensor(value, target.shape, where).to(dtype=target.dtype)
    except ValueError as e:
        raise WeightsError(str(e)) from None


def load_into(module: nn.Module, updates: Mapping[str, torch.Tensor]) -> None:
    """Overwrite some of ``module``'s state (keys as in its ``state_dict``), strictly."""
    state = module.state_dict()
    unknown = [k for k in updates if k not in state]
    if unknown:
        raise KeyError(f"not in the model: {unknown[:3]}")
    state.update(updates)
    module.load_state_dict(state, strict=True)


def set_preprocessing(model: nn.Module, pre: Preprocessing) -> None:
    trunk_of(model).preprocessing = pre


def torch_load_failure(e: BaseException) -> str:
    """Why ``torch.load(..., weights_only=True)`` failed, in a few words for a one-line message."""
    text = str(e)
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if refused:
        return (f"refused to unpickle {refused.group(1)}: only tensors and plain data are loaded, since "
                "unpickling other objects can run arbitrary code")
    if isinstance(e, EOFError):
        return "empty or truncated file"
    if isinstance(e, KeyError):  # the legacy reader's magic-number lookup: not a torch.save file at all
        return "not a torch.save file (unrecognised content)"
    if "PytorchStreamReader" in text or "inline_container" in text:
        return "truncated or corrupt (not a complete torch.save zip archive)"
    if "Weights only load failed" in text:
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
        return "not a torch.save file of tensors" + (f" ({detail.group(1).strip()[:80]})" if detail else "")
    return first_line(e)
