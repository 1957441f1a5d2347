"""Checkpoints: written atomically, checksummed, loaded without unpickling arbitrary objects."""
from __future__ import annotations

import hashlib
import math
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_write
from ..errors import CheckpointError, first_line
from ..models import FCN, create_model
from ..models.preprocessing import Preprocessing, preprocessing_from_dict
from ..models.weights.common import torch_load_failure

__all__ = ["save_checkpoint", "load_checkpoint", "model_from_checkpoint", "state_checksum"]

FORMAT = "fcnseg-checkpoint-v1"


def state_checksum(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over a state_dict's names and tensor bytes, in key order."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous().reshape(-1)  # flat: channels_last 1x1 weights have stride(-1) != 1
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_checkpoint(path: str | os.PathLike, model: FCN, **extra: Any) -> Path:
    """Write ``{"model", "config", "preprocessing", "checksum", **extra}`` atomically.

    ``extra`` holds only tensors, numbers, strings, lists and dicts (optimizer state, step,
    RNG states, train config), so it loads with ``weights_only=True``.
    """
    from ..argcheck import module_arg, path_arg

    path, model = path_arg(path, "path"), module_arg(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "model": state, "config": dict(model.config),
               "preprocessing": model.preprocessing.to_dict(), "checksum": state_checksum(state), **extra}
    with atomic_write(path) as f:
        torch.save(payload, f)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and verify a checkpoint; any defect is a one-line ``CheckpointError`` naming the file."""
    from ..argcheck import path_arg

    path = path_arg(path, "path")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file" if path.exists() else f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # torch's notes on odd pickles: the error below says it all
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
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
    bad = [k for k, v in ckpt["model"].items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"checkpoint {path} holds non-finite weights in {bad[0]}")
    return ckpt


def model_from_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                          num_classes: int | None = None) -> tuple[FCN, dict[str, Any]]:
    """Rebuild the model a checkpoint was trained as, load its weights, return (model, checkpoint)."""
    ckpt = load_checkpoint(path, map_location)
    cfg = dict(ckpt["config"])
    if num_classes is not None and cfg.get("num_classes") != num_classes:
        raise CheckpointError(f"checkpoint {path} has {cfg.get('num_classes')} classes, expected {num_classes}")
    cfg.pop("weights", None)
    name, classes = cfg.pop("name", None), cfg.pop("num_classes", None)
    try:  # on the meta device first: a forged config (say width=100) must not allocate before it is checked
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in create_model(name, classes, **cfg).state_dict().items()}
    except Exception as e:  # unknown name or option, bad value: the config was not written by fcnseg
        raise CheckpointError(f"checkpoint {path}: its config does not build a model ({first_line(e)})") from None
    odd = sorted(set(shapes) ^ set(ckpt["model"])) or [k for k in shapes if shapes[k] != tuple(ckpt["model"][k].shape)]
    if odd:
        k = odd[0]
        have = f"is {tuple(ckpt['model'][k].shape)} in the file" if k in ckpt["model"] else "is not in the file"
        want = f"{shapes[k]} in the model" if k in shapes else "not in the model"
        raise CheckpointError(f"checkpoint {path} does not fit model {name} with {classes} classes: {k} {have}, "
                              f"{want}")
    model = create_model(name, classes, **cfg)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not fit model {name}: {first_line(e, 300)}") from None
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
