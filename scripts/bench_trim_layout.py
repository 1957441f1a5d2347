#!/usr/bin/env python
"""Is channels_last the faster layout for the border-trimmed net at every size? (``choose_engine``'s CPU
default for Caffe-aligned VGG nets is ``torch-fp32-cl-trim``.)

    python -m scripts.bench_trim_layout                   # writes docs/bench/trim_layout.json
    python -m scripts.bench_trim_layout --nets fcn32s --sizes 64x64 --repeats 1 --out /tmp/layout.json

For FCN-32s, FCN-16s and FCN-8s on VGG16 (fc6/fc7 4096 wide, 21 classes, seeded random weights) and each
size, the trimmed engine in NCHW (``torch-fp32-trim``) and in channels_last (``torch-fp32-cl-trim``): the first
call at the size (its plan and zero-image skeleton included), then ``--repeats`` timed batch-1 calls, the two
engines alternating call by call; and the largest score difference between them and from the plain net
(exactness). About 4 minutes on 2 idle cores.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from fcnseg.atomic import write_json
from fcnseg.bench.measure import machine_info, stats
from fcnseg.infer.engines import TorchEngine
from fcnseg.models import create_model
from fcnseg.models.base import single

ROOT = Path(__file__).resolve().parents[1]
SIZES = ("64x64", "97x51", "250x333", "375x500", "500x500")


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(name, 21).eval()
    with torch.no_grad():
        for p in model.score.parameters():
            p.normal_(std=0.01)
    return model


def measure(name: str, sizes: list[tuple[int, int]], repeats: int, log) -> list[dict]:
    plain = _model(name)
    engines = {"torch-fp32-trim": TorchEngine(_model(name), trim=True),
               "torch-fp32-cl-trim": TorchEngine(_model(name), trim=True, channels_last=True)}
    rows = []
    for h, w in sizes:
        x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(h * w)) * 255
        with torch.inference_mode():
            ref = single(plain(plain.preprocessing(x)))
        row: dict = {"net": name, "size": [h, w], "first_s": {}, "seconds": {}, "max_abs_diff_vs_plain": {}}
        scores = {}
        for k, e in engines.items():
            t0 = time.perf_counter()
            scores[k] = single(e.predict_scores(x))
            row["first_s"][k] = time.perf_counter() - t0
            row["max_abs_diff_vs_plain"][k] = float((scores[k] - ref).abs().max())
        runs: dict[str, list[float]] = {k: [] for k in engines}
        for _ in range(repeats):
            for k, e in engines.items():
                t0 = time.perf_counter()
                e.predict_scores(x)
                runs[k].append(time.perf_counter() - t0)
        row["seconds"] = {k: stats(v) for k, v in runs.items()}
        row["cl_speedup"] = row["seconds"]["torch-fp32-trim"]["median"] / row["seconds"]["torch-fp32-cl-trim"]["median"]
        row["score_scale"] = float(ref.abs().max())
        rows.append(row)
        log(f"{name} {h}x{w}: trim {row['seconds']['torch-fp32-trim']['median']:.3f} s, cl-trim "
            f"{row['seconds']['torch-fp32-cl-trim']['median']:.3f} s (×{row['cl_speedup']:.2f})")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", default="fcn32s,fcn16s,fcn8s")
    ap.add_argument("--sizes", default=",".join(SIZES), help="comma-separated HxW")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "docs" / "bench" / "trim_layout.json"))
    args = ap.parse_args(argv)
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]

    def log(m: str) -> None:
        print(m, file=sys.stderr, flush=True)

    start, machine = time.perf_counter(), machine_info()
    rows = [r for n in args.nets.split(",") for r in measure(n, sizes, args.repeats, log)]
    machine["loadavg_end"] = list(os.getloadavg())
    command = " ".join(["python -m scripts.bench_trim_layout", *(sys.argv[1:] if argv is None else argv)])
    report = {"schema": "fcnseg-trim-layout-v1", "command": command.strip(), "machine": machine,
              "repeats": args.repeats, "rows": rows, "cl_slower": [f"{r['net']} {r['size'][0]}x{r['size'][1]}"
                                                                   for r in rows if r["cl_speedup"] < 1],
              "wall_seconds": time.perf_counter() - start}
    write_json(args.out, report, indent=1)
    log(f"wrote {args.out}; channels_last slower at: {', '.join(report['cl_slower']) or 'no size'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
