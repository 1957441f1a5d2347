"""``fcnseg predict``: palette label PNGs and overlays (overlay videos for videos), one summary line per file.

Under ``torchrun --nproc_per_node N -m fcnseg predict ...`` each process predicts its share of the files
(every N-th), writing exactly the files one process would; rank 0 prints the total."""
from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator

import torch

from fcnseg import distributed as D
from fcnseg.cli.common import ENGINE_HELP, add_device, pick_device, positive_int, printable, tile_size
from fcnseg.data.io import shown
from fcnseg.data.palette import palette_or_default
from fcnseg.errors import ConfigError
from fcnseg.infer.engines import choose_engine
from fcnseg.infer.predict import IMAGE_EXTENSIONS, ImageReadError, format_summary, iter_image_paths, predict_paths
from fcnseg.infer.video import VIDEO_EXTENSIONS, is_video
from fcnseg.models.checkpoint import model_from_checkpoint
from fcnseg.models.dense import dense, parse_dense
from fcnseg.paths import cache_dir


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", help="image or video files, or folders (searched recursively)")
    p.add_argument("--checkpoint", required=True, help="a checkpoint written by fcnseg train")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images with a warning")
    p.add_argument("--tile", type=tile_size, help="predict images larger than this by overlapping tiles (>= 32)")
    p.add_argument("--overlay", choices=["png", "jpg", "none"], default="png")
    p.add_argument("--engine", choices=["auto", "torch"], default="auto",
                   help=ENGINE_HELP)
    p.add_argument("--dense", metavar="F[:METHOD]",
                   help="densify the coarse score map F× (FCN-32s-like nets) by rarefaction (default) or "
                        "shift-and-stitch, then upsample bilinearly; implies --engine torch")
    p.add_argument("--frames", action="store_true",
                   help="videos: also write each frame's label PNG (<stem>_frames/000000_label.png, ...)")
    p.add_argument("--batch-size", type=positive_int,
                   help="videos: frames per forward pass (default 8 on CUDA, 1 on CPU)")
    p.add_argument("--no-progress", action="store_true", help="no frames/s bar for videos")
    add_device(p)


@contextlib.contextmanager
def _processes(device: str) -> Iterator[tuple[torch.device, tuple[int, int]]]:
    """The device and this process's ``(rank, world)`` share: ``(0, 1)`` alone, the process group's
    under torchrun (each rank on its own GPU, gloo on CPU), left when the block ends."""
    if D.env_world_size() <= 1:
        yield pick_device(device), (0, 1)
        return
    ctx = D.setup(device)
    ok = False
    try:
        yield ctx.device, (ctx.rank, ctx.world_size)
        ok = True
    finally:
        D.cleanup(ctx, ok)


def _densified(model, text: str):
    """``--dense F[:METHOD]``: the model with its coarse map densified (``fcnseg.models.dense``)."""
    try:
        return dense(model.eval(), *parse_dense(text))
    except ValueError as e:
        raise ConfigError(f"--dense {text}: {e}") from None


def _share(args: argparse.Namespace, shard: tuple[int, int]) -> int | None:
    """How many images this process will predict (what the engine choice weighs); None with a video
    among the inputs (frames: open-ended)."""
    paths = list(iter_image_paths(args.inputs, skip_dir=args.out, extensions=IMAGE_EXTENSIONS + VIDEO_EXTENSIONS))
    if any(is_video(p) for p in paths):
        return None
    rank, world = shard
    return len(paths[rank::world])


def run(args: argparse.Namespace) -> int:
    with _processes(args.device) as (device, shard):
        return _run(args, device, shard)


def _run(args: argparse.Namespace, device: torch.device, shard: tuple[int, int]) -> int:
    model, ckpt = model_from_checkpoint(args.checkpoint, map_location="cpu")
    classes = ckpt.get("classes")
    if not (isinstance(classes, (list, tuple)) and all(isinstance(c, str) for c in classes)):
        classes = None  # names are only for the summary lines
    palette = palette_or_default(ckpt.get("palette"), f"checkpoint {args.checkpoint}", max(model.heads.values()))
    checksum = ckpt["checksum"]  # verified on load: names the weights in the engine cache
    del ckpt
    if args.dense:
        model = _densified(model, args.dense)
    elif args.engine == "auto":
        model = choose_engine(model.eval(), device, images=_share(args, shard), cache_dir=cache_dir("engines"),
                              checksum=checksum, log=lambda m: print(printable(m), file=sys.stderr, flush=True))
    counts = torch.zeros(2, dtype=torch.int64)  # images, videos
    batch = args.batch_size or (8 if device.type == "cuda" else 1)
    for summary in predict_paths(model, args.inputs, args.out, palette=palette, device=device,
                                 skip_bad=args.skip_bad, tile=args.tile, class_names=classes,
                                 overlay_format=None if args.overlay == "none" else args.overlay,
                                 frames=args.frames, batch_size=batch, progress=not args.no_progress, shard=shard):
        print(printable(format_summary(summary)), flush=True)
        counts[int("frames" in summary)] += 1
    images, videos = D.all_reduce_sum(counts).tolist()  # over all processes under torchrun
    if images + videos == 0:
        raise ImageReadError(f"no image predicted: {', '.join(map(shown, args.inputs))} "
                             f"{'held no readable image' if args.skip_bad else 'held no image files'}")
    if shard[0] == 0:
        done = [f"{images} image(s)"] * bool(images or not videos) + [f"{videos} video(s)"] * bool(videos)
        print(printable(f"{', '.join(done)} → {args.out}"))
    return 0
