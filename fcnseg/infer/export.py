"""Export a model to ONNX (dynamic batch/height/width) or torch.export, and quantize ONNX to int8.

The graph takes *preprocessed* images (what ``FCN.forward`` takes); the preprocessing, class count
and model config travel in the ONNX ``metadata_props`` (keys ``fcnseg.*``) so that
:class:`fcnseg.infer.engines.OrtEngine` applies them to RGB 0–255 input.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import io
import json
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fcnseg._version import __version__
from fcnseg.argcheck import module_arg, path_arg, size_arg
from fcnseg.atomic import atomic_write, write_bytes
from fcnseg.errors import FcnsegError, first_line
from fcnseg.models.base import SegmentationModel, is_single
from fcnseg.models.preprocessing import Preprocessing
from fcnseg.models.trimmed import TrimmedFCN

__all__ = ["ExportError", "export_onnx", "export_torch", "read_onnx_metadata", "decode_metadata", "quantize_onnx",
           "verify_onnx", "supported_opsets"]

META_PREFIX = "fcnseg."
# Three sizes (non-square, odd) on which an export is checked against PyTorch.
VERIFY_SIZES: tuple[tuple[int, int], ...] = ((64, 80), (97, 51), (130, 113))


class ExportError(FcnsegError, RuntimeError):
    """Export or quantization failed, or the exported graph disagrees with PyTorch."""


class _TupleOut(nn.Module):
    """Multi-head nets return a dict; ONNX outputs are positional, one per head."""

    def __init__(self, model: nn.Module, heads: Sequence[str]) -> None:
        super().__init__()
        self.model, self.heads = model, list(heads)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(x)
        return tuple(out[h] for h in self.heads)


def _metadata(model: SegmentationModel) -> dict[str, str]:
    """The ``fcnseg.*`` entries an export carries (read back by :func:`decode_metadata`)."""
    spec = model.spec
    meta = {"heads": json.dumps(model.heads), "num_classes": json.dumps(spec.num_classes),
            "config": json.dumps(spec.to_dict(), default=str), "version": __version__,
            "in_channels": str(model.in_channels), "output_stride": str(model.output_stride),
            "input_padding": str(model.input_padding), "preprocessing": json.dumps(model.preprocessing.to_dict())}
    return {META_PREFIX + k: v for k, v in meta.items()}


def _example(model: SegmentationModel, size: tuple[int, int], batch: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, model.in_channels, *size, generator=g) * 50


def _cpu_fp32(model: nn.Module) -> nn.Module:
    """The model in eval mode, fp32 on the CPU (a copy when it is elsewhere, so the caller's stays put)."""
    if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in model.parameters()):
        model = copy.deepcopy(model).float().cpu()
    return model.eval()


def _require_onnx():
    try:
        import onnx  # noqa: PLC0415 (optional: the [onnx] extra)
    except ImportError:
        raise ExportError("ONNX export needs the 'onnx' package: pip install 'fcnseg[onnx]'") from None
    return onnx


