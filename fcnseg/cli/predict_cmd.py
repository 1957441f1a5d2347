"""``fcnseg predict``: palette label PNGs and overlays, one summary line per image."""
from __future__ import annotations

import argparse

from .common import add_device, pick_device


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by fcnseg train")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images with a warning")
    p.add_argument("--tile", type=int, help="predict images larger than this by overlapping tiles")
    p.add_argument("--overlay", choices=["png", "jpg", "none"], default="png")
    add_device(p)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..data import voc_colormap
    from ..engine.checkpoint import model_from_checkpoint
    from ..engine.predict import format_summary, predict_paths

    if args.tile is not None and args.tile < 32:
        raise ValueError("--tile must be at least 32 pixels")
    device = pick_device(args.device)
    model, ckpt = model_from_checkpoint(args.checkpoint, map_location="cpu")
    classes = ckpt.get("classes")
    palette = np.asarray(ckpt["palette"], dtype=np.uint8) if ckpt.get("palette") is not None else voc_colormap()
    n = 0
    for summary in predict_paths(model, args.inputs, args.out, palette=palette, device=device,
                                 skip_bad=args.skip_bad, tile=args.tile, class_names=classes,
                                 overlay_format=None if args.overlay == "none" else args.overlay):
        print(format_summary(summary), flush=True)
        n += 1
    print(f"{n} image(s) → {args.out}")
    return 0
