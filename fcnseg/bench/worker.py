"""One engine, measured in a fresh process: ``python -m fcnseg.bench.worker SPEC.json``.

A fresh process per engine keeps peak-memory figures honest (nothing left over from another
engine, allocator state included). The spec (written by :func:`fcnseg.bench.run_bench`) names the
engine, the weights file or ONNX file, sizes and repeat counts; the result JSON lands at
``spec["result_out"]`` and the batch-1 scores at ``spec["scores_out"]`` (.npy) for comparison.
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import torch

from .measure import peak_rss_mb, reset_peak_rss, rss_mb, stats, time_calls


class _PeerEngine:
    """torchfcn's FCN8s as its users run it: eager fp32 NCHW under ``no_grad``, on preprocessed input."""

    name = "peer"

    def __init__(self, model: torch.nn.Module, preprocessing, device: torch.device) -> None:
        self.model, self.preprocessing, self.device = model.to(device).eval(), preprocessing, device

    def predict_scores(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(self.preprocessing(images.to(self.device)))


def _load_state(path: str) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except TypeError:  # torch without mmap=
        return torch.load(path, map_location="cpu", weights_only=True)


def _build(spec: dict, device: torch.device):
    """(engine, trainable module or None, preprocessing) for the spec."""
    from ..models import create_model
    from ..models.preprocessing import Preprocessing

    runtime = spec["runtime"]
    if runtime == "ort":
        from ..engine.runtime import OrtEngine

        return OrtEngine(spec["onnx"], threads=spec["threads"]), None
    cfg = dict(spec["model_config"])
    name, classes = cfg.pop("name"), cfg.pop("num_classes")
    if runtime == "peer":
        from .peer import peer_fcn8s

        state = _load_state(spec["weights"])
        model = peer_fcn8s(int(classes), state)
        del state
        pre = Preprocessing.from_dict(spec["preprocessing"])
        return _PeerEngine(model, pre, device), model
    from ..engine.runtime import TorchEngine

    model = create_model(name, classes, **cfg)
    state = _load_state(spec["weights"])
    model.load_state_dict(state)
    del state
    model.preprocessing = Preprocessing.from_dict(spec["preprocessing"])
    engine = TorchEngine(model, device, channels_last=spec.get("channels_last", False),
                         dtype=spec.get("dtype", "fp32"), trim=spec.get("trim", False),
                         compile=spec.get("compile", False), cuda_graphs=spec.get("cuda_graphs", False))
    return engine, model


def _images(spec: dict, batch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(spec.get("seed", 0)))
    h, w = spec["size"]
    x = torch.rand(max(batch, 1), int(spec.get("in_channels", 3)), h, w, generator=g) * 255
    return x[:batch]


def _train_step(model: torch.nn.Module, preprocessing, x: torch.Tensor, classes: int, spec: dict,
                sync) -> dict:
    """Seconds and peak memory of forward + backward + SGD step (batch of ``x``, random labels)."""
    model.train()
    x = x.to(next(model.parameters()).device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-10, momentum=0.99, weight_decay=5e-4)
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, classes, (x.shape[0], *x.shape[-2:]), generator=g).to(x.device)
    xp = preprocessing(x)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        out = model(xp)
        out = out if isinstance(out, torch.Tensor) else next(iter(out.values()))
        torch.nn.functional.cross_entropy(out, labels, ignore_index=255).backward()
        opt.step()

    _reset_peak(x.device)
    times = time_calls(step, 1, int(spec.get("train_repeats", 2)), sync)
    return {"seconds": stats(times), "samples": times, "peak_mb": _peak(x.device)}


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        reset_peak_rss()


def _peak(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mb()


def run(spec: dict) -> dict:
    t_start = time.perf_counter()
    device = torch.device(spec.get("device", "cpu"))
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    result = {"engine": spec["engine"], "loadavg_start": list(os.getloadavg()), "rss_baseline_mb": rss_mb()}
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    t0 = time.perf_counter()
    engine, trainable = _build(spec, device)
    result["load_seconds"] = time.perf_counter() - t0
    result["rss_loaded_mb"] = rss_mb()
    result["peak_rss_load_mb"] = peak_rss_mb()
    if hasattr(engine, "describe"):
        result["describe"] = engine.describe()
    x1 = _images(spec, int(spec.get("batch", 1)))
    out = engine.predict_scores(x1)  # first call: plan/skeleton caches, lazy init; saved for comparison
    out = out if isinstance(out, torch.Tensor) else next(iter(out.values()))
    if spec.get("scores_out"):
        np.save(spec["scores_out"], out.detach().float().cpu().numpy())
    del out
    _reset_peak(device)
    base = rss_mb() if device.type == "cpu" else torch.cuda.memory_allocated(device) / 2**20
    lat = time_calls(lambda: engine.predict_scores(x1), int(spec["warmup"]), int(spec["repeats"]), sync)
    result["latency"] = {"seconds": stats(lat), "samples": lat, "batch": x1.shape[0]}
    result["peak_mem_b1_mb"] = _peak(device)
    result["mem_before_runs_mb"] = base
    nb = int(spec.get("throughput_batch") or 0)
    if nb > 1:
        xn = _images(spec, nb)
        _reset_peak(device)
        thr = time_calls(lambda: engine.predict_scores(xn), 1, int(spec.get("throughput_repeats", 2)), sync)
        st = stats(thr)
        result["throughput"] = {"seconds": st, "samples": thr, "batch": nb, "images_per_s": nb / st["median"]}
        result["peak_mem_bN_mb"] = _peak(device)
        del xn
    if spec.get("train_step") and trainable is not None and spec.get("dtype", "fp32") == "fp32":
        classes = int(spec["model_config"]["num_classes"])
        pre = getattr(engine, "preprocessing")
        result["train_step"] = _train_step(trainable, pre, x1, classes, spec, sync)
    result["loadavg_end"] = list(os.getloadavg())
    result["worker_seconds"] = time.perf_counter() - t_start
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m fcnseg.bench.worker SPEC.json", file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        spec = json.load(f)
    result = run(spec)
    tmp = spec["result_out"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1)
    os.replace(tmp, spec["result_out"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
