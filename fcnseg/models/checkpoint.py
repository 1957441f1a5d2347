"""Checkpoints: written atomically, checksummed, loaded without unpickling arbitrary objects."""
from __future__ import annotations

import hashlib
import math
import os
import reprlib
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from fcnseg.argcheck import module_arg, path_arg
from fcnseg.atomic import atomic_write
from fcnseg.config import RunConfig
from fcnseg.errors import CheckpointError, ConfigError, first_line
from fcnseg.models import create_model
from fcnseg.models.base import ModelSpec, SegmentationModel
from fcnseg.models.preprocessing import Preprocessing, preprocessing_from_dict
from fcnseg.models.weights.common import torch_load_failure

__all__ = ["save_checkpoint", "load_checkpoint", "model_from_checkpoint", "state_checksum"]

FORMAT = "fcnseg-checkpoint-v1"


def state_checksum(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over a state_dict's names and tensor bytes, in key order."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous().reshape(-1)  # flat: channels_last 1x1 weights have stride(-1) != 1
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        if t.numel():
            h.update(t.view(torch.uint8).numpy())  # the tensor's own bytes (no copy)
    return h.hexdigest()


def save_checkpoint(path: str | os.PathLike, model: SegmentationModel, **extra: Any) -> Path:
    """Write ``{"model", "config", "preprocessing", "checksum", **extra}`` atomically.

    ``extra`` holds only tensors, numbers, strings, lists and dicts (optimizer state, step,
    RNG states, train config), so it loads with ``weights_only=True``.
    """
    path, model = path_arg(path, "path"), module_arg(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "model": state, "config": model.spec.to_dict(),
               "preprocessing": model.preprocessing.to_dict(), "checksum": state_checksum(state), **extra}
    with atomic_write(path) as f:
        torch.save(payload, f)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu", *,
                    training_state: bool = True) -> dict[str, Any]:
    """Load and verify a checkpoint; any defect is a one-line ``CheckpointError`` naming the file.

    On the CPU the file is memory-mapped (``torch.load(mmap=True)``): tensors are read from the page
    cache as they are used, never copied. ``training_state=False`` leaves the fields only a resumed run
    reads (optimizer, scheduler, scaler, RNG states: as large as the weights) unchecked, so their bytes
    are never touched; the weights and every other field are checked as always.
    """
    path = path_arg(path, "path")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file" if path.exists() else f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # torch's notes on odd pickles: the error below says it all
            warnings.simplefilter("ignore")
            mmap = torch.device(map_location).type == "cpu" and zipfile.is_zipfile(path)  # legacy files: read
            ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:  # truncated, not a torch file, or holds forbidden objects
        raise CheckpointError(f"cannot read checkpoint {path}: {torch_load_failure(e)}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an fcnseg checkpoint")
    state = ckpt.get("model")
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise CheckpointError(f"checkpoint {path} is corrupt: 'model' is not a state_dict of tensors")
    if not isinstance(ckpt.get("config"), dict) or not isinstance(ckpt.get("preprocessing"), dict):
        raise CheckpointError(f"checkpoint {path} is corrupt: 'config' or 'preprocessing' is missing")
    if state_checksum(ckpt["model"]) != ckpt.get("checksum"):
        raise CheckpointError(f"checkpoint {path} is corrupt: weights do not match their checksum")
    check_fields(path, ckpt, training_state)
    return ckpt


# --- the checkpoint schema -------------------------------------------------------------------------
_TORCH_RNG_BYTES = torch.get_rng_state().numel()
_MT_WORDS = 624


class _Bad(Exception):
    """A field that does not match the schema: ``field`` and what is wrong with it."""

    def __init__(self, field: str, why: str) -> None:
        super().__init__(f"'{field}' {why}")


def _int(v: Any, field: str, lo: int = 0, hi: int | None = None) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < lo or (hi is not None and v > hi):
        span = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise _Bad(field, f"must be an integer {span}, got {_short(v)}")


def _number(v: Any, field: str, lo: float | None = None, hi: float | None = None) -> None:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if not ok or (lo is not None and v < lo) or (hi is not None and v > hi):
        span = f" in [{lo}, {hi}]" if hi is not None else (f" >= {lo}" if lo is not None else "")
        raise _Bad(field, f"must be a finite number{span}, got {_short(v)}")


def _short(v: Any) -> str:
    return reprlib.repr(v) if not isinstance(v, torch.Tensor) else f"a {v.dtype} tensor of shape {tuple(v.shape)}"


def _tensor(v: Any, field: str) -> None:
    """A real tensor (no complex or quantized dtype); floating ones finite."""
    if not isinstance(v, torch.Tensor):
        raise _Bad(field, f"must be a tensor, got {_short(v)}")
    if v.is_complex() or v.is_quantized or v.layout != torch.strided:
        raise _Bad(field, f"has dtype {v.dtype}; only real (floating, integer or bool) dense tensors are allowed")
    if v.is_floating_point() and not _finite(v):
        raise _Bad(field, "holds non-finite values (NaN or inf)")


