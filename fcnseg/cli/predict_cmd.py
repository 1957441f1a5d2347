"""``fcnseg predict``: palette label PNGs and overlays, one summary line per image."""
from __future__ import annotations

import argparse
import sys

from fcnseg.cli.common import add_device, pick_device, printable, tile_size
from fcnseg.data.io import shown
from fcnseg.data.palette import palette_or_default
from fcnseg.errors import ConfigError
from fcnseg.infer.engines import choose_engine
from fcnseg.infer.predict import ImageReadError, format_summary, predict_paths
from fcnseg.models.checkpoint import model_from_checkpoint
from fcnseg.models.dense import dense, parse_dense
from fcnseg.paths import cache_dir


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by fcnseg train")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images with a warning")
    p.add_argument("--tile", type=tile_size, help="predict images larger than this by overlapping tiles (>= 32)")
    p.add_argument("--overlay", choices=["png", "jpg", "none"], default="png")
    p.add_argument("--engine", choices=["auto", "torch"], default="auto",
                   help="auto (default): the fastest exact engine for the device — on CPU with onnxruntime, "
                        "ONNX Runtime fp32 (Caffe-aligned VGG nets: border-trimmed, exported once per input "
                        "size into the cache); see docs/PERFORMANCE.md. torch: the PyTorch model as trained")
    p.add_argument("--dense", metavar="F[:METHOD]",
                   help="densify the coarse score map F× (FCN-32s-like nets) by rarefaction (default) or "
                        "shift-and-stitch, then upsample bilinearly; implies --engine torch")
    add_device(p)


def _densified(model, text: str):
    """``--dense F[:METHOD]``: the model with its coarse map densified (``fcnseg.models.dense``)."""
    try:
        return dense(model.eval(), *parse_dense(text))
    except ValueError as e:
        raise ConfigError(f"--dense {text}: {e}") from None


def run(args: argparse.Namespace) -> int:
    device = pick_device(args.device)
    model, ckpt = model_from_checkpoint(args.checkpoint, map_location="cpu")
    classes = ckpt.get("classes")
    if not (isinstance(classes, (list, tuple)) and all(isinstance(c, str) for c in classes)):
        classes = None  # names are only for the summary lines
    palette = palette_or_default(ckpt.get("palette"), f"checkpoint {args.checkpoint}", max(model.heads.values()))
    del ckpt
    if args.dense:
        model = _densified(model, args.dense)
    elif args.engine == "auto":
        def reload():
            return model_from_checkpoint(args.checkpoint, map_location="cpu")[0].eval()

        model = choose_engine(model.eval(), device, cache_dir=cache_dir("engines"), reload=reload,
                              log=lambda m: print(printable(m), file=sys.stderr, flush=True))
    n = 0
    for summary in predict_paths(model, args.inputs, args.out, palette=palette, device=device,
                                 skip_bad=args.skip_bad, tile=args.tile, class_names=classes,
                                 overlay_format=None if args.overlay == "none" else args.overlay):
        print(printable(format_summary(summary)), flush=True)
        n += 1
    if n == 0:
        raise ImageReadError(f"no image predicted: {', '.join(map(shown, args.inputs))} "
                             f"{'held no readable image' if args.skip_bad else 'held no image files'}")
    print(printable(f"{n} image(s) → {args.out}"))
    return 0
