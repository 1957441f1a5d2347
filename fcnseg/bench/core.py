"""``run_bench``: every engine in its own process, side by side with the peer, one JSON out."""
from __future__ import annotations

import copy
import errno
import json
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fcnseg.atomic import write_error, write_text
from fcnseg.bench.measure import count_flops, machine_info, sgemm_gflops, stats
from fcnseg.bench.peer import PeerUnavailable, torchvision_fcn_resnet50
from fcnseg.bench.report import bench_markdown
from fcnseg.bench.train_step import summarize
from fcnseg.data import build_dataset, sample_root
from fcnseg.errors import ConfigError, FcnsegError, one_line
from fcnseg.evaluate.scoring import evaluate
from fcnseg.infer.engines import onnx_for
from fcnseg.infer.spec import EngineSpec
from fcnseg.models import create_model
from fcnseg.models.checkpoint import model_from_checkpoint
from fcnseg.models.trimmed import TrimmedFCN

__all__ = ["run_bench", "DEFAULT_ENGINES", "BenchError"]

SCHEMA = "fcnseg-bench-v1"
# CPU defaults: the peer, our exact paths, then the lossy fast paths, then 'same' alignment.
DEFAULT_ENGINES: dict[str, tuple[str, ...]] = {
    "cpu": ("peer", "torch-fp32", "torch-fp32-cl", "torch-fp32-trim", "torch-fp32-cl-trim", "ort-fp32",
            "ort-fp32-trim", "ort-fp32-trim-lowmem", "torch-bf16-cl-trim", "ort-int8", "torch-fp32@same",
            "ort-fp32@same"),
    "cuda": ("peer", "torch-fp32", "torch-fp32-cl", "torch-bf16-cl", "torch-bf16-cl-trim", "torch-fp16-cl",
             "torch-bf16-cl-graphs", "torch-bf16-cl-trim-graphs", "torch-fp32@same", "torch-bf16-cl@same",
             "tvfcn-fp32", "tvfcn-bf16-cl"),
}
class BenchError(FcnsegError, RuntimeError):
    """A benchmark worker failed."""


def _models_config(model: str, backbone: str, num_classes: int, alignment: str, width: float,
                   fc_channels: int | None) -> dict:
    cfg: dict[str, Any] = {"name": model, "num_classes": num_classes, "backbone": backbone, "alignment": alignment}
    if width != 1.0:
        cfg["width"] = width
    if fc_channels is not None:
        cfg["fc_channels"] = fc_channels
    return cfg


def _build(cfg: dict, device: str | None = None):
    c = dict(cfg)
    name, classes = c.pop("name"), c.pop("num_classes")
    if device == "meta":
        with torch.device("meta"):
            return create_model(name, classes, **c)
    return create_model(name, classes, **c)


def _flops(cfg: dict, size: tuple[int, int], in_channels: int, trim: bool) -> int | None:
    """FLOPs of one batch-1 forward, counted on the meta device (nothing computed)."""
    try:
        model = _build(cfg, "meta").eval()
        x = torch.empty(1, in_channels, *size, device="meta")
        if trim:
            model = TrimmedFCN(model)
            with torch.no_grad():
                model(x)  # builds the background skeleton: a one-off per size residue, not counted
        return count_flops(model, x)["total"]
    except Exception:  # a model the meta device cannot run: report no count rather than fail
        return None


def _tvfcn_flops(num_classes: int, size: tuple[int, int]) -> int | None:
    """FLOPs of torchvision's FCN-ResNet50 (None without torchvision)."""
    try:
        with torch.device("meta"):
            model = torchvision_fcn_resnet50(num_classes)
        return count_flops(model, torch.empty(1, 3, *size, device="meta"))["total"]
    except (PeerUnavailable, RuntimeError, NotImplementedError):
        return None


def _seeded_model(cfg: dict, seed: int):
    """Our model with reproducible random weights; the zero-initialised score layers get small random
    weights too, so outputs (and their differences across engines) are not trivially zero."""
    torch.manual_seed(seed)
    model = _build(cfg).eval()
    with torch.no_grad():
        for p in model.score.parameters():
            p.normal_(0, 1e-3)
    return model