def export_onnx(model: nn.Module, path: str | os.PathLike, *, opset: int = 17, dynamic: bool = True,
                example_size: tuple[int, int] = (96, 112), verify: bool = True,
                verify_sizes: Iterable[tuple[int, int]] = VERIFY_SIZES, atol: float = 1e-4,
                trim: bool = False, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (fp32, CPU, eval) as ONNX with input ``input`` (N×C×H×W, preprocessed) and one
    output per head (``scores`` for a single-head net); N is symbolic, H/W too when ``dynamic``
    (else fixed at ``example_size``).

    The crop offsets are constants, the slice ends follow the input's symbolic shape; ``verify``
    runs ONNX Runtime on ``verify_sizes`` (when installed) and raises :class:`ExportError` if any
    score differs from PyTorch's by more than ``atol`` (relative to the scores' scale).

    ``trim``: export :class:`fcnseg.models.trimmed.TrimmedFCN` (exact, skips the image-independent
    pad-100 border); its plan depends on the size, so it needs ``dynamic=False`` (one ``example_size``).
    ``metadata``: extra ``fcnseg.*`` entries (JSON-encoded), e.g. the engine cache's model key.
    """
    model, path, example_size = module_arg(model), path_arg(path, "path"), size_arg(example_size, "example_size")
    if not atol >= 0:
        raise ValueError(f"atol must be >= 0, got {atol!r}")
    low, high = supported_opsets()
    if isinstance(opset, bool) or not isinstance(opset, int) or not low <= opset <= high:
        raise ValueError(f"opset must be a whole number in {low}..{high} (torch {torch.__version__}), got {opset!r}")
    onnx = _require_onnx()
    if trim:
        if dynamic:
            raise ExportError("trim=True exports one fixed input size: pass dynamic=False and example_size")
        model = TrimmedFCN(_cpu_fp32(model))
        with torch.no_grad():  # plan + background skeleton cached now, so they trace as constants
            model(_example(model, example_size))
    path = Path(path)
    if path.suffix.lower() != ".onnx":
        raise ExportError(f"export path {path} must end in .onnx")
    heads = list(model.heads)
    names = ["scores"] if is_single(model.heads) else heads
    model = _cpu_fp32(model)
    wrapped = _TupleOut(model, heads).eval()
    x = _example(model, example_size)
    dims = {0: "batch", 2: "height", 3: "width"} if dynamic else {0: "batch"}  # static: H/W fixed, N free
    axes = {"input": dims, **{n: dims for n in names}}
    kwargs = dict(input_names=["input"], output_names=names, opset_version=opset, dynamic_axes=axes,
                  do_constant_folding=True)
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False  # the TorchScript exporter: needs no onnxscript, keeps shapes symbolic
    buf = io.BytesIO()
    try:  # the exporter prints the graph IR on some failures: keep it off the user's stdout
        with warnings.catch_warnings(), torch.no_grad(), _stdout_discarded():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapped, (x,), buf, **kwargs)
    except Exception as e:
        raise ExportError(f"ONNX export of {type(model).__name__} at opset {opset} failed: {_exporter_reason(e)}") \
            from None
    proto = onnx.load_from_string(buf.getvalue())
    del buf
    meta = _metadata(model)
    if not dynamic:
        meta[META_PREFIX + "input_size"] = json.dumps(list(example_size))
    if trim:
        meta[META_PREFIX + "trim"] = "true"
    meta.update({META_PREFIX + k: json.dumps(v) for k, v in (metadata or {}).items()})
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    with atomic_write(path) as f:
        f.write(proto.SerializeToString())
    if verify and dynamic:
        verify_onnx(model, path, verify_sizes, atol=atol)
    elif verify:
        verify_onnx(model, path, [example_size], atol=atol)
    return path


@contextlib.contextmanager
def _stdout_discarded():
    """Discard what C++ code writes to file descriptor 1 (the exporter's IR dump) inside the block."""
    try:
        sys.stdout.flush()
        saved = os.dup(1)
    except (OSError, ValueError):  # no real stdout: nothing to protect
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _exporter_reason(e: BaseException) -> str:
    """The exporter's reason in one short line: no IR dump (``[Caused by ...``), no issue-tracker plea."""
    text = first_line(e, limit=10**6).split("[Caused by")[0].split(" Please feel free")[0].strip()
    return text if len(text) <= 300 else text[:297] + "..."


def verify_onnx(model: nn.Module, path: str | os.PathLike, sizes: Iterable[tuple[int, int]], *,
                atol: float = 1e-4) -> float:
    """Max |Δ| (relative to max |score|) between ONNX Runtime and PyTorch over ``sizes``; raises
    :class:`ExportError` above ``atol``. Returns 0.0 without checking when onnxruntime is missing."""
    try:
        import onnxruntime as ort  # noqa: PLC0415 (optional: the [onnx] extra; kept out of torch bench workers)
    except ImportError:
        return 0.0
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for i, size in enumerate(sizes):
        x = _example(model, size, batch=1 + i % 2)
        with torch.no_grad():
            ref = _TupleOut(model, list(model.heads))(x)
        try:
            got = sess.run(None, {"input": x.numpy()})
        except Exception as e:
            raise ExportError(f"exported {path} fails at input size {size}: {str(e).splitlines()[0]}") from None
        for r, g in zip(ref, got):
            if tuple(r.shape) != g.shape:
                raise ExportError(f"exported {path} gives shape {g.shape} at input size {size}, "
                                  f"PyTorch {tuple(r.shape)}")
            scale = max(1.0, float(r.abs().max()))
            worst = max(worst, float((torch.from_numpy(g) - r).abs().max()) / scale)
    if worst > atol:
        raise ExportError(f"exported {path} disagrees with PyTorch: max relative |Δ| {worst:.2e} > {atol:g}")
    return worst


def read_onnx_metadata(path: str | os.PathLike) -> dict:
    """The ``fcnseg.*`` metadata of an exported file, JSON-decoded (``preprocessing``, ``heads`` …)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file not found: {path}")
    try:
        import onnxruntime as ort  # noqa: PLC0415 (optional: the [onnx] extra; kept out of torch bench workers)

        props = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]) \
            .get_modelmeta().custom_metadata_map
    except ImportError:
        onnx = _require_onnx()
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return decode_metadata(props)


def decode_metadata(props: dict[str, str]) -> dict:
    """The ``fcnseg.*`` entries of an ONNX file's metadata properties, JSON-decoded (the one codec;
    :func:`_metadata` writes them)."""
    out = {}
    for k, v in props.items():
        if k.startswith(META_PREFIX):
            key = k[len(META_PREFIX):]
            try:
                out[key] = json.loads(v)
            except json.JSONDecodeError:
                out[key] = v
    return out


def export_torch(model: nn.Module, path: str | os.PathLike, *, dynamic: bool = True,
                 example_size: tuple[int, int] = (96, 112)) -> Path:
    """Save ``torch.export.export(model)`` as a ``.pt2`` archive (``torch.export.load`` reads it);
    the metadata rides in the archive's extra file ``fcnseg.json``.

    Dynamic N/H/W use ``Dim.AUTO`` (torch >= 2.6): strict ``Dim`` ranges fail on the guards that
    ceil-mode pooling and the crop/``min`` in the head produce, which hold for every size but which
    the symbolic solver cannot prove. On older torch pass ``dynamic=False`` (one fixed size).
    """
    model, path, example_size = module_arg(model), path_arg(path, "path"), size_arg(example_size, "example_size")
    if path.suffix.lower() != ".pt2":
        raise ExportError(f"torch.export path {path} must end in .pt2")
    model = _cpu_fp32(model)
    x = _example(model, example_size, batch=2)
    shapes = None
    if dynamic:
        auto = getattr(torch.export.Dim, "AUTO", None)
        if auto is None:
            raise ExportError(f"torch {torch.__version__} has no torch.export.Dim.AUTO: dynamic torch.export "
                              "needs torch >= 2.6; use dynamic=False or ONNX")
        shapes = {"x": {0: auto, 2: auto, 3: auto}}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ep = torch.export.export(model, (x,), dynamic_shapes=shapes)
    except Exception as e:
        kind = "with dynamic shapes " if dynamic else ""
        raise ExportError(f"torch.export {kind}failed: {str(e).splitlines()[0]}") from None
    with atomic_write(path) as f:
        torch.export.save(ep, f, extra_files={"fcnseg.json": json.dumps(_metadata(model))})
    return path


# ---------------------------------------------------------------- int8 quantization (ONNX Runtime)

def quantize_onnx(src: str | os.PathLike, dst: str | os.PathLike, calibration: Iterable[torch.Tensor] | None,
                  *, mode: str = "static", per_channel: bool = True, fp32_head: bool = True,
                  calibrate: str = "percentile") -> Path:
    """Int8 copy of an exported model. ``mode="static"``: QDQ graph (uint8 activations, int8 per-channel
    weights) calibrated on ``calibration`` (RGB 0–255 images, C×H×W or N×C×H×W; a few are enough) by
    ``calibrate`` = ``"percentile"`` (99.999th; the most accurate here), ``"minmax"`` or ``"entropy"``;
    ``"dynamic"``: weights
    only, activations quantized at run time (no calibration). ``fp32_head`` keeps the cheap layers
    that write the scores (the 1×1 score convs and the upsampling deconvolutions) in fp32.
    Metadata is kept. Lossy: measure it with ``scripts/bench_quant_miou.py``."""
    try:
        from onnxruntime.quantization import (  # noqa: PLC0415 (optional: the [onnx] extra)
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_dynamic,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process  # noqa: PLC0415 (optional: the [onnx] extra)
    except ImportError:
        raise ExportError("int8 quantization needs onnxruntime: pip install 'fcnseg[onnx]'") from None

    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f"ONNX file not found: {src}")
    meta = read_onnx_metadata(src)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), _quiet(), \
            contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"  # dst appears whole, at the end
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        exclude = _head_nodes(pre, meta) if fp32_head else []
        if mode == "dynamic":
            quantize_dynamic(str(pre), str(out), weight_type=QuantType.QInt8, per_channel=per_channel,
                             nodes_to_exclude=exclude)
        elif mode == "static":
            if calibration is None:
                raise ExportError("static int8 quantization needs calibration images")
            prep = Preprocessing.from_dict(meta["preprocessing"]) if "preprocessing" in meta else None
            feeds = []
            for img in calibration:
                x = img[None] if img.dim() == 3 else img
                x = prep(x) if prep is not None else x.float()
                feeds.append({"input": x.contiguous().numpy()})
            if not feeds:
                raise ExportError("static int8 quantization got an empty calibration set")

            class _Reader(CalibrationDataReader):
                def __init__(self) -> None:
                    self._it = iter(feeds)

                def get_next(self):
                    return next(self._it, None)

            methods = {"minmax": (CalibrationMethod.MinMax, {}), "entropy": (CalibrationMethod.Entropy, {}),
                       "percentile": (CalibrationMethod.Percentile, {"CalibPercentile": 99.999})}
            if calibrate not in methods:
                raise ExportError(f"calibrate must be one of {sorted(methods)}, got {calibrate!r}")
            method, extra = methods[calibrate]
            quantize_static(str(pre), str(out), _Reader(), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            per_channel=per_channel, nodes_to_exclude=exclude, calibrate_method=method,
                            extra_options=extra)
        else:
            raise ExportError(f"quantization mode must be 'static' or 'dynamic', got {mode!r}")
        _set_metadata(out, {**{META_PREFIX + k: json.dumps(v) for k, v in meta.items()},
                            META_PREFIX + "quantized": json.dumps(f"int8-{mode}")}, dst)
    return dst


def _head_nodes(path: Path, meta: dict) -> list[str]:
    """Names of the score layers (1×1 convs to a head's class count) and the upsampling deconvolutions."""
    onnx = _require_onnx()
    proto = onnx.load(str(path))
    shapes = {t.name: list(t.dims) for t in proto.graph.initializer}
    classes = {int(k) for k in (meta.get("heads") or {}).values()}
    names = []
    for node in proto.graph.node:
        w = shapes.get(node.input[1]) if len(node.input) > 1 else None
        if node.op_type == "ConvTranspose" or (
                node.op_type == "Conv" and w is not None and len(w) == 4 and w[0] in classes and w[2:] == [1, 1]):
            names.append(node.name)
    return names


@contextlib.contextmanager
def _quiet():
    log = logging.getLogger()
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _set_metadata(path: Path, props: dict[str, str], dst: Path | None = None) -> None:
    """Set ``props`` in the ONNX file ``path``, written (atomically) to ``dst`` (default: ``path``)."""
    onnx = _require_onnx()
    proto = onnx.load(str(path))
    keep = [p for p in proto.metadata_props if p.key not in props]
    del proto.metadata_props[:]
    for p in keep:
        proto.metadata_props.add(key=p.key, value=p.value)
    for k, v in props.items():
        proto.metadata_props.add(key=k, value=v)
    write_bytes(dst or path, proto.SerializeToString())


# ---------------------------------------------------------------- CLI pieces (wired by fcnseg.cli)

def supported_opsets() -> tuple[int, int]:
    """The ONNX opsets the installed torch (TorchScript exporter) and onnx can both write."""
    try:
        from torch.onnx import _constants as c  # noqa: PLC0415 (optional: private torch module, varies by version)

        low = int(c.ONNX_MIN_OPSET)
        high = int(getattr(c, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", c.ONNX_MAX_OPSET))
    except (ImportError, AttributeError):
        low, high = 7, 17
    try:
        import onnx.defs  # noqa: PLC0415 (optional: the [onnx] extra)

        high = min(high, int(onnx.defs.onnx_opset_version()))
    except ImportError:
        pass
    return max(low, 10), high  # ceil-mode max pooling needs opset 10+
