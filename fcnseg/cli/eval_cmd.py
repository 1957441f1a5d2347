"""``fcnseg eval``: score a checkpoint; table on stdout, metrics.json and confusion.png on disk."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fcnseg.cli.common import (
    ENGINE_HELP,
    add_device,
    dataset_from_checkpoint,
    downscale,
    pick_device,
    positive_int,
    printable,
)
from fcnseg.errors import CheckpointError
from fcnseg.evaluate.scoring import evaluate, format_table, save_metrics
from fcnseg.infer.engines import choose_engine
from fcnseg.infer.predict import make_output_dir
from fcnseg.models.checkpoint import model_from_checkpoint
from fcnseg.paths import cache_dir
from fcnseg.visualize import plot_confusion


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by fcnseg train")
    p.add_argument("--dataset", help="dataset name (default: the one the checkpoint was trained on)")
    p.add_argument("--root", help="dataset folder (default: the checkpoint's)")
    p.add_argument("--split", help="split to score (default: the checkpoint's val split)")
    p.add_argument("--resize", type=downscale, help="downscale factor of the images (default: the checkpoint's)")
    p.add_argument("--batch-size", type=positive_int, default=1, help="images per forward pass (padded with void)")
    p.add_argument("--out", help="folder for metrics.json and confusion.png (default: beside the checkpoint)")
    p.add_argument("--flip", action="store_true",
                   help="test-time flip: average each image's and its mirror's class probabilities")
    p.add_argument("--engine", choices=["auto", "torch"], default="auto", help=ENGINE_HELP)
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable items with a warning")
    p.add_argument("--no-progress", action="store_true")
    add_device(p)


def run(args: argparse.Namespace) -> int:
    device = pick_device(args.device)
    model, ckpt = model_from_checkpoint(args.checkpoint, map_location="cpu")
    data = dataset_from_checkpoint(ckpt, args.dataset, args.root, args.split, args.skip_bad, args.resize)
    k = getattr(data, "num_classes", None)
    (classes, *more) = model.heads.values()
    if not more and isinstance(k, int) and k > 0 and k != classes:
        raise CheckpointError(f"checkpoint {args.checkpoint} predicts {classes} classes but dataset "
                              f"{getattr(data, 'name', args.dataset)} has {k}")
    out = make_output_dir(args.out if args.out else Path(args.checkpoint).resolve().parent)  # before the work
    scorer = model.to(device)
    if args.engine == "auto":  # exact (scores as the model's); forward passes: one per item, two with --flip
        scorer = choose_engine(model.eval(), device, exact=True, images=len(data) * (2 if args.flip else 1),
                               cache_dir=cache_dir("engines"), checksum=ckpt["checksum"],
                               log=lambda m: print(printable(m), file=sys.stderr, flush=True))
    del model, ckpt
    metrics = evaluate(scorer, data, device=device, batch_size=args.batch_size,
                       exclude=getattr(data, "exclude_from_means", None), progress=not args.no_progress,
                       flip=args.flip)
    print(format_table(metrics, data.classes))
    save_metrics(metrics, out / "metrics.json")
    if "confusion" in metrics:
        plot_confusion(metrics["confusion"], data.classes, out / "confusion.png")
    t = metrics.get("timing", {})
    if t:
        print(f"time: data {t.get('data', 0):.1f} s, model {t.get('model', 0):.1f} s, "
              f"metrics {t.get('metrics', 0):.2f} s")
    print(f"wrote {out / 'metrics.json'}")
    return 0
