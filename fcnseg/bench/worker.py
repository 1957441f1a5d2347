"""One engine, measured in a fresh process: ``python -m fcnseg.bench.worker SPEC.json``.

A fresh process per engine keeps peak-memory figures honest (nothing left over from another
engine, allocator state included). The spec (written by :func:`fcnseg.bench.run_bench`) names the
engine, the weights file or ONNX file, sizes and repeat counts; the result JSON lands at
``spec["result_out"]`` and the batch-1 scores at ``spec["scores_out"]`` (.npy) for comparison.
A spec with ``train_only`` names a training-step row (``spec["row"]``, :mod:`fcnseg.bench.train_step`):
no inference engine is built, only the row's training step timed.
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import torch

from fcnseg.atomic import atomic_write
from fcnseg.bench.measure import peak_rss_mb, reset_peak_rss, rss_mb, stats, time_calls
from fcnseg.bench.peer import peer_fcn8s, torchvision_fcn_resnet50
from fcnseg.bench.train_step import TrainRow, TrainStep, summarize
from fcnseg.infer.engines import build_engine
from fcnseg.infer.spec import EngineSpec
from fcnseg.models import create_model
from fcnseg.models.base import HEAD
from fcnseg.models.preprocessing import Preprocessing


class _PeerEngine:
    """torchfcn's FCN8s as its users run it: eager fp32 NCHW under ``no_grad``, on preprocessed input."""

    name = "peer"

    def __init__(self, model: torch.nn.Module, preprocessing, device: torch.device) -> None:
        self.model, self.preprocessing, self.device = model.to(device).eval(), preprocessing, device

    def predict_scores(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return {HEAD: self.model(self.preprocessing(images.to(self.device)))}

    def describe(self) -> dict:
        return {"engine": self.name, "exact": True, "device": str(self.device)}


def _load_state(path: str) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except TypeError:  # torch without mmap=
        return torch.load(path, map_location="cpu", weights_only=True)


def _build(spec: dict, device: torch.device):
    """(engine, trainable module or None) for the spec; ``spec["engine"]`` is the engine's name. A
    ``train_only`` spec gets no engine: (None, the module its row trains)."""
    engine = EngineSpec.parse(spec["engine"])
    if engine.runtime == "ort":
        return build_engine(engine, onnx=spec["onnx"], threads=spec["threads"]), None
    cfg = dict(spec["model_config"])
    name, classes = cfg.pop("name"), cfg.pop("num_classes")
    if engine.runtime == "tvfcn":
        return build_engine(engine, torchvision_fcn_resnet50(int(classes), int(spec.get("seed", 0))), device), None
    state = _load_state(spec["weights"])
    pre = Preprocessing.from_dict(spec["preprocessing"])
    if engine.runtime == "peer":
        model = peer_fcn8s(int(classes), state).to(device)
        del state
        return (None if spec.get("train_only") else _PeerEngine(model, pre, device)), model
    model = create_model(name, classes, **cfg)
    model.load_state_dict(state)
    del state
    model.preprocessing = pre
    model.to(device)
    return (None if spec.get("train_only") else build_engine(engine, model, device)), model


def _images(spec: dict, batch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(spec.get("seed", 0)))
    h, w = spec["size"]
    x = torch.rand(max(batch, 1), int(spec.get("in_channels", 3)), h, w, generator=g) * 255
    return x[:batch]


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        reset_peak_rss()


def _peak(device: torch.device) -> float:
    """Peak allocated memory (CUDA) or RSS (CPU) in MiB since :func:`_reset_peak`."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mb()


def _peak_reserved(device: torch.device) -> float | None:
    """Peak memory the CUDA caching allocator held (MiB), private CUDA-graph pools included; None on CPU."""
    return torch.cuda.max_memory_reserved(device) / 2**20 if device.type == "cuda" else None


def _precision_flags(engine: str, device: torch.device) -> dict | None:
    """On CUDA: cuDNN autotuning on for every engine; TF32 off for fp32 engines (the peer's too), so rows
    labelled exact run in fp32 (PyTorch lets cuDNN convolutions use TF32 by default). Returns the flags set."""
    if device.type != "cuda":
        return None
    fp32 = engine == "peer" or EngineSpec.parse(engine).dtype == "fp32"
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = not fp32
    torch.backends.cuda.matmul.allow_tf32 = False
    return {"benchmark": True, "allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_tf32": torch.backends.cuda.matmul.allow_tf32}


class Session:
    """An engine loaded in this process, timed phase by phase (so a parent can interleave engines)."""

    def __init__(self, spec: dict) -> None:
        self.t_start = time.perf_counter()
        self.spec = spec
        self.device = device = torch.device(spec.get("device", "cpu"))
        if spec.get("threads"):
            torch.set_num_threads(int(spec["threads"]))
        self.result: dict = {"engine": spec["engine"], "loadavg_start": list(os.getloadavg()),
                             "rss_baseline_mb": rss_mb()}
        self.sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
        flags = _precision_flags(spec["engine"], device)
        if flags is not None:
            self.result["cudnn"] = flags
        t0 = time.perf_counter()
        self.engine, self.trainable = _build(spec, device)
        self.result.update(load_seconds=time.perf_counter() - t0, rss_loaded_mb=rss_mb(),
                           peak_rss_load_mb=peak_rss_mb())
        # on CUDA the input waits in pinned host memory (a copy as fast as the bus allows; timed with the
        # call) and, for the on-device timings, on the GPU already
        self.x1 = _host(_images(spec, int(spec.get("batch", 1))), device)
        self.x1_dev = self.x1.to(device) if device.type == "cuda" else None
        self.lat: list[float] = []
        self.lat_dev: list[float] = []
        self.thr: list[float] = []
        self.peak_b1: float | None = None
        self.reserved_b1: float | None = None
        self.xn = None
        self.stepper: TrainStep | None = None
        self.steps: list[dict[str, float]] = []
        self.peak_train: float | None = None
        if self.engine is None:  # a training-step row only
            return
        self.result["describe"] = self.engine.describe()
        t0 = time.perf_counter()
        out = self.engine.predict_scores(self.x1)  # first call: lazy init, caches; kept for comparison
        if self.sync:
            self.sync()
        self.result["first_call_seconds"] = time.perf_counter() - t0  # incl. torch.compile / graph capture
        out = next(iter(out.values()))
        if spec.get("scores_out"):
            np.save(spec["scores_out"], out.detach().float().cpu().numpy())
        del out

    def _warm(self, x: torch.Tensor, warmup: int) -> None:
        for _ in range(warmup):
            self.engine.predict_scores(x)
        if self.sync:
            self.sync()

    def latency(self, warmup: int, repeats: int, on_device: bool = False) -> list[float]:
        """Timed batch-1 calls after ``warmup`` untimed ones; ``on_device``: the input already on the GPU.
        Peak memory counts from after the first warm-up (CUDA-graph pools and autotuning workspaces are
        held by then), reserved memory beside allocated."""
        x = self.x1_dev if on_device and self.x1_dev is not None else self.x1
        self._warm(x, warmup)
        if self.peak_b1 is None:
            _reset_peak(self.device)
            self.result["mem_before_runs_mb"] = rss_mb() if self.device.type == "cpu" else \
                torch.cuda.memory_allocated(self.device) / 2**20
            self.peak_b1 = 0.0
        ts = time_calls(lambda: self.engine.predict_scores(x), 0, repeats, self.sync)
        (self.lat_dev if x is self.x1_dev else self.lat).extend(ts)
        self.peak_b1 = max(self.peak_b1, _peak(self.device))
        reserved = _peak_reserved(self.device)
        if reserved is not None:
            self.reserved_b1 = max(self.reserved_b1 or 0.0, reserved)
        return ts

    def throughput(self, warmup: int, repeats: int) -> list[float]:
        nb = int(self.spec.get("throughput_batch") or 0)
        if nb <= 1:
            return []
        first = self.xn is None
        if first:
            self.xn = _host(_images(self.spec, nb), self.device)
        self._warm(self.xn, warmup)
        if first:
            _reset_peak(self.device)
        ts = time_calls(lambda: self.engine.predict_scores(self.xn), 0, repeats, self.sync)
        self.thr += ts
        self.result["peak_mem_bN_mb"] = _peak(self.device)
        reserved = _peak_reserved(self.device)
        if reserved is not None:
            self.result["peak_reserved_bN_mb"] = reserved
        return ts

    def train(self, warmup: int, repeats: int) -> list[dict[str, float]]:
        """``warmup`` untimed and ``repeats`` timed training steps of the spec's row (built on the first
        call; a plain engine's row is the engine's own); peak memory counts from the first timed step."""
        if self.stepper is None:
            row = TrainRow.parse(self.spec.get("row") or self.spec["engine"])
            pre = self.engine.preprocessing if self.engine is not None else \
                Preprocessing.from_dict(self.spec["preprocessing"])
            self.stepper = TrainStep(row, self.trainable, pre, self.x1, int(self.spec["model_config"]["num_classes"]),
                                     self.sync)
        for _ in range(warmup):
            self.stepper()
        if repeats and self.peak_train is None:
            _reset_peak(self.device)
            self.peak_train = 0.0
        got = [self.stepper() for _ in range(repeats)]
        if repeats:
            self.peak_train = max(self.peak_train, _peak(self.device))
        self.steps += got
        return got

    def finish(self) -> dict:
        r, spec = self.result, self.spec
        if self.lat:
            r["latency"] = {"seconds": stats(self.lat), "samples": self.lat, "batch": self.x1.shape[0],
                            "input": "pinned host memory" if self.x1.is_pinned() else "host memory"}
            r["peak_mem_b1_mb"] = self.peak_b1
        if self.lat_dev:
            r["latency_on_device"] = {"seconds": stats(self.lat_dev), "samples": self.lat_dev,
                                      "batch": self.x1.shape[0], "input": "on the GPU"}
        if self.reserved_b1 is not None:
            r["peak_reserved_b1_mb"] = self.reserved_b1
        if self.thr:
            nb = self.xn.shape[0]
            st = stats(self.thr)
            r["throughput"] = {"seconds": st, "samples": self.thr, "batch": nb, "images_per_s": nb / st["median"]}
        self.xn = None
        if spec.get("train_step") and self.trainable is not None and not self.steps:
            self.train(1, int(spec.get("train_repeats", 2)))
        if self.steps:
            r["train_step"] = {**summarize(self.steps), "peak_mb": self.peak_train, "batch": self.x1.shape[0]}
        r["loadavg_end"] = list(os.getloadavg())
        r["worker_seconds"] = time.perf_counter() - self.t_start
        return r


def _host(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``x`` in pinned host memory when it is bound for a GPU."""
    return x.pin_memory() if device.type == "cuda" else x


def run(spec: dict) -> dict:
    """All phases in a row: warm-up + timed batch-1 runs (on CUDA also from an input on the GPU), batch-N
    runs, the training step (a ``train_only`` spec: the training steps alone)."""
    session = Session(spec)
    if spec.get("train_only"):
        session.train(int(spec["warmup"]), int(spec.get("train_repeats", 2)))
        return session.finish()
    session.latency(int(spec["warmup"]), int(spec["repeats"]))
    if session.x1_dev is not None:
        session.latency(1, int(spec["repeats"]), on_device=True)
    session.throughput(1, int(spec.get("throughput_repeats", 2)))
    return session.finish()


def _write(spec: dict, result: dict) -> None:
    with atomic_write(spec["result_out"], "w") as f:
        json.dump(result, f, indent=1)


def serve(spec: dict) -> None:
    """Line protocol on stdin/stdout: ``lat W R`` / ``dev W R`` (input on the GPU) / ``thr W R`` → JSON list
    of seconds; ``train W R`` → JSON list of training steps' phase seconds; ``end`` →
    the result is written to ``spec["result_out"]`` and ``done`` answered. ``ready`` is sent once loaded."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    sys.stdout = sys.stderr  # anything else printed must not corrupt the protocol
    session = Session(spec)
    out.write("ready\n")
    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd == "lat":
            out.write(json.dumps(session.latency(int(args[0]), int(args[1]))) + "\n")
        elif cmd == "dev":
            out.write(json.dumps(session.latency(int(args[0]), int(args[1]), on_device=True)) + "\n")
        elif cmd == "thr":
            out.write(json.dumps(session.throughput(int(args[0]), int(args[1]))) + "\n")
        elif cmd == "train":
            out.write(json.dumps(session.train(int(args[0]), int(args[1]))) + "\n")
        elif cmd == "end":
            _write(spec, session.finish())
            out.write("done\n")
            return


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) not in (1, 2) or (len(argv) == 2 and argv[1] != "--serve"):
        print("usage: python -m fcnseg.bench.worker SPEC.json [--serve]", file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        spec = json.load(f)
    if len(argv) == 2:
        serve(spec)
    else:
        _write(spec, run(spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