def _finite(v: torch.Tensor) -> bool:
    """No NaN or inf in ``v``. A finite sum proves it (a NaN or inf entry makes any sum NaN or inf) without
    a mask the size of ``v``; only a sum that overflowed is checked entry by entry."""
    return bool(torch.isfinite(v.sum())) or bool(torch.isfinite(v).all())


def _tensors_in(obj: Any, field: str) -> None:
    """Every tensor nested in ``obj`` (optimizer / scaler state) is real and finite."""
    if isinstance(obj, torch.Tensor):
        _tensor(obj, field)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _tensors_in(v, f"{field}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _tensors_in(v, f"{field}[{i}]")
    elif isinstance(obj, float) and not math.isfinite(obj) and not field.endswith("scale"):
        raise _Bad(field, f"must be finite, got {obj}")


def _byte_state(v: Any, field: str, n: int | None) -> None:
    if not isinstance(v, torch.Tensor) or v.dtype != torch.uint8 or v.dim() != 1 or (n is not None and v.numel() != n):
        want = f"{n} bytes" if n is not None else "bytes"
        raise _Bad(field, f"must be a torch.uint8 vector of {want}, got {_short(v)}")


def _rng_state(s: Any, field: str) -> None:
    """One rank's RNG states as :func:`fcnseg.train.state.rng_state` writes them."""
    if not isinstance(s, dict) or not {"torch", "numpy", "python"} <= set(s):
        raise _Bad(field, "must be a mapping with torch, numpy and python states")
    _byte_state(s["torch"], f"{field}.torch", _TORCH_RNG_BYTES)
    cuda = s.get("cuda", [])
    if not isinstance(cuda, list):
        raise _Bad(f"{field}.cuda", f"must be a list, got {_short(cuda)}")
    for i, c in enumerate(cuda):
        _byte_state(c, f"{field}.cuda[{i}]", None)
    n = s["numpy"]
    if not isinstance(n, dict):
        raise _Bad(f"{field}.numpy", f"must be a mapping, got {_short(n)}")
    keys = n.get("keys")
    if not isinstance(keys, torch.Tensor) or keys.dtype != torch.int64 or tuple(keys.shape) != (_MT_WORDS,) \
            or keys.min() < 0 or keys.max() >= 1 << 32:
        raise _Bad(f"{field}.numpy.keys", f"must be {_MT_WORDS} 32-bit words (int64 tensor), got {_short(keys)}")
    _int(n.get("pos"), f"{field}.numpy.pos", 0, _MT_WORDS)
    _int(n.get("has_gauss"), f"{field}.numpy.has_gauss", 0, 1)
    _number(n.get("gauss"), f"{field}.numpy.gauss")
    p = s["python"]
    if not isinstance(p, dict):
        raise _Bad(f"{field}.python", f"must be a mapping, got {_short(p)}")
    _int(p.get("version"), f"{field}.python.version", 0)
    st = p.get("state")
    if not isinstance(st, list) or len(st) != _MT_WORDS + 1 \
            or not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 1 << 32 for x in st):
        raise _Bad(f"{field}.python.state", f"must be {_MT_WORDS + 1} 32-bit integers, got {_short(st)}")
    if p.get("gauss_next") is not None:
        _number(p["gauss_next"], f"{field}.python.gauss_next")


def _mapping(v: Any, field: str) -> None:
    if not isinstance(v, dict):
        raise _Bad(field, f"must be a mapping, got {_short(v)}")


def _run_config(v: Any, field: str) -> None:
    _mapping(v, field)
    try:
        RunConfig.from_dict(v, source=field)
    except ConfigError as e:
        raise _Bad(field, f"is not a valid run config ({first_line(e)})") from None


def _optimizer(v: Any, field: str) -> None:
    _mapping(v, field)
    if not isinstance(v.get("state"), dict) or not isinstance(v.get("param_groups"), list):
        raise _Bad(field, "must hold 'state' (a mapping) and 'param_groups' (a list)")
    for i, g in enumerate(v["param_groups"]):
        _mapping(g, f"{field}.param_groups[{i}]")
        _number(g.get("lr"), f"{field}.param_groups[{i}].lr", 0.0)
    _tensors_in(v["state"], f"{field}.state")


def _scheduler(v: Any, field: str) -> None:
    _mapping(v, field)
    if "last_epoch" in v:
        _int(v["last_epoch"], f"{field}.last_epoch", -1)
    _tensors_in(v, field)


def _optional_number(lo: float | None = None, hi: float | None = None):
    return lambda v, field: None if v is None else _number(v, field, lo, hi)


def _rng_list(v: Any, field: str) -> None:
    if not isinstance(v, list):
        raise _Bad(field, f"must be a list of per-rank RNG states, got {_short(v)}")
    for i, s in enumerate(v):
        _rng_state(s, f"{field}[{i}]")


