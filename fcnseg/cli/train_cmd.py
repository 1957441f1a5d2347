"""``fcnseg train CONFIG [section.key=value ...]``: one run from a YAML config.

Under ``torchrun --nproc_per_node N -m fcnseg train ...`` every process runs this and the
engine trains with DistributedDataParallel.
"""
from __future__ import annotations

import argparse

from fcnseg.cli.common import resolve_config
from fcnseg.config import load_config
from fcnseg.train.loop import train


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config: a path or a shipped name (e.g. camvid-fcn8s)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="override any config key, e.g. train.lr=1e-4 data.batch_size=2 model.weights=hed-vgg16")
    p.add_argument("--out", help="run folder (same as out=DIR)")
    p.add_argument("--resume", help="checkpoint to continue from, or 'auto' (OUT/last.pt if present)")
    p.add_argument("--overwrite", action="store_true",
                   help="start a fresh run in a folder that already holds one (replacing it)")


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"out={args.out}")
    if args.resume:
        overrides.append(f"train.resume={args.resume}")
    cfg = load_config(resolve_config(args.config), overrides)
    result = train(cfg, overwrite=args.overwrite)
    if result.get("rank", 0) == 0:
        best = result.get("best_mean_iu")
        msg = f"done: {result.get('iterations', '?')} iterations → {cfg.out}"
        if best is not None:
            msg += f", best val mean IU {100 * best:.1f}%"
        print(msg)
    return 0
