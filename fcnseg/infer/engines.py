"""Inference engines behind one interface: RGB 0–255 images in, scores or labels out.

* :class:`TorchEngine` — PyTorch eager (``inference_mode``), optional channels_last, bf16/fp16
  autocast, ``torch.compile`` and CUDA graphs for fixed sizes.
* :class:`OrtEngine` — an ONNX file (from :func:`fcnseg.infer.export.export_onnx`, fp32 or int8) in ONNX
  Runtime; preprocessing and heads come from the file's metadata.
* :func:`choose_engine` — the fastest *exact* engine for a device (and for the number of images to score).

Every engine takes N×C×H×W float tensors (RGB, 0–255) and returns float32 scores on the CPU
(``TorchEngine`` on CUDA returns them on the GPU) as a dict head → scores, always; ``predict_labels``
follows ``SegmentationModel.predict``: a tensor for a single-head net, a dict for several heads.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import json
import os
import tempfile
import warnings
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fcnseg.atomic import WriteError
from fcnseg.config import ALIGNMENTS
from fcnseg.data.io import as_image_batch
from fcnseg.errors import ConfigError
from fcnseg.infer.export import decode_metadata, export_onnx, quantize_onnx
from fcnseg.infer.spec import EngineSpec
from fcnseg.models.base import HEAD, SegmentationModel, unwrap
from fcnseg.models.checkpoint import state_checksum
from fcnseg.models.preprocessing import Preprocessing
from fcnseg.models.trimmed import TrimmedFCN, runs_as_matmul, trim_supported
from fcnseg.paths import matches_record, record_path, write_record

__all__ = ["Engine", "TorchEngine", "OrtEngine", "build_engine", "onnx_for", "choose_engine", "DTYPES",
           "ORT_PAYBACK_IMAGES", "ort_available"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
Scores = dict[str, torch.Tensor]  # head name -> float32 N×K×H×W


def ort_available() -> bool:
    try:
        import onnxruntime  # noqa: F401, PLC0415 (optional: the [onnx] extra; kept out of torch bench workers)
    except ImportError:
        return False
    return True


def _alignment(alignment: Any) -> str:
    """A model's alignment as engine names spell it (nets of other alignments are named as caffe ones)."""
    return alignment if alignment in ALIGNMENTS else "caffe"


class Engine(ABC):
    """``predict_scores(images) -> scores``; ``predict_labels`` = argmax over classes. ``spec`` names it."""

    spec: EngineSpec
    exact: bool = True          # same function as the fp32 PyTorch model (up to fp32 rounding)
    output_stride: int = 1      # tiles start on multiples of it (see fcnseg.infer.predict.predict_labels)
    input_padding: int = 0      # px the network pads its input by (the size guard counts them)
    heads: dict[str, int]
    preprocessing: Preprocessing

    @abstractmethod
    def predict_scores(self, images: torch.Tensor) -> Scores:
        """Scores (float32, N×K×H×W) for RGB 0–255 images (N×C×H×W, or C×H×W for one)."""

    def predict_labels(self, images: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        """Label maps (int64, N×H×W): a tensor for one head ``"out"``, else a dict head → labels."""
        return unwrap({k: v.argmax(1) for k, v in self.predict_scores(images).items()})

    @property
    def name(self) -> str:
        return self.spec.name

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "exact": self.exact}

    @staticmethod
    def _batch(images) -> torch.Tensor:
        """N×C×H×W float images from a tensor, PIL image or numpy array (:func:`fcnseg.data.io.as_image_batch`)."""
        return as_image_batch(images, "images", channels=None)[0]


# ---------------------------------------------------------------------------------------- PyTorch