def _calibration(cfg_in_channels: int, size: tuple[int, int], count: int, seed: int) -> list[torch.Tensor]:
    """Calibration images for int8: the bundled CamVid sample's train split when present (real image
    statistics), else smooth random images."""
    try:
        ds = build_dataset("camvid", sample_root(), "train")
        imgs = [ds[i][0] for i in range(min(count, len(ds)))]
        if imgs and imgs[0].shape[0] == cfg_in_channels:
            return [torch.nn.functional.interpolate(i[None], size=size, mode="bilinear", align_corners=False)[0]
                    for i in imgs]
    except Exception:
        pass
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.functional.interpolate(torch.rand(1, cfg_in_channels, size[0] // 8, size[1] // 8,
                                                       generator=g) * 255, size=size, mode="bilinear")[0]
            for _ in range(count)]


class _Worker:
    """A worker process in serve mode (see :func:`fcnseg.bench.worker.serve`).

    Its stderr is read line by line as it comes: each line goes to ``echo`` (the bench's log, so a
    session's one log file holds every worker's output) and is kept, whole, for the error row of a worker
    that fails. No answer may take longer than ``timeout`` seconds, and the worker is killed at
    ``deadline`` (``time.monotonic()``) whatever it is doing.
    """

    def __init__(self, spec: dict, tmp: Path, timeout: float, deadline: float | None = None,
                 echo: Callable[[str], None] | None = None) -> None:
        self.spec, self.timeout, self.error = spec, timeout, None
        self.deadline = deadline if deadline is not None else time.monotonic() + 10 * timeout
        self.name, self._echo = spec.get("row") or spec["engine"], echo or (lambda line: None)
        self.stderr: list[str] = []
        tag = self.name.replace("@", "_").replace(":", "_")
        spec_path = tmp / f"spec-{tag}.json"
        spec_path.write_text(json.dumps(spec))
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen([sys.executable, "-m", "fcnseg.bench.worker", str(spec_path), "--serve"],
                                     env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, bufsize=1)
        self._drain = threading.Thread(target=self._read_stderr, daemon=True)
        self._drain.start()
        try:
            if self._read() != "ready":
                raise BenchError("worker did not start")
        except BenchError as e:
            self.error = str(e)
            self.close()

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
            self.stderr.append(line)
            self._echo(f"[{self.name}] {line.rstrip()}")

    def stderr_text(self) -> str:
        """Everything the worker wrote to stderr (whole, once it has exited)."""
        self._drain.join(timeout=5)
        return "".join(self.stderr)

    def _read(self) -> str:
        wait = min(self.timeout, self.deadline - time.monotonic())
        ready, _, _ = select.select([self.proc.stdout], [], [], max(wait, 0.0))
        line = self.proc.stdout.readline() if ready else None
        if not line:
            self.proc.kill()
            self.proc.wait()
            if line is not None:
                why = f"exit code {self.proc.returncode}"
            elif time.monotonic() >= self.deadline:
                why = "timed out (past the worker's deadline)"
            else:
                why = f"timed out (no answer within {self.timeout:.0f} s)"
            tail = self.stderr_text().strip().splitlines()
            raise BenchError(f"{why}: {tail[-1]}" if tail else why)
        return line.strip()

    def cmd(self, line: str) -> list[float]:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return json.loads(self._read())

    def finish(self) -> dict:
        self.proc.stdin.write("end\n")
        self.proc.stdin.flush()
        if self._read() != "done":
            raise BenchError("worker did not finish")
        self.close()
        return json.loads(Path(self.spec["result_out"]).read_text())

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._drain.join(timeout=5)

    def failed(self, error: str) -> dict:
        """The error row of this worker: the reason and its whole stderr."""
        self.close()
        return {"engine": self.name, "error": error, "stderr": self.stderr_text()}


def _annotate(r: dict, s: EngineSpec, flops: dict, log) -> dict:
    r["spec"] = {"runtime": s.runtime, "dtype": s.dtype, "channels_last": s.channels_last, "trim": s.trim,
                 "compile": s.compile, "cuda_graphs": s.cuda_graphs}
    r["alignment"], r["exact_path"] = s.alignment, s.exact
    r["flops"] = flops.get(_flops_key(s))
    if "error" in r:
        log(f"  {s.name} failed: {r['error']}")
    elif "latency" in r:
        med = r["latency"]["seconds"]["median"]
        extra = f" (peer alongside: {r['peer_paired']['seconds']['median']:.3f} s)" if "peer_paired" in r else ""
        log(f"  {s.name}: {med:.3f} s median{extra}, peak {r['peak_mem_b1_mb']:.0f} MiB")
        if r["flops"]:
            r["achieved_gflops"] = r["flops"] * r["latency"]["batch"] / med / 1e9
    return r


