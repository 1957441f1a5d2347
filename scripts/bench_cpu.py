#!/usr/bin/env python
"""The CPU benchmark behind docs/PERFORMANCE.md: one command, one JSON.

    python -m scripts.bench_cpu                      # writes docs/bench/cpu.json, regenerates PERFORMANCE.md
    python -m scripts.bench_cpu --repeats 3 --out /tmp/cpu.json --no-docs
    python -m scripts.bench_cpu --train-only         # the training-step rows: docs/bench/train-step.json

FCN-8s-VGG16 (21 classes, seeded random weights, the peer holding the same ones) at 500×500 on
every CPU engine, side by side with torchfcn==1.9.7 (install it with
``pip install --no-deps torchfcn==1.9.7``; without it the peer row is an error). Takes about
8-10 minutes on 2 cores. Extra options are passed to ``fcnseg.bench.run_bench`` via the CLI
parser of ``fcnseg bench`` (e.g. ``--engines``, ``--threads``, ``--size``). ``--train-only`` times the
training step alone (``fcnseg.bench.train_step``: our full net fp32 plain and border-trimmed, bf16 where
native, fine-tuning from a cached pool4/pool3) next to the peer's, phase by phase, about 5 minutes on an
idle 2-core machine.
"""
from __future__ import annotations

import sys
from pathlib import Path

from fcnseg.cli.bench_cmd import bench_script

ROOT = Path(__file__).resolve().parents[1]

DEFAULTS = dict(out=str(ROOT / "docs" / "bench" / "cpu.json"), eval_split=True,
                train_out=str(ROOT / "docs" / "bench" / "train-step.json"))

if __name__ == "__main__":
    sys.exit(bench_script("bench_cpu.py", __doc__, DEFAULTS))