class TorchEngine(Engine):
    """PyTorch eager inference.

    ``dtype``: ``"fp32"`` (exact), ``"bf16"``/``"fp16"`` (autocast: convs in half precision, lossy).
    ``channels_last``: NHWC activations (default: on CUDA only, where it is faster; on CPU it
    depends on the oneDNN build — measure with ``fcnseg bench``). ``compile``: ``torch.compile``
    (``dynamic=False``; recompiles per size). ``cuda_graphs``: capture one CUDA graph per input
    shape and replay it (fixed sizes; CUDA only; the scores returned are copies). ``trim``: skip
    the image-independent pad-100 border of Caffe-aligned VGG nets (exact, see
    :mod:`fcnseg.models.trimmed`).
    """

    def __init__(self, model: SegmentationModel, device: str | torch.device = "cpu", *,
                 channels_last: bool | None = None,
                 dtype: str = "fp32", compile: bool = False, cuda_graphs: bool = False, trim: bool = False,
                 max_graphs: int = 8) -> None:
        if dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {device}: CUDA is not available on this machine")
        if cuda_graphs and self.device.type != "cuda":
            raise ConfigError("cuda_graphs needs a CUDA device")
        self.channels_last = (self.device.type == "cuda") if channels_last is None else bool(channels_last)
        self.dtype, self.compile, self.cuda_graphs = dtype, compile, cuda_graphs
        self.exact = dtype == "fp32"
        self.trim = trim
        self.spec = EngineSpec("torch", dtype, channels_last=self.channels_last, trim=trim, compile=compile,
                               cuda_graphs=cuda_graphs, alignment=_alignment(model.spec.alignment))
        self.model = model.eval().to(self.device)
        if self.channels_last:
            _to_channels_last(self.model, keep_plain=trim)
        if trim:
            # torch.compile: no strips (each strip's shape would be one more compiled graph)
            self.model = TrimmedFCN(self.model, strip_bytes=0 if compile else None)
        self.preprocessing = model.preprocessing
        self.heads = dict(model.heads)
        self.output_stride, self.input_padding = model.output_stride, model.input_padding
        self._fn = torch.compile(self.model, dynamic=False) if compile else self.model
        self._graphs: dict[tuple, tuple[Any, torch.Tensor, Any]] = {}
        self._max_graphs = max_graphs
        self._graphs_of = self._tensors_key()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "device": str(self.device), "dtype": self.dtype,
                "channels_last": self.channels_last, "compile": self.compile, "cuda_graphs": self.cuda_graphs,
                "trim": self.trim}

    def _forward(self, x: torch.Tensor) -> Scores:
        if self.dtype == "fp32":
            return self._fn(x)
        # no autocast weight-cast cache under CUDA graphs (PyTorch's advice for capture with autocast)
        with torch.autocast(self.device.type, dtype=DTYPES[self.dtype], cache_enabled=not self.cuda_graphs):
            return self._fn(x)

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        x = self.preprocessing(self._batch(images).to(self.device, non_blocking=True))
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x.contiguous()

    @staticmethod
    def _float(out: Scores) -> Scores:
        return {k: v.float() for k, v in out.items()}

    @torch.inference_mode()
    def predict_scores(self, images: torch.Tensor) -> Scores:
        x = self._prepare(images)
        if self.cuda_graphs:
            return self._replay(x)
        return self._float(self._forward(x))

    def refresh(self) -> None:
        """After the weights changed in place: the trimmed net's constants recomputed from them, and the
        captured CUDA graphs dropped (they would replay the old constants)."""
        if isinstance(self.model, TrimmedFCN):
            self.model.refresh()
        self._graphs.clear()
        self._graphs_of = self._tensors_key()

    def _tensors_key(self) -> tuple:
        """What captured graphs read: the storage of every parameter and buffer, and the trimmed net's
        constants (their version). A change (new weights assigned, ``refresh()``) makes the graphs stale."""
        tensors = [*self.model.parameters(), *self.model.buffers()]
        version = self.model.version if isinstance(self.model, TrimmedFCN) else 0
        return (version, *(t.data_ptr() for t in tensors))

    def _drop_stale_graphs(self) -> None:
        now = self._tensors_key()
        if now != self._graphs_of:
            self._graphs.clear()
            self._graphs_of = now

    def _replay(self, x: torch.Tensor) -> Scores:
        """Run through a CUDA graph captured for this shape (captured on first sight; all dropped when
        the tensors they read were replaced)."""
        self._drop_stale_graphs()
        key = (tuple(x.shape), x.stride(), x.dtype)
        if key not in self._graphs:
            if len(self._graphs) >= self._max_graphs:
                self._graphs.pop(next(iter(self._graphs)))
            static_in = x.clone()
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                for _ in range(3):  # warm up cuDNN autotuning and the allocator outside the graph
                    self._forward(static_in)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._float(self._forward(static_in))
            self._graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = self._graphs[key]
        static_in.copy_(x)
        graph.replay()
        return {k: v.clone() for k, v in static_out.items()}