def _flops_key(s: EngineSpec) -> str:
    return "tvfcn" if s.runtime == "tvfcn" else f"{s.alignment}{'-trim' if s.trim else ''}"


def _compare(a: np.ndarray, b: np.ndarray) -> dict:
    if a.shape != b.shape:
        return {"error": f"shapes differ: {a.shape} vs {b.shape}"}
    return {"max_abs_diff": float(np.abs(a - b).max()), "label_agreement": float((a.argmax(1) == b.argmax(1)).mean()),
            "scale": float(np.abs(b).max())}


def run_bench(*, model: str = "fcn8s", backbone: str = "vgg16", num_classes: int = 21,
              size: tuple[int, int] = (500, 500), batch: int = 1, throughput_batch: int = 4,
              device: str = "cpu", dtype: str | None = None, engines: Sequence[str] | None = None,
              warmup: int = 1, repeats: int = 5,
              throughput_repeats: int = 2, peer: bool = True, train_step: bool = True, alignment: str = "caffe",
              threads: int | None = None, checkpoint: str | None = None, width: float = 1.0,
              fc_channels: int | None = None, sgemm_n: int = 4096, eval_split: bool = False,
              calibration_count: int = 4, seed: int = 0, timeout: float = 300.0, worker_timeout: float = 480.0,
              time_budget: float | None = None, command: str | None = None,
              out_json: str | os.PathLike | None = None, out_md: str | os.PathLike | None = None,
              progress: bool = True) -> dict:
    """Measure each engine in a fresh process on the same input and weights; return (and write) a report.

    Per engine: batch-``batch`` latency (median, IQR, min/max over ``repeats``), batch-``throughput_batch``
    throughput, peak memory (RSS on CPU, ``max_memory_allocated`` on CUDA), counted FLOPs and achieved
    GFLOP/s against the machine's sgemm rate, max |Δ| of the scores against the peer (or our fp32
    model at the same alignment), and for the plain fp32 engines one training step. ``engines``
    default: :data:`DEFAULT_ENGINES`; names as :class:`fcnseg.infer.spec.EngineSpec` reads them.
    ``alignment`` is the default for names without ``@``. The peer is ``torchfcn==1.9.7``'s FCN8s
    holding the same weights (needs model fcn8s@vgg16, caffe alignment). It stays loaded in its own
    process for the whole run and each engine's timed runs alternate with the peer's, so speed-ups
    compare runs taken under the same load (the machine may be shared).

    On CUDA the input waits in pinned host memory, and each engine is also timed with it on the GPU
    already (``latency_on_device``); fp32 engines run with TF32 off. A worker must answer within
    ``timeout`` s and is killed after ``worker_timeout`` s; past ``time_budget`` s (None: no limit) no
    engine is begun. ``out_json`` is rewritten after every engine (``"partial": true`` until the end), and
    a failed worker's row holds its whole stderr, which the progress log shows as it comes.
    """
    t_start, deadline, log = _start(out_json, out_md, device, time_budget, worker_timeout, progress)
    dev_kind = "cuda" if device.startswith("cuda") else "cpu"
    peer_fits = model == "fcn8s" and backbone == "vgg16" and width == 1.0 and fc_channels in (None, 4096)
    specs = _select(engines, dev_kind, alignment, dtype, peer, peer_fits, log)
    threads = int(threads or torch.get_num_threads())
    torch.set_num_threads(threads)
    size = (int(size[0]), int(size[1]))
    options = {"model": model, "backbone": backbone, "num_classes": num_classes, "size": list(size), "batch": batch,
               "throughput_batch": throughput_batch, "warmup": warmup, "repeats": repeats,
               "throughput_repeats": throughput_repeats, "threads": threads, "alignment": alignment,
               "checkpoint": checkpoint, "width": width, "fc_channels": fc_channels, "seed": seed}
    report: dict[str, Any] = {"schema": SCHEMA, "created": time.strftime("%Y-%m-%d %H:%M:%S %z"),
                              "command": command or " ".join(["python", *sys.argv]), "machine": machine_info(),
                              "device": device, "options": options}
    if sgemm_n:
        log(f"sgemm {sgemm_n}x{sgemm_n}")
        report["sgemm"] = sgemm_gflops(sgemm_n, device=device)
        if dev_kind == "cuda":
            report["gemm_bf16"] = sgemm_gflops(sgemm_n, repeats=10, device=device, dtype=torch.bfloat16)
    with tempfile.TemporaryDirectory(prefix="fcnseg-bench-") as tmp_s:
        tmp = Path(tmp_s)
        alignments = {s.alignment for s in specs} | ({"caffe"} if any(s.runtime == "peer" for s in specs) else set())
        models, cfgs, weights = _bench_models(alignments, tmp, checkpoint, model, backbone, num_classes, width,
                                              fc_channels, seed)
        in_ch = next(iter(models.values())).in_channels
        onnx_files = _exports(specs, models, size, tmp, calibration_count, seed, log)
        report["flops"] = _flops_table(specs, cfgs, size, in_ch, num_classes)

        def make_spec(s: EngineSpec) -> dict:
            tag = s.name.replace("@", "_")
            return {"engine": s.name, "model_config": cfgs[s.alignment], "weights": str(weights[s.alignment]),
                    "preprocessing": models[s.alignment].preprocessing.to_dict(),
                    "onnx": str(onnx_files.get(s.name, "")), "device": device,
                    "threads": threads, "size": list(size), "batch": batch, "throughput_batch": throughput_batch,
                    "warmup": warmup, "repeats": repeats, "throughput_repeats": throughput_repeats,
                    "train_step": train_step and s.runtime in ("peer", "torch") and s.dtype == "fp32"
                    and not (s.channels_last or s.trim or s.compile or s.cuda_graphs),
                    "seed": seed, "in_channels": in_ch, "scores_out": str(tmp / f"scores-{tag}.npy"),
                    "result_out": str(tmp / f"result-{tag}.json")}

        def done(results: list[dict]) -> None:  # the report so far, on disk after every engine
            if out_json:
                rows = copy.deepcopy(results)
                _add_comparisons(rows, specs, tmp)
                write_text(out_json, json.dumps({**report, "engines": rows, "partial": True}, indent=1) + "\n")

        runs = _Runs(make_spec, tmp, timeout, worker_timeout, deadline, warmup, repeats, throughput_batch,
                     throughput_repeats, report["flops"], log, dev_kind == "cuda", done)
        results = runs.all(specs)
        _add_comparisons(results, specs, tmp)
        report["engines"] = results
        if eval_split:
            try:
                report["eval_split"] = _eval_split(models.get("caffe") or next(iter(models.values())), device, log)
            except Exception as e:  # the timings are what counts: keep them, say what failed
                why = f"{type(e).__name__}: {one_line(e)}"
                log(f"eval split failed: {why}")
                report["eval_split"] = {"error": why}
    report["ratios_vs_peer"] = _ratios(report)
    return _finish(report, t_start, out_json, out_md, bench_markdown)