def _names(v: Any, field: str) -> None:
    if v is not None and (not isinstance(v, list) or not all(isinstance(x, str) for x in v)):
        raise _Bad(field, f"must be a list of class names, got {_short(v)}")


# optional fields (training checkpoints): name -> check(value, field); absent fields are not checked
_FIELDS = {
    "iteration": lambda v, f: _int(v, f, 0),
    "epoch": _optional_number(0.0),
    "world_size": lambda v, f: _int(v, f, 1),
    "run_config": _run_config,
    "best_mean_iu": _optional_number(0.0, 1.0),
    "elapsed": _optional_number(0.0),
    "rng_per_rank": _rng_list,
    "optimizer": _optimizer,
    "scheduler": _scheduler,
    "scaler": lambda v, f: None if not v else (_mapping(v, f), _tensors_in(v, f)),
    "sampler": lambda v, f: None if v is None else _mapping(v, f),
    "metrics": lambda v, f: None if v is None else _mapping(v, f),
    "classes": _names,
}


_TRAINING_STATE = ("rng_per_rank", "optimizer", "scheduler", "scaler", "sampler")


def check_fields(path: str | os.PathLike, ckpt: dict[str, Any], training_state: bool = True) -> None:
    """Validate every field and tensor dtype of a loaded checkpoint (the one schema); a defect is a
    ``CheckpointError`` naming the file and the field. ``training_state=False``: not the fields only a
    resumed run reads (:data:`_TRAINING_STATE`)."""
    try:
        for k, v in ckpt["model"].items():
            _tensor(v, f"model.{k}")
        for name, check in _FIELDS.items():
            if name in ckpt and (training_state or name not in _TRAINING_STATE):
                check(ckpt[name], name)
    except _Bad as e:
        raise CheckpointError(f"checkpoint {path} is corrupt: {e}") from None


def model_from_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                          num_classes: int | None = None) -> tuple[SegmentationModel, dict[str, Any]]:
    """Rebuild the model a checkpoint was trained as, load its weights, return (model, checkpoint).

    The net is built on the meta device and takes the checkpoint's tensors as its own
    (``load_state_dict(assign=True)``; memory-mapped on the CPU): the weights exist once, and no random
    initialisation is computed only to be overwritten. The training state is not checked (see
    :func:`load_checkpoint`); ``fcnseg train --resume`` reads it through ``load_checkpoint``.
    """
    ckpt = load_checkpoint(path, map_location, training_state=False)
    try:
        spec = ModelSpec.from_dict(ckpt["config"])
    except Exception as e:  # no name, odd field types: the config was not written by fcnseg
        raise CheckpointError(f"checkpoint {path}: its config does not build a model ({first_line(e)})") from None
    if num_classes is not None and spec.num_classes != num_classes:
        raise CheckpointError(f"checkpoint {path} has {spec.num_classes} classes, expected {num_classes}")
    options = {k: v for k, v in spec.options.items() if k != "weights"}
    if spec.streams:
        options.setdefault("fusion", "sum")  # late-fusion checkpoints from before model.fusion summed their streams
    cfg = ModelSpec(**{**vars(spec), "options": options}).to_dict()
    name, classes = cfg.pop("name"), cfg.pop("num_classes")
    try:  # on the meta device: a forged config (say width=100) allocates nothing before it is checked
        with torch.device("meta"):
            model = create_model(name, classes, **cfg)
    except Exception as e:  # unknown name or option, bad value: the config was not written by fcnseg
        raise CheckpointError(f"checkpoint {path}: its config does not build a model ({first_line(e)})") from None
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    odd = sorted(set(shapes) ^ set(ckpt["model"])) or [k for k in shapes if shapes[k] != tuple(ckpt["model"][k].shape)]
    if odd:
        k = odd[0]
        have = f"is {tuple(ckpt['model'][k].shape)} in the file" if k in ckpt["model"] else "is not in the file"
        want = f"{shapes[k]} in the model" if k in shapes else "not in the model"
        raise CheckpointError(f"checkpoint {path} does not fit model {name} with {classes} classes: {k} {have}, "
                              f"{want}")
    try:
        model.load_state_dict(ckpt["model"], assign=True)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not fit model {name}: {first_line(e, 300)}") from None
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:  # a tensor the state_dict does not hold (a non-persistent buffer): never silently left empty
        raise CheckpointError(f"checkpoint {path}: model {name} has tensors no checkpoint holds ({left[0]})")
    try:
        pre = preprocessing_from_dict(ckpt["preprocessing"])
        if isinstance(pre, Preprocessing):
            values = (pre.scale, *pre.mean, *pre.std)
            if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values) or 0 in pre.std:
                raise ValueError(f"scale/mean/std must be finite numbers, std non-zero: {values}")
    except Exception as e:
        raise CheckpointError(f"checkpoint {path}: bad preprocessing record ({type(e).__name__}: "
                              f"{first_line(e)})") from None
    model.preprocessing = pre
    return model, ckpt