def _to_channels_last(model: nn.Module, keep_plain: bool) -> None:
    """4-D parameters and buffers of ``model`` in channels_last, in place. ``keep_plain``: not the weights the
    trimmed net runs as matmuls on their plain layout (:func:`~fcnseg.models.trimmed.runs_as_matmul`;
    VGG16's fc6 alone is 411 MB: converting it would copy it twice for nothing)."""
    with torch.no_grad():
        for m in model.modules():
            plain = keep_plain and runs_as_matmul(m)
            for name, t in [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]:
                if t.dim() == 4 and not (plain and name == "weight"):
                    t.data = t.data.contiguous(memory_format=torch.channels_last)


# ---------------------------------------------------------------------------------------- ONNX Runtime

class OrtEngine(Engine):
    """An exported ONNX file in ONNX Runtime. ``threads``: intra-op threads (default: all cores
    torch uses). ``providers``: ONNX Runtime execution providers (default: CPU).
    ``low_memory``: no memory arena, and (glibc, process-wide) buffers over 1 MiB are mapped and
    unmapped on their own, so activation memory goes back to the system as soon as a layer is done:
    peak RSS ≈ weights + the largest live activations, for a few tenths of a second per call."""

    def __init__(self, onnx_path: str | os.PathLike, *, threads: int | None = None,
                 providers: list[str] | None = None, preprocessing: Preprocessing | None = None,
                 low_memory: bool = False) -> None:
        try:
            import onnxruntime as ort  # noqa: PLC0415 (optional: the [onnx] extra; kept out of torch bench workers)
        except ImportError:
            raise ConfigError("the ONNX Runtime engine needs onnxruntime: pip install 'fcnseg[onnx]'") from None
        path = Path(onnx_path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX file not found: {path}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or torch.get_num_threads())
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.enable_cpu_mem_arena = not low_memory
        opts.enable_mem_pattern = not low_memory
        if low_memory:
            _map_large_buffers()
        available = ort.get_available_providers()
        providers = providers or ["CPUExecutionProvider"]
        missing = [p for p in providers if p not in available]
        if missing:
            raise ConfigError(f"ONNX Runtime providers {missing} not available here (available: {available})")
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=providers)
        except Exception as e:
            raise ConfigError(f"cannot load ONNX file {path}: {str(e).splitlines()[0]}") from None
        meta = decode_metadata(self.session.get_modelmeta().custom_metadata_map)
        self.meta = meta
        if preprocessing is None:
            if "preprocessing" not in meta:
                raise ConfigError(f"{path} has no fcnseg preprocessing metadata; pass preprocessing=")
            preprocessing = Preprocessing.from_dict(meta["preprocessing"])
        self.preprocessing = preprocessing
        outs = [o.name for o in self.session.get_outputs()]
        self.heads = {str(k): int(v) for k, v in meta.get("heads", {HEAD: 0}).items()}
        self._names = outs
        self._heads_out = [HEAD] if outs == ["scores"] else outs  # one head's output is named "scores"
        self.threads = opts.intra_op_num_threads
        self.quantized = meta.get("quantized")
        self.exact = self.quantized is None
        self.input_size = meta.get("input_size")  # fixed H, W of a static export, else None
        self.output_stride = int(meta.get("output_stride", 1))
        self.input_padding = int(meta.get("input_padding", 0))
        self.low_memory = low_memory
        self.spec = EngineSpec("ort", "int8" if self.quantized else "fp32",
                               dynamic_quant=self.quantized == "int8-dynamic", trim=bool(meta.get("trim")),
                               low_memory=low_memory, alignment=_alignment(meta.get("config", {}).get("alignment")))
        self.path = path

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "threads": self.threads, "providers": self.session.get_providers(),
                "quantized": self.quantized, "low_memory": self.low_memory}

    @torch.inference_mode()
    def predict_scores(self, images: torch.Tensor) -> Scores:
        images = self._batch(images)
        if self.input_size and list(images.shape[-2:]) != list(self.input_size):
            raise ValueError(f"{self.path} was exported for {self.input_size[0]}×{self.input_size[1]} inputs, "
                             f"got {images.shape[-2]}×{images.shape[-1]}")
        x = self.preprocessing(images.cpu()).contiguous().numpy()
        outs = self.session.run(self._names, {"input": x})
        return {h: torch.from_numpy(o) for h, o in zip(self._heads_out, outs)}


_M_MMAP_THRESHOLD = -3