def _start(out_json, out_md, device: str, time_budget: float | None, worker_timeout: float, progress: bool):
    """A bench run's start: the output paths writable, the device there; ``(t_start, deadline, log)``."""
    for path in (out_json, out_md):
        if path:
            _check_writable(path)
    t_start = time.time()
    deadline = time.monotonic() + (time_budget if time_budget is not None else 10 * worker_timeout)
    log = (lambda msg: print(f"[bench {time.time() - t_start:5.0f}s] {msg}", file=sys.stderr, flush=True)) \
        if progress else (lambda msg: None)
    if device != "cpu" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine")
    return t_start, deadline, log


def _bench_models(alignments, tmp: Path, checkpoint: str | None, model: str, backbone: str, num_classes: int,
                  width: float, fc_channels: int | None, seed: int) -> tuple[dict, dict, dict]:
    """Per alignment: the model, its config, and its weights saved under ``tmp`` for the workers."""
    models, cfgs, weights = {}, {}, {}
    for al in sorted(alignments):
        cfg = None if checkpoint else _models_config(model, backbone, num_classes, al, width, fc_channels)
        models[al], cfgs[al] = _bench_model(al, checkpoint, cfg, seed)
        weights[al] = tmp / f"weights-{al}.pt"
        torch.save(models[al].state_dict(), weights[al])
    return models, cfgs, weights


