"""``fcnseg reproduce camvid --protocol cpu|cpu-fullres|cpu-width|full|gpu --out DIR``: the paper's RQ1–RQ4 on
real data (protocols: ``fcnseg/configs/reproduce/camvid-*.yaml``)."""
from __future__ import annotations

import argparse
from pathlib import Path

from fcnseg.cli.common import positive_float
from fcnseg.reproduce import list_protocols, load_protocol, run_study, write_results


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dataset", choices=["camvid"], help="dataset of the study")
    p.add_argument("--protocol", choices=list_protocols("camvid"), default="cpu",
                   help="cpu: half resolution, frozen trunk, ≤ 60 min on 2 cores; cpu-fullres: the best FCN-8s "
                        "recipe of cpu at full resolution; cpu-width: fc6/fc7 width on FCN-32s; full: full "
                        "resolution, every layer trained, for a GPU; gpu: FCN-32s → 16s → 8s, every layer "
                        "fine-tuned, bf16, in minutes on one GPU (scripts/gpu_session.sh); bf16: one short run in "
                        "float32 and in CPU bf16 autocast, ≤ 10 min on 2 cores")
    p.add_argument("--out", required=True, help="folder for RESULTS.md and one JSON per run")
    p.add_argument("--root", help="dataset folder (default: the protocol's, ../shared/datasets/camvid)")
    p.add_argument("--only", nargs="+", metavar="RUN", help="run only these runs of the protocol")
    p.add_argument("--report-only", action="store_true", help="rewrite RESULTS.md from the JSON files")
    p.add_argument("--time-budget", type=positive_float, metavar="SECONDS",
                   help="bound the study: each training run's train.time_limit is its share of the time left")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides applied to every run")


def run(args: argparse.Namespace) -> int:
    if args.report_only:
        path = write_results(load_protocol(args.dataset, args.protocol), Path(args.out))
    else:
        path = run_study(args.dataset, args.protocol, args.out, root=args.root, only=args.only,
                         overrides=args.overrides, time_budget=args.time_budget)
    print(f"wrote {path}")
    return 0