def _map_large_buffers(threshold: int = 2**20) -> bool:
    """glibc only: serve allocations over ``threshold`` bytes by their own mmap (freed ones go straight
    back to the system; this also stops glibc raising the threshold as it does by default, which keeps
    freed activation buffers in the heap). Process-wide; returns False where it does not apply."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(threshold)))
    except (OSError, AttributeError):
        return False


def _model_key(model: SegmentationModel, checksum: str | None = None) -> str:
    """Checksum of the weights (``checksum``: :func:`~fcnseg.models.checkpoint.state_checksum` of them when the
    caller has it), spec and preprocessing: names cached exports of this exact model."""
    meta = json.dumps([model.spec.to_dict(), model.preprocessing.to_dict()], sort_keys=True, default=str)
    weights = checksum if checksum is not None else state_checksum(model.state_dict())
    return weights[:16] + hashlib.sha256(meta.encode()).hexdigest()[:8]


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=3)


def _open_cached(path: Path, key: str, *, threads: int | None = None) -> OrtEngine | None:
    """The cached export ``path`` if the checksum recorded beside it (``<file>.sha256``: the file's
    SHA-256 and the model key) matches and its metadata names this model; else None, with a warning
    when an entry was there but did not match (it is then exported again)."""
    if not path.exists() and not record_path(path).exists():
        return None
    ok = matches_record(path, key)
    engine = None
    if ok:
        try:
            engine = OrtEngine(path, threads=threads)
        except (ConfigError, OSError):
            engine = None
    if engine is not None and engine.meta.get("model_key") == key:
        return engine
    _warn(f"engine cache entry {path} does not match this model (checksum or model key); exporting it again")
    return None


def _export_cached(export, path: Path, key: str) -> bool:
    """``export(path)`` into the cache, then its checksum beside it; False (with a warning) when the
    cache folder cannot be written."""

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        export(path)
        write_record(path, key)
        return True
    except (OSError, WriteError) as e:
        for p in (path, record_path(path)):
            with contextlib.suppress(OSError):
                p.unlink(missing_ok=True)
        _warn(f"engine cache {path.parent} cannot be written ({str(e).strip() or type(e).__name__}); "
              f"using a temporary folder")
        return False


def _export_path(key: str, cache_dir: str | os.PathLike) -> Path:
    return Path(cache_dir) / f"fcnseg-{key}.onnx"


def _cached_export(key: str, cache_dir: str | os.PathLike | None, threads: int | None = None) -> OrtEngine | None:
    """The verified dynamic-size export of the model ``key`` names in ``cache_dir``, else None."""
    if cache_dir is None:
        return None
    return _open_cached(_export_path(key, cache_dir), key, threads=threads)


def _ort_from_model(model: nn.Module, key: str, threads: int | None = None,
                    cache_dir: str | os.PathLike | None = None) -> OrtEngine:
    """Export ``model`` to ONNX (dynamic size) and open it. Without ``cache_dir`` (or when it cannot be
    written) the file is temporary (the session holds the weights); with it, the export is kept under the
    model's ``key`` and reused once verified (:func:`_open_cached`)."""
    if cache_dir is not None:
        path = _export_path(key, cache_dir)
        if _export_cached(lambda p: export_onnx(model, p, metadata={"model_key": key}), path, key):
            return OrtEngine(path, threads=threads)
    with tempfile.TemporaryDirectory(prefix="fcnseg-ort-") as tmp:
        path = export_onnx(model, Path(tmp) / "model.onnx", metadata={"model_key": key})
        return OrtEngine(path, threads=threads)


# Images from which a dynamic-size ONNX export pays for itself on a net the trimmed engine cannot run:
# its cold export (with the check against PyTorch) over the seconds ONNX Runtime saves per image, the largest
# over the nets measured at 500×500 by ``python -m scripts.bench_payback`` (docs/bench/payback.json).
ORT_PAYBACK_IMAGES = 46