def _finish(report: dict, t_start: float, out_json, out_md, markdown: Callable[[dict], str]) -> dict:
    """A bench run's end: the closing load and wall time, the JSON and the markdown written."""
    report["machine"]["loadavg_end"] = list(os.getloadavg())
    report["wall_seconds"] = time.time() - t_start
    if out_json:
        write_text(out_json, json.dumps(report, indent=1) + "\n")
    if out_md:
        write_text(out_md, markdown(report))
    return report

def _flops_table(specs: list[EngineSpec], cfgs: dict, size: tuple[int, int], in_channels: int,
                 num_classes: int) -> dict[str, int | None]:
    """Counted FLOPs of each net the engines run (by :func:`_flops_key`)."""
    table: dict[str, int | None] = {}
    for s in specs:
        key = _flops_key(s)
        if key not in table:
            table[key] = _tvfcn_flops(num_classes, size) if key == "tvfcn" else \
                _flops(cfgs[s.alignment], size, in_channels, s.trim)
    return table


def _select(engines: Sequence[str] | None, dev_kind: str, alignment: str, dtype: str | None, peer: bool,
            peer_fits: bool, log) -> list[EngineSpec]:
    """The engines to measure: the given names (``alignment`` for those without ``@``) or the device's
    defaults (narrowed to ``dtype``); the peer only where asked for and where torchfcn has the net."""
    names = list(engines) if engines else list(DEFAULT_ENGINES[dev_kind])
    specs = [EngineSpec.parse(n if "@" in n or alignment == "caffe" else f"{n}@{alignment}") for n in names]
    if dtype is not None and not engines:  # the default list, narrowed to one precision (the peer stays)
        specs = [s for s in specs if s.dtype == dtype or s.runtime == "peer"]
    if not peer:
        specs = [s for s in specs if s.runtime != "peer"]
    if any(s.runtime == "peer" for s in specs) and not peer_fits:
        log("peer skipped: torchfcn offers the full-width FCN8s-VGG16 only")
        specs = [s for s in specs if s.runtime != "peer"]
    if dev_kind == "cuda" and any(s.runtime == "ort" for s in specs):
        raise ConfigError("--engines: ONNX Runtime engines are benchmarked on the CPU only here")
    return specs


def _bench_model(alignment: str, checkpoint: str | None, cfg: dict | None, seed: int):
    """(model in eval mode, its config) at ``alignment``: the checkpoint's weights (re-padded when it was
    trained at the other alignment), else ``cfg`` with seeded random weights."""
    if not checkpoint:
        return _seeded_model(cfg, seed).eval(), cfg
    m, _ = model_from_checkpoint(checkpoint)
    cfg = m.spec.to_dict()
    cfg.pop("weights", None)
    if cfg.get("alignment") != alignment:  # same weights, other padding
        cfg["alignment"] = alignment
        m2 = _build(cfg)
        m2.load_state_dict(m.state_dict())
        m2.preprocessing = m.preprocessing
        m = m2
    return m.eval(), cfg


