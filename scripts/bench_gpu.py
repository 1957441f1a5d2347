#!/usr/bin/env python3
"""The GPU benchmark behind docs/PERFORMANCE.md's GPU section: one command, one JSON.

    python -m scripts.bench_gpu                      # writes docs/bench/cuda.json, regenerates PERFORMANCE.md
    python -m scripts.bench_gpu --repeats 5 --out /tmp/cuda.json --no-docs

FCN-8s-VGG16 (21 classes, seeded random weights) at 500×500 on CUDA: batch-1 latency and batch-16
throughput for fp32 / channels_last / bf16 autocast / CUDA graphs (and ``torch.compile`` when
``--engines`` names a ``-compile`` engine), next to torchfcn==1.9.7 fp32 holding the same weights
and torchvision's ``fcn_resnet50`` (another net: a speed reference). Engines missing a package
(torchfcn, torchvision) get an error row; the rest still run. About two minutes on one GPU, bounded by
``--time-budget`` (240 s) and ``--worker-timeout`` (150 s). Extra options go to ``fcnseg bench``
(``--engines``, ``--size``, ``--throughput-batch``, ...).
"""
from __future__ import annotations

import sys
from pathlib import Path

from fcnseg.cli.bench_cmd import bench_script

ROOT = Path(__file__).resolve().parents[1]

# sized for a short GPU loan: no worker lives past 150 s, no engine begins past 240 s (a fresh machine runs
# the default engines in about 2 minutes, by estimate: not measured yet); the JSON is rewritten after each engine
DEFAULTS = dict(out=str(ROOT / "docs" / "bench" / "cuda.json"), device="cuda", throughput_batch=16, repeats=20,
                warmup=3, throughput_repeats=5, eval_split=True, worker_timeout=150.0, time_budget=240.0)

if __name__ == "__main__":
    sys.exit(bench_script("bench_gpu.py", __doc__, DEFAULTS))
