#!/usr/bin/env python
"""The CPU benchmark behind docs/PERFORMANCE.md: one command, one JSON.

    python scripts/bench_cpu.py                      # writes docs/bench/cpu.json, regenerates PERFORMANCE.md
    python scripts/bench_cpu.py --repeats 3 --out /tmp/cpu.json --no-docs

FCN-8s-VGG16 (21 classes, seeded random weights, the peer holding the same ones) at 500×500 on
every CPU engine, side by side with torchfcn==1.9.7 (install it with
``pip install --no-deps torchfcn==1.9.7``; without it the peer row is an error). Takes about
8-10 minutes on 2 cores. Extra options are passed to ``fcnseg.bench.run_bench`` via the CLI
parser of ``fcnseg bench`` (e.g. ``--engines``, ``--threads``, ``--size``).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    from fcnseg.bench import add_bench_arguments, main_bench

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bench_arguments(ap)
    ap.add_argument("--no-docs", action="store_true", help="do not regenerate docs/PERFORMANCE.md")
    ap.set_defaults(out=str(ROOT / "docs" / "bench" / "cpu.json"), eval_split=True, no_md=True)
    args = ap.parse_args(argv)
    args.command_line = " ".join(["python scripts/bench_cpu.py", *(sys.argv[1:] if argv is None else argv)])
    rc = main_bench(args)
    if rc == 0 and not args.no_docs:
        rc = subprocess.call([sys.executable, str(ROOT / "scripts" / "write_performance_md.py")])
    return rc


if __name__ == "__main__":
    sys.exit(main())