class _Runs:
    """Each engine in its own worker process; the peer's worker stays loaded and its timed runs
    alternate with each engine's, so both are timed under the same load. Every worker answers within
    ``timeout`` s and lives at most ``worker_timeout`` s (the peer: until ``deadline``); engines not begun
    by ``deadline`` get an error row. ``done(results)`` hears of every finished engine. ``train``: the
    engines are training-step rows (:mod:`fcnseg.bench.train_step`), timed step by step the same way;
    ``annotate(result, spec)`` completes each row."""

    def __init__(self, make_spec, tmp: Path, timeout: float, worker_timeout: float, deadline: float, warmup: int,
                 repeats: int, throughput_batch: int, throughput_repeats: int, flops: dict, log, on_device: bool,
                 done: Callable[[list[dict]], None], train: bool = False, annotate=None) -> None:
        self.make_spec, self.tmp, self.timeout, self.log, self.flops = make_spec, tmp, timeout, log, flops
        self.worker_timeout, self.deadline, self.on_device, self.done = worker_timeout, deadline, on_device, done
        self.warmup, self.repeats = warmup, repeats
        self.throughput_batch, self.throughput_repeats = throughput_batch, throughput_repeats
        self.train, self.cmd = train, "train" if train else "lat"
        self.annotate = annotate or (lambda r, s: _annotate(r, s, self.flops, self.log))
        self.peer: _Worker | None = None

    def _worker(self, s: EngineSpec, deadline: float) -> _Worker:
        return _Worker(self.make_spec(s), self.tmp, self.timeout, deadline, self.log)

    def all(self, specs: list[EngineSpec]) -> list[dict]:
        results: list[dict] = []
        peer_s = next((s for s in specs if _runtime(s) == "peer"), None)
        if peer_s is not None:
            self.log("engine peer (kept loaded: each engine's timed runs alternate with the peer's)")
            self.peer = self._worker(peer_s, self.deadline)
            if self.peer.error:
                self.log(f"  peer failed: {self.peer.error}")
                results.append(self.peer.failed(self.peer.error))
                self.peer = None
            elif self.train:
                try:
                    self.peer.cmd(f"train {self.warmup} 0")  # once: the peer's step is warm for every row
                except BenchError as e:
                    self.log(f"  peer failed: {e}")
                    results.append(self.peer.failed(str(e)))
                    self.peer = None
        for s in specs:
            if _runtime(s) == "peer":
                continue
            if time.monotonic() >= self.deadline:
                r = {"engine": s.name, "error": "not run: the bench's time budget was spent"}
            else:
                r = self.one(s)
            results.append(self.annotate(r, s))
            self.done(results)
        if self.peer is not None:
            if self.on_device:
                self._on_device(self.peer)
            results.insert(0, self.annotate(self._finish(self.peer, "peer"), peer_s))
            self.done(results)
        return results

    def one(self, s: EngineSpec) -> dict:
        """One engine's result: warm-up, timed batch-1 runs (training steps) paired with the peer's,
        throughput, finish."""
        self.log(f"{'training step' if self.train else 'engine'} {s.name}")
        w = self._worker(s, min(self.deadline, time.monotonic() + self.worker_timeout))
        if w.error:
            return w.failed(w.error)
        paired: list = []
        try:
            w.cmd(f"{self.cmd} {self.warmup} 0")
            if self.peer and not self.train:
                self.peer.cmd(f"lat {self.warmup} 0")
            for i in range(self.repeats):
                for worker in ([w, self.peer] if i % 2 else [self.peer, w]):
                    if worker is not None:
                        got = worker.cmd(f"{self.cmd} 0 1")
                        if worker is self.peer:
                            paired += got
            if self.on_device and not self.train:
                self._on_device(w)
        except BenchError as e:
            return w.failed(str(e))
        r = self._finish(w, s.name)
        if paired and "error" not in r:
            r["peer_paired"] = summarize(paired) if self.train else {"seconds": stats(paired), "samples": paired}
        return r

    def _on_device(self, w: _Worker) -> None:
        """Batch-1 timings with the input on the GPU already (no host-to-device copy in the call)."""
        w.cmd(f"dev 1 {self.repeats}")

    def _finish(self, w: _Worker, name: str) -> dict:
        try:
            if self.throughput_batch > 1 and not self.train:
                w.cmd(f"thr 1 {self.throughput_repeats}")
            return w.finish()
        except BenchError as e:
            return w.failed(str(e))


def _runtime(s) -> str:
    """An engine's or a training-step row's runtime."""
    return getattr(s, "runtime", None) or s.engine.runtime


def _check_writable(path: str | os.PathLike) -> None:
    """Fail before measuring when the report ``path`` cannot be written: its folder cannot be made or
    written, or it names a folder."""
    p = Path(path)
    if p.is_dir():
        raise write_error(p, IsADirectoryError(errno.EISDIR, "is a folder, not a file"))
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(p, e) from e
    if not os.access(p.parent, os.W_OK):
        raise write_error(p, PermissionError(errno.EACCES, "permission denied"))


