"""Caffe ``.caffemodel`` files (binary NetParameter) → our models, without Caffe.

Layers map by name: a backbone layer goes to the module whose last path component is the
Caffe name (``conv1_1``…``fc7`` for VGG16, ``conv1``…``fc7`` for CaffeNet); ``blobs[0]`` is the
weight, ``blobs[1]`` the bias; InnerProduct fc6/fc7 blobs are reshaped to convolutions. The
FCN reference releases' head layers map as::

    score_fr → score.<head>.<deepest tap>     score_pool4/3 → score.<head>.pool4/3
    upscore (32s) | upscore2, upscore16 (16s) | upscore2, upscore_pool4, upscore8 (8s)
        → upsample.<head>[0], [1], …

Multi-head nets use the suffix ``_<head>``; the SIFT Flow releases abbreviate their heads
(``score_fr_sem``, ``upscore2_geo``, ``score_pool4_sem``...), both spellings load. The NYUD RGB-D
release's first layer is ``conv1_1_bgrd``; the late-fusion release suffixes every layer of a stream
with the stream's name (``conv1_1color``, ``score_frhha``) and shares ``upscore``. FCN-8s at-once's
``scale_pool4``/``scale_pool3`` are checked against the model's tap scales. Layers of the file that
map nowhere, and head parameters an FCN release leaves unloaded, are reported with a warning.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fcnseg.models.base import HEAD
from fcnseg.models.preprocessing import CAFFE_VGG
from fcnseg.models.weights.common import WeightsError, fit, load_into, set_preprocessing, trunk_of

__all__ = ["CaffeLayer", "read_caffemodel", "parse_caffemodel", "write_caffemodel", "caffe_names", "load_caffe",
           "HEAD_SUFFIXES"]

# Head name → the suffixes a release may give its layers (the SIFT Flow releases abbreviate).
HEAD_SUFFIXES = {"semantic": ("_sem",), "geometric": ("_geo",)}


@dataclass
class CaffeLayer:
    """One layer of a caffemodel: its name, type (string, or the V1 enum number) and blobs."""

    name: str
    type: str | int
    blobs: list[np.ndarray]


def read_caffemodel(path: str | os.PathLike) -> list[CaffeLayer]:
    """Parse a ``.caffemodel`` file; layers from ``layer`` and legacy ``layers`` fields."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise WeightsError(f"{path}: cannot read ({e.strerror})") from None
    return parse_caffemodel(data, str(path))


def _messages():
    """The Caffe message classes (protobuf is imported here, when a caffemodel is read or written: ~0.2 s
    that no other command pays)."""
    from fcnseg.models.weights.caffe_proto import caffe_messages  # noqa: PLC0415

    return caffe_messages()


def parse_caffemodel(data: bytes, source: str = "caffemodel") -> list[CaffeLayer]:
    """Parse caffemodel bytes (see :func:`read_caffemodel`)."""
    msgs = _messages()
    try:
        net = msgs.NetParameter.FromString(data)
    except Exception as e:  # DecodeError, or anything odd from a non-protobuf file
        raise WeightsError(f"{source}: not a binary Caffe NetParameter ({type(e).__name__})") from None
    entries = list(net.layer) + list(net.layers)
    if any(not e.name and e.layer.name for e in net.layers):
        raise WeightsError(f"{source}: an old V0-format caffemodel (layers {{ layer {{ ... }} }}, Caffe before 2014); "
                           "upgrade it with Caffe's tools: upgrade_net_proto_binary OLD.caffemodel NEW.caffemodel")
    if not entries or not all(e.name for e in entries):
        raise WeightsError(f"{source}: no named layers found; not a binary .caffemodel (a .prototxt?)")
    layers, seen = [], set()
    for e in entries:
        if e.name in seen:
            continue
        seen.add(e.name)
        layers.append(CaffeLayer(e.name, e.type, [_blob_array(b, f"{source}: {e.name}") for b in e.blobs]))
    return layers


def _blob_array(blob, where: str) -> np.ndarray:
    if blob.HasField("shape"):
        shape = tuple(int(d) for d in blob.shape.dim)
    else:  # legacy 4-D num/channels/height/width
        shape = (blob.num, blob.channels, blob.height, blob.width)
    if len(blob.data):
        values = np.array(blob.data, dtype=np.float32)
    else:
        values = np.array(blob.double_data, dtype=np.float64).astype(np.float32)
    if not blob.HasField("shape") and not any(shape):
        shape = (values.size,)
    if values.size != int(np.prod(shape)):
        raise WeightsError(f"{where}: blob declares shape {shape} but holds {values.size} values")
    if not np.isfinite(values).all():
        raise WeightsError(f"{where}: blob holds non-finite values (NaN or inf)")
    return values.reshape(shape)


