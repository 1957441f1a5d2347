#!/usr/bin/env python
"""When a dynamic-size ONNX export pays for itself on the CPU (``choose_engine``'s threshold).

    python -m scripts.bench_payback                       # writes docs/bench/payback.json
    python -m scripts.bench_payback --nets fcn32s@alexnet --repeats 1 --size 96 96 --out /tmp/payback.json

For each net the border-trimmed PyTorch engine cannot run (Caffe-aligned VGG nets it can: they never
export), with seeded random weights, 21 classes: the cold export as ``choose_engine`` makes it (trace,
the check against PyTorch on three sizes, the cached file and its checksum, the ONNX Runtime session), then
batch-1 latency at ``--size`` of plain PyTorch fp32 (what runs otherwise) and of that session, their timed
runs alternating. ``payback_images`` = ⌈export seconds / seconds saved per image⌉ (none where ONNX Runtime
is not faster); ``threshold_images`` is the largest of them: ``fcnseg.infer.engines.ORT_PAYBACK_IMAGES``
(kept equal to it by ``tests/test_docs_in_sync.py``). About 3 minutes on 2 idle cores.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from fcnseg.atomic import write_json
from fcnseg.bench.measure import machine_info, stats
from fcnseg.infer.engines import TorchEngine, _model_key, _ort_from_model
from fcnseg.models import create_model

ROOT = Path(__file__).resolve().parents[1]
NETS = ("fcn8s@vgg16:same", "fcn32s@alexnet", "fcn8s@googlenet", "fcn8s@resnet50")


def _model(net: str) -> torch.nn.Module:
    """``name@backbone[:alignment]`` with seeded random weights (the score layers too, so scores vary)."""
    name, rest = net.split("@", 1)
    backbone, _, alignment = rest.partition(":")
    torch.manual_seed(0)
    model = create_model(name, 21, backbone=backbone, alignment=alignment or "caffe").eval()
    with torch.no_grad():
        for p in model.score.parameters():
            p.normal_(std=0.01)
    return model


def measure(net: str, size: tuple[int, int], repeats: int, log) -> dict:
    model = _model(net)
    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0)) * 255
    torch_engine = TorchEngine(model)
    with tempfile.TemporaryDirectory(prefix="fcnseg-payback-") as tmp:
        t0 = time.perf_counter()
        ort = _ort_from_model(model, _model_key(model), cache_dir=tmp)
        export = time.perf_counter() - t0
        log(f"{net}: export {export:.1f} s")
        runs: dict[str, list[float]] = {"torch": [], "ort": []}
        engines = {"torch": torch_engine, "ort": ort}
        for e in engines.values():
            e.predict_scores(x)  # warm-up
        for _ in range(repeats):
            for k, e in engines.items():
                t0 = time.perf_counter()
                e.predict_scores(x)
                runs[k].append(time.perf_counter() - t0)
        del ort, engines
    t, o = stats(runs["torch"]), stats(runs["ort"])
    saving = t["median"] - o["median"]
    payback = math.ceil(export / saving) if saving > 0 else None
    log(f"{net}: torch {t['median']:.3f} s, ort {o['median']:.3f} s per image; payback {payback} images")
    return {"net": net, "export_s": export, "torch_s": t, "ort_s": o, "saving_s": saving,
            "payback_images": payback}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", default=",".join(NETS), help="comma-separated name@backbone[:alignment]")
    ap.add_argument("--size", type=int, nargs=2, default=(500, 500), metavar=("H", "W"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "docs" / "bench" / "payback.json"))
    args = ap.parse_args(argv)

    def log(m: str) -> None:
        print(m, file=sys.stderr, flush=True)

    start, machine = time.perf_counter(), machine_info()
    rows = [measure(n, tuple(args.size), args.repeats, log) for n in args.nets.split(",")]
    machine["loadavg_end"] = list(os.getloadavg())
    paid = [r["payback_images"] for r in rows if r["payback_images"] is not None]
    command = " ".join(["python -m scripts.bench_payback", *(sys.argv[1:] if argv is None else argv)])
    report = {"schema": "fcnseg-payback-v1", "command": command.strip(),
              "machine": machine, "size": list(args.size), "repeats": args.repeats, "nets": rows,
              "threshold_images": max(paid) if paid else None,
              "ort_not_faster": [r["net"] for r in rows if r["payback_images"] is None],
              "wall_seconds": time.perf_counter() - start}
    write_json(args.out, report, indent=1)
    log(f"wrote {args.out}: threshold {report['threshold_images']} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