def _exports(specs: list[EngineSpec], models: dict, size: tuple[int, int], tmp: Path, calib_count: int, seed: int,
             log) -> dict[str, Path]:
    """The ONNX file of each ORT engine (fp32 dynamic or trimmed at ``size``; int8 static, calibrated on
    random images, or dynamic), by engine name."""
    def calibration(s: EngineSpec) -> list[torch.Tensor] | None:
        if s.dtype != "int8" or s.dynamic_quant:
            return None
        return _calibration(models[s.alignment].in_channels, size, calib_count, seed)

    return {s.name: onnx_for(s, models[s.alignment], tmp, size=size, calibration=calibration(s), log=log)
            for s in specs if s.runtime == "ort"}


def _add_comparisons(results: list[dict], specs: list[EngineSpec], tmp: Path) -> None:
    """max |Δ| of each engine's scores vs the peer (caffe) or our plain torch-fp32 (same alignment)."""
    def scores(name: str) -> np.ndarray | None:
        p = tmp / f"scores-{name.replace('@', '_')}.npy"
        return np.load(p) if p.is_file() else None

    by_name = {s.name: s for s in specs}
    refs: dict[str, tuple[str, np.ndarray]] = {}
    for s in specs:
        if s.runtime == "torch" and s.dtype == "fp32" and not (s.channels_last or s.trim):
            a = scores(s.name)
            if a is not None:
                refs.setdefault(s.alignment, (s.name, a))
    peer = next((s.name for s in specs if s.runtime == "peer"), None)
    peer_scores = scores(peer) if peer else None
    for r in results:
        s = by_name[r["engine"]]
        a = scores(s.name)
        if a is None or s.runtime == "tvfcn":
            continue
        if peer_scores is not None and s.alignment == "caffe" and s.runtime != "peer":
            r["vs_peer"] = _compare(a, peer_scores)
        ref = refs.get(s.alignment)
        if ref is not None and ref[0] != s.name and s.runtime != "peer":
            r["vs_reference"] = {"reference": ref[0], **_compare(a, ref[1])}


def _ratios(report: dict) -> dict:
    """Speed-up and peak-memory ratio (engine / peer) per engine. The speed-up divides the median of the
    peer's runs interleaved with this engine's (same load conditions) by the engine's median."""
    res = {r["engine"]: r for r in report.get("engines", []) if "error" not in r}
    peer = res.get("peer")
    if peer is None:
        return {}
    out = {}
    for name, r in res.items():
        if name == "peer":
            continue
        if "latency" not in r:
            continue
        ref = r.get("peer_paired", peer["latency"])["seconds"]["median"]  # the peer's runs alongside this engine
        entry = {"latency_speedup": ref / r["latency"]["seconds"]["median"], "peer_median_alongside": ref,
                 "peak_mem_ratio": r["peak_mem_b1_mb"] / peer["peak_mem_b1_mb"]}
        if "throughput" in r and "throughput" in peer:
            entry["throughput_speedup"] = r["throughput"]["images_per_s"] / peer["throughput"]["images_per_s"]
        out[name] = entry
    return out


def _eval_split(model, device: str, log) -> dict | None:
    """``evaluate()``'s time split (data / model / metrics) on the bundled CamVid sample's val split,
    with this model's architecture (random weights: the split, not the scores, is the point)."""
    try:
        ds = build_dataset("camvid", sample_root(), "val")
    except Exception as e:
        log(f"eval split skipped: {e}")
        return None
    m = copy.deepcopy(model)
    if list(m.heads.values()) != [ds.num_classes]:
        cfg = m.spec.to_dict()
        name, _ = cfg.pop("name"), cfg.pop("num_classes")
        cfg.pop("weights", None)
        m = create_model(name, ds.num_classes, **cfg)
    log(f"eval split on camvid sample val ({len(ds)} images)")
    metrics = evaluate(m, ds, device=device, progress=False)
    t = metrics.get("timing", {})
    total = t.get("total") or sum(v for k, v in t.items() if k != "total") or 1.0
    return {"dataset": "camvid sample val", "images": metrics.get("images"), "timing": t,
            "fractions": {k: v / total for k, v in t.items() if k != "total"}}