def write_caffemodel(path: str | os.PathLike | None, layers: Mapping[str, Sequence[np.ndarray | torch.Tensor]], *,
                     legacy: bool = False, types: Mapping[str, str] | None = None, name: str = "") -> bytes:
    """Serialise blobs as a real-format ``.caffemodel`` (tests and exporters); returns the bytes.

    ``legacy=True`` writes V1 ``layers`` with num/channels/height/width blob dims (shapes padded to
    4-D on the left, as old Caffe did); otherwise ``layer`` with ``BlobShape``. float64 arrays go to
    ``double_data``. ``types`` overrides the guessed layer types.
    """
    from fcnseg.models.weights.caffe_proto import V1_TYPES  # noqa: PLC0415 (with protobuf, see _messages)

    msgs = _messages()
    net = msgs.NetParameter(name=name) if name else msgs.NetParameter()
    for lname, blobs in layers.items():
        arrays = [b.detach().cpu().numpy() if isinstance(b, torch.Tensor) else np.asarray(b) for b in blobs]
        ltype = (types or {}).get(lname) or _guess_type(lname, arrays)
        if legacy:
            entry = net.layers.add(name=lname, type=V1_TYPES.get(ltype, 0))
        else:
            entry = net.layer.add(name=lname, type=ltype)
        for a in arrays:
            blob = entry.blobs.add()
            if legacy:
                if a.ndim > 4:
                    raise ValueError(f"{lname}: legacy blobs have at most 4 axes, got {a.shape}")
                blob.num, blob.channels, blob.height, blob.width = (1,) * (4 - a.ndim) + a.shape
            else:
                blob.shape.dim.extend(a.shape)
            # Packed values appended as raw wire bytes: orders of magnitude faster than .extend().
            blob.MergeFromString(_packed_field(8, a.astype("<f8")) if a.dtype == np.float64
                                 else _packed_field(5, a.astype("<f4")))
    out = net.SerializeToString()
    if path is not None:
        Path(path).write_bytes(out)
    return out


def _packed_field(number: int, a: np.ndarray) -> bytes:
    raw = np.ascontiguousarray(a).tobytes()
    return _varint(number << 3 | 2) + _varint(len(raw)) + raw


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _guess_type(name: str, arrays: list[np.ndarray]) -> str:
    if name.startswith("upscore"):
        return "Deconvolution"
    if name.startswith("scale_"):
        return "Scale"
    return "InnerProduct" if arrays and arrays[0].ndim == 2 else "Convolution"


def _upsample_names(n: int) -> list[str]:
    return {1: ["upscore"], 2: ["upscore2", "upscore16"], 3: ["upscore2", "upscore_pool4", "upscore8"]}.get(
        n, [f"upscore{i}" for i in range(n)])


def caffe_names(model: nn.Module) -> dict[str, str]:
    """Caffe layer name → our module path (relative to ``model``: an FCN or a bare backbone)."""
    trunk = trunk_of(model)
    prefix = "backbone." if trunk is not model else ""
    found: dict[str, list[str]] = {}
    for path, m in trunk.named_modules():
        if path and any(True for _ in m.parameters(recurse=False)):
            found.setdefault(path.rsplit(".", 1)[-1], []).append(prefix + path)
    names = {k: v[0] for k, v in found.items() if len(v) == 1}
    if "conv1_1" in names:  # nyud-fcn32s-color-d (early fusion, 4 input channels)
        names["conv1_1_bgrd"] = names["conv1_1"]
    for head in getattr(model, "heads", {}) if trunk is not model else {}:
        for sfx in ("",) if head == HEAD else (f"_{head}", *HEAD_SUFFIXES.get(head, ())):
            for i, tap in enumerate(model.tap_names):
                caffe = "score_fr" if i == 0 and tap == trunk.classifier_tap else f"score_{tap}"  # the classifier's
                names[caffe + sfx] = f"score.{head}.{tap}"
            for i, caffe in enumerate(_upsample_names(len(model.upsample[head]))):
                names[caffe + sfx] = f"upsample.{head}.{i}"
    return names


def _is_head_layer(name: str) -> bool:
    return name.startswith(("score", "upscore"))


def _listed(names: list[str], n: int = 8) -> str:
    return ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")


def load_caffe(model: nn.Module, path: str | os.PathLike | list[CaffeLayer], source: str | None = None,
               *, warn: bool = True) -> list[str]:
    """Load a caffemodel (path or parsed layers) into an FCN, a backbone or a late-fusion net;
    returns the unused layer names.

    Every backbone parameter must come from the file; head layers load when present (an FCN-32s
    file can initialise an FCN-16s). Sets the Caffe VGG preprocessing (BGR, 0–255, mean). With
    ``warn``, unused layers, and head parameters left unloaded by a file that has head layers, are
    named in a ``UserWarning``.
    """
    source = source or ("caffemodel" if isinstance(path, list) else str(path))
    layers = path if isinstance(path, list) else read_caffemodel(path)
    if isinstance(getattr(model, "streams", None), nn.ModuleDict):
        return _load_fused(model, layers, source, warn)
    unused, unloaded = _load_one(model, layers, source)
    if warn:
        _warn(source, unused, unloaded)
    return unused


