"""Pretrained weights: a registry of named sets and ``load_weights`` for names and files.

``load_weights(model, spec)`` takes a registered name (``"hed-vgg16"``) or a path:
``.caffemodel`` (Caffe), ``.pth``/``.pt`` (``torch.save``, read with ``weights_only=True``) or
``.safetensors`` holding a torchvision-layout state_dict, an fcnseg state_dict, or an fcnseg
checkpoint (``{"model": ..., "config": ...}``). The format is detected from the content.
Released models (``"voc-fcn8s"``, ``"imagenet"`` …, see :mod:`.hub`) are downloaded and cached.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fcnseg.errors import one_line
from fcnseg.models.base import SegmentationModel
from fcnseg.models.preprocessing import CAFFE_HED, Preprocessing, preprocessing_from_dict
from fcnseg.models.weights.caffe import load_caffe, read_caffemodel
from fcnseg.models.weights.common import WeightsError, backbone_name, set_preprocessing, torch_load_failure
from fcnseg.models.weights.hed import HED_SHA256, HED_SOURCE, load_hed
from fcnseg.models.weights.torchvision import load_torchvision

__all__ = ["WeightsInfo", "WEIGHTS", "WeightsError", "WeightsNotFoundError", "detect_format", "load_weights"]


@dataclass(frozen=True)
class WeightsInfo:
    """Metadata of a named weight set (in the spirit of torchvision's ``Weights``)."""

    backbone: str
    source: str
    sha256: str
    license: str
    preprocessing: Preprocessing
    notes: str = ""


WEIGHTS: dict[str, WeightsInfo] = {
    "hed-vgg16": WeightsInfo(
        backbone="vgg16", source=HED_SOURCE, sha256=HED_SHA256, license="MIT", preprocessing=CAFFE_HED,
        notes="VGG16 conv1_1-conv5_3 from HED (ImageNet VGG16 fine-tuned on BSDS500 edges); "
              "the file has no fc6/fc7, which keep their random initialisation.",
    ),
}
_LOADERS = {"hed-vgg16": load_hed}


class WeightsNotFoundError(FileNotFoundError):
    """``weights=`` is neither a registered name nor an existing file."""


def detect_format(path: str | os.PathLike) -> str:
    """``"torch"`` (torch.save zip or legacy pickle), ``"safetensors"``, ``"caffe"`` or ``"hdf5"``, from the bytes."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(16)
    size = path.stat().st_size
    # safetensors first: its 8-byte header length may start with 0x80, a pickle's first byte
    n = int.from_bytes(head[:8], "little") if len(head) > 8 else 0
    if head[8:9] == b"{" and 8 + n <= size and n < 1 << 28 and _json_header(path, n):
        return "safetensors"
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return "torch"
    if head[:8] == b"\x89HDF\r\n\x1a\n":
        return "hdf5"
    return "caffe"


def _json_header(path: Path, n: int) -> bool:
    with open(path, "rb") as f:
        f.seek(8)
        try:
            return isinstance(json.loads(f.read(n)), dict)
        except ValueError:
            return False


def load_weights(model: nn.Module, spec: str | os.PathLike) -> list[str]:
    """Load ``spec`` (registered name or file) into ``model``; returns the file's unused keys/layers.

    Sets ``model.preprocessing`` to what the weights expect and records ``weights`` in ``model.spec``'s options.
    """
    from fcnseg.models.weights import hub

    release = hub.resolve(spec, model.spec.backbone if isinstance(model, SegmentationModel) else None)
    if release is not None:
        unused = hub.load_release(model, release)
    elif isinstance(spec, str) and spec in WEIGHTS:
        info = WEIGHTS[spec]
        if backbone_name(model) != info.backbone:
            raise WeightsError(f"weights {spec!r} are for backbone {info.backbone}, "
                               f"the model has {backbone_name(model)}")
        unused = _LOADERS[spec](model)
        set_preprocessing(model, info.preprocessing)
    else:
        path = Path(spec)
        if not path.is_file():
            names = sorted(WEIGHTS) + ["imagenet"] + sorted(n for n, r in hub.RELEASES.items() if r.model)
            raise WeightsNotFoundError(f"weights {str(spec)!r}: neither a registered name "
                                       f"({', '.join(names)}) nor an existing file")
        unused = _load_file(model, path)
    if isinstance(model, SegmentationModel):
        model.spec = model.spec.with_options(weights=str(spec))
    return unused


def _load_file(model: nn.Module, path: Path) -> list[str]:
    fmt = detect_format(path)
    if fmt == "safetensors":
        from fcnseg.models.weights.hub import is_caffe_layers, read_caffe_layers
        if is_caffe_layers(path):  # a release's caffemodel, converted by the hub
            return load_caffe(model, read_caffe_layers(path), source=str(path))
    if fmt == "caffe":
        try:
            layers = read_caffemodel(path)
        except WeightsError:
            if path.suffix == ".caffemodel":
                raise
            raise WeightsError(f"{path}: unrecognised weights file (not torch.save, safetensors "
                               "or a binary .caffemodel)") from None
        return load_caffe(model, layers, source=str(path))
    if fmt == "hdf5":
        raise WeightsError(f"{path}: HDF5 weight files are not supported (the HED trunk loads as 'hed-vgg16')")
    obj = _read_tensors(path, fmt)
    if isinstance(obj, dict) and "model" in obj and "config" in obj:
        if isinstance(obj["model"], dict):
            _check_finite(obj["model"], path)
        return _load_checkpoint(model, obj, path)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: holds no state_dict of tensors")
    _check_finite(obj, path)
    if any(k.startswith("backbone.") for k in obj):  # an fcnseg model's own state_dict
        _strict_load(model, obj, path)
        return []
    return load_torchvision(model, obj, source=str(path))


def _check_finite(state: dict, path: Path) -> None:
    """Weights are real floating tensors with finite values (BatchNorm's step counters are integers)."""
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            continue
        if not v.is_floating_point() and not (k.endswith("num_batches_tracked") and not v.is_complex()):
            raise WeightsError(f"{path}: tensor {k} has dtype {v.dtype}; weights must be floating point")
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise WeightsError(f"{path}: non-finite values (NaN or inf) in {k}")


def _read_tensors(path: Path, fmt: str):
    try:
        if fmt == "safetensors":
            from safetensors.torch import load_file
            return load_file(str(path))
        with warnings.catch_warnings():  # torch's notes on odd pickles: the error below says it all
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"{path}: unreadable as {fmt} weights ({torch_load_failure(e)})") from None


def _load_checkpoint(model: nn.Module, ckpt: dict, path: Path) -> list[str]:
    """An fcnseg checkpoint: strict load of ``ckpt["model"]``; preprocessing from the checkpoint."""
    _strict_load(model, ckpt["model"], path)
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    pre = ckpt.get("preprocessing") or config.get("preprocessing")
    if isinstance(pre, dict):
        set_preprocessing(model, preprocessing_from_dict(pre))
    elif config.get("weights") in WEIGHTS:
        set_preprocessing(model, WEIGHTS[config["weights"]].preprocessing)
    return []


def _strict_load(model: nn.Module, state: dict, path: Path) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as e:
        detail = one_line(e, 300, join=True)
        raise WeightsError(f"{path}: does not match this model ({detail})") from None
