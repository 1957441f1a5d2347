"""Weight files: the format from the bytes, the tensors read safely, a file loaded into a model.

Shared by :func:`fcnseg.models.weights.load_weights` (files given by path) and :mod:`.hub` (the
converted releases it caches, whose caffemodel layers this module reads back).
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from fcnseg.errors import one_line
from fcnseg.models.base import SegmentationModel
from fcnseg.models.preprocessing import preprocessing_from_dict
from fcnseg.models.weights.caffe import CaffeLayer, load_caffe, read_caffemodel
from fcnseg.models.weights.common import WeightsError, set_preprocessing, torch_load_failure
from fcnseg.models.weights.named import WEIGHTS
from fcnseg.models.weights.torchvision import load_torchvision

__all__ = ["CAFFE_LAYERS_FORMAT", "detect_format", "read_tensors", "is_caffe_layers", "read_caffe_layers",
           "load_weights_file", "record_weights"]

CAFFE_LAYERS_FORMAT = "fcnseg-caffe-layers"   # a converted caffemodel's safetensors metadata "format"


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


def read_tensors(path: Path, fmt: str):
    """The object in a ``"safetensors"`` or ``"torch"`` file (``weights_only=True``), or a WeightsError."""
    try:
        if fmt == "safetensors":
            return load_file(str(path))
        with warnings.catch_warnings():  # torch's notes on odd pickles: the error below says it all
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"{path}: unreadable as {fmt} weights ({torch_load_failure(e)})") from None


def _metadata(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def is_caffe_layers(path: str | os.PathLike) -> bool:
    """Whether a safetensors file holds converted caffemodel layers (see :func:`.hub.fetch`)."""
    try:
        return _metadata(Path(path)).get("format") == CAFFE_LAYERS_FORMAT
    except Exception:   # not safetensors after all: the caller's reader words the error
        return False


def read_caffe_layers(path: str | os.PathLike) -> list[CaffeLayer]:
    """The layers of a converted caffemodel, in the file's order."""
    path = Path(path)
    try:
        spec = json.loads(_metadata(path)["layers"])
        tensors = load_file(str(path))
        return [CaffeLayer(name, kind, [tensors[f"{i:04d}/{b}"].numpy() for b in range(n)])
                for i, (name, kind, n) in enumerate(spec)]
    except (KeyError, ValueError, TypeError, OSError) as e:
        raise WeightsError(f"{path}: corrupt converted caffemodel ({type(e).__name__}: {e}); delete it") from None


def record_weights(model: nn.Module, spec: str | os.PathLike) -> None:
    """Record ``weights=spec`` in ``model.spec``'s options (models with a spec only)."""
    if isinstance(model, SegmentationModel):
        model.spec = model.spec.with_options(weights=str(spec))


def load_weights_file(model: nn.Module, path: Path) -> list[str]:
    """Load the weights file ``path`` (format from its bytes) into ``model``; returns its unused keys/layers."""
    fmt = detect_format(path)
    if fmt == "safetensors":
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
    obj = read_tensors(path, fmt)
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