def _warn(source: str, unused: list[str], unloaded: list[str]) -> None:
    if unused:
        warnings.warn(f"{source}: {len(unused)} layer(s) of the file map to no parameter of the model and were "
                      f"not loaded: {_listed(unused)}", stacklevel=3)
    if unloaded:
        warnings.warn(f"{source}: the file has FCN head layers but none for {len(unloaded)} head parameter(s), "
                      f"which keep their initialisation: {_listed(unloaded)}", stacklevel=3)


def _load_fused(model: nn.Module, layers: list[CaffeLayer], source: str, warn: bool) -> list[str]:
    """Late fusion: layers named ``<layer><stream>`` go to that stream, the others (the shared
    ``upscore``) to every stream; a file without stream suffixes initialises every stream."""
    streams = model.streams
    owner = {layer.name: next((s for s in streams if layer.name.endswith(s) and len(layer.name) > len(s)), None)
             for layer in layers}
    suffixed = any(owner.values())
    offered: dict[str, int] = {}
    unused_in: dict[str, int] = {}
    unloaded_all: list[str] = []
    for s, stream in streams.items():
        mine = {(layer.name[:-len(s)] if owner[layer.name] == s else layer.name): layer for layer in layers
                if not suffixed or owner[layer.name] in (s, None)}
        unused, unloaded = _load_one(stream, [CaffeLayer(n, x.type, x.blobs) for n, x in mine.items()], source)
        for x in mine.values():
            offered[x.name] = offered.get(x.name, 0) + 1
        for n in unused:
            unused_in[mine[n].name] = unused_in.get(mine[n].name, 0) + 1
        unloaded_all += [f"streams.{s}.{k}" for k in unloaded]
    unused_all = [layer.name for layer in layers if unused_in.get(layer.name, 0) == offered.get(layer.name, -1)]
    if hasattr(model, "refresh_preprocessing"):
        model.refresh_preprocessing()
    if warn:
        _warn(source, unused_all, unloaded_all)
    return unused_all


def _load_one(model: nn.Module, layers: list[CaffeLayer], source: str) -> tuple[list[str], list[str]]:
    """Load into an FCN or backbone; returns (unused layer names, head parameters the file's
    head layers left unloaded)."""
    names = caffe_names(model)
    state = model.state_dict()
    modules = dict(model.named_modules())
    scales = getattr(model, "tap_scales", {}) if trunk_of(model) is not model else {}
    updates: dict[str, torch.Tensor] = {}
    unused: list[str] = []
    scaled = set()
    for layer in layers:
        if not layer.blobs:
            continue
        if layer.name.startswith("scale_") and layer.name[6:] in scales:
            _check_scale(layer, scales[layer.name[6:]], source)
            scaled.add(layer.name[6:])
            continue
        target = names.get(layer.name)
        if target is None:
            unused.append(layer.name)
            continue
        params = [n for n, _ in modules[target].named_parameters(recurse=False)]
        if len(layer.blobs) != len(params):
            raise WeightsError(f"{source}: layer {layer.name} has {len(layer.blobs)} blobs, "
                               f"{target} expects {len(params)} ({', '.join(params)})")
        for pname, blob in zip(params, layer.blobs):
            key = f"{target}.{pname}"
            updates[key] = fit(torch.from_numpy(blob), state[key], f"{source}: {layer.name} → {key}")
    trunk_prefix = "backbone." if trunk_of(model) is not model else ""
    wanted = [trunk_prefix + k for k, _ in trunk_of(model).named_parameters()]
    missing = [k for k in wanted if k not in updates]
    if missing:
        raise WeightsError(f"{source}: no blobs for {len(missing)} backbone parameter(s), e.g. {missing[:3]}")
    for tap, s in scales.items():
        if s != 1.0 and tap not in scaled and f"score_{tap}" in {layer.name for layer in layers}:
            raise WeightsError(f"{source}: the model scales {tap} by {s:g} but the file has no scale_{tap} "
                               "layer (a staged FCN-8s file belongs in create_model('fcn8s', ...))")
    load_into(model, updates)
    set_preprocessing(model, CAFFE_VGG)
    has_head = any(_is_head_layer(layer.name) and layer.blobs for layer in layers)
    unloaded = [k for k, p in model.named_parameters() if has_head and p.requires_grad
                and not k.startswith(trunk_prefix) and k not in updates] if trunk_prefix else []
    return unused, unloaded


def _check_scale(layer: CaffeLayer, expected: float, source: str) -> None:
    values = layer.blobs[0]
    if not np.allclose(values, expected, rtol=1e-4, atol=0):
        got = float(values.reshape(-1)[0]) if values.size else float("nan")
        raise WeightsError(f"{source}: {layer.name} scales by {got:g} but the model by {expected:g} "
                           "(FCN-8s at-once files need create_model('fcn8s-atonce', ...))")