def choose_engine(model: SegmentationModel, device: str | torch.device = "cpu", *, exact: bool | None = None,
                  images: int | None = None, threads: int | None = None,
                  cache_dir: str | os.PathLike | None = None, checksum: str | None = None, log=None) -> Engine:
    """The fastest engine measured for ``device`` (see docs/PERFORMANCE.md) that keeps the scores.

    CPU: a net :func:`~fcnseg.models.trimmed.trim_supported` accepts (Caffe-aligned VGG) runs in PyTorch
    border-trimmed and channels_last (:class:`TorchEngine` ``trim=True``: exact, nothing to export, every
    size at once). Any other net runs in ONNX Runtime on one dynamic-size export when onnxruntime is
    installed and the export pays: a verified export of this very model is in ``cache_dir`` already, or
    ``images`` (how many the caller will score; None = open-ended, as a server) reaches
    :data:`ORT_PAYBACK_IMAGES`; else in PyTorch fp32. The export is kept in ``cache_dir`` under the
    weights' checksum (``checksum``: the checkpoint's verified one, else computed, only when an export is
    looked up or made; an ONNX Runtime session holds its own copy of the weights, so let go of ``model``
    once it is built). CUDA: PyTorch bf16 autocast + channels_last (scores differ at the bf16 level, labels
    rarely); ``exact=True`` keeps fp32 there.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return TorchEngine(model, device, channels_last=True, dtype="fp32" if exact else "bf16")
    if device.type != "cpu":
        return TorchEngine(model, device)
    if trim_supported(model):
        return TorchEngine(model, device, channels_last=True, trim=True)
    if ort_available():
        pays = images is None or images >= ORT_PAYBACK_IMAGES
        if pays or cache_dir is not None:
            key = _model_key(model, checksum)
            cached = _cached_export(key, cache_dir, threads)
            if cached is not None:
                return cached
            if pays:
                if log:
                    log("exporting the net to ONNX once (dynamic size; cached for later runs)")
                return _ort_from_model(model, key, threads=threads, cache_dir=cache_dir)
    return TorchEngine(model, device)


def onnx_for(spec: EngineSpec, model: SegmentationModel, folder: str | os.PathLike, *,
             size: tuple[int, int] | None = None, calibration: Sequence[torch.Tensor] | None = None,
             log=None) -> Path:
    """The ONNX file the ``ort`` engine ``spec`` runs, exported from ``model`` into ``folder`` (reused when
    there): fp32 with dynamic H×W, or trimmed at the fixed ``size``; int8 quantised from it, static on the
    ``calibration`` images (RGB 0–255) or dynamic (``-dynamic``)."""
    folder = Path(folder)
    trimmed = "-trim" if spec.trim else ""
    fp32 = folder / f"model-{spec.alignment}{trimmed}.onnx"
    if spec.trim and size is None:
        raise ConfigError(f"engine {spec.name}: the trimmed ONNX graph is fixed-size; give the input size")
    if not fp32.exists():
        if log:
            log(f"export ONNX ({spec.alignment}{', trimmed, fixed size' if spec.trim else ', dynamic'})")
        export_onnx(model, fp32, dynamic=not spec.trim, trim=spec.trim,
                    example_size=size if spec.trim else (96, 112))
    if spec.dtype == "fp32":
        return fp32
    mode = "dynamic" if spec.dynamic_quant else "static"
    dst = fp32.with_suffix(f".int8-{mode}.onnx")
    if not dst.exists():
        if log:
            log(f"quantize int8 {mode} ({spec.alignment}{', trimmed' if spec.trim else ''})")
        if not spec.dynamic_quant and not calibration:
            raise ConfigError(f"engine {spec.name}: static int8 needs calibration images")
        quantize_onnx(fp32, dst, None if spec.dynamic_quant else calibration, mode=mode)
    return dst


def build_engine(spec: EngineSpec | str, model: SegmentationModel | None = None, device: str | torch.device = "cpu",
                 *, onnx: str | os.PathLike | None = None, threads: int | None = None) -> Engine:
    """The engine ``spec`` (or an engine name) names: a :class:`TorchEngine` around ``model`` (``torch``,
    and ``tvfcn``: torchvision's net, run the same way), or an :class:`OrtEngine` on the exported
    ``onnx`` file (:func:`fcnseg.infer.export.export_onnx`, then ``quantize_onnx`` for int8)."""
    if isinstance(spec, str):
        spec = EngineSpec.parse(spec, "engine")
    if spec.runtime in ("torch", "tvfcn"):
        if model is None:
            raise ConfigError(f"engine {spec.name}: needs a model")
        return TorchEngine(model, device, channels_last=spec.channels_last, dtype=spec.dtype, trim=spec.trim,
                           compile=spec.compile, cuda_graphs=spec.cuda_graphs)
    if spec.runtime == "ort":
        if onnx is None:
            raise ConfigError(f"engine {spec.name}: needs an exported ONNX file (onnx=)")
        return OrtEngine(onnx, threads=threads, low_memory=spec.low_memory)
    raise ConfigError(f"engine {spec.name}: the peer is run by fcnseg.bench, not built here")
