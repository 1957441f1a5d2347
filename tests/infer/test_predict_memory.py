"""``predict`` over 1,000 mixed images keeps memory bounded (resident set size from /proc/self/statm).

Complements tests/infer/test_predict.py::test_memory_flat_over_200_images (200 identical 128×128 PNGs):
here sizes (16–48 px), formats (PNG/JPEG), modes (RGB, L, P, RGBA, 1-bit, 16-bit, CMYK) and a few bad
files (skipped with skip_bad=True) vary, so per-shape caches and the error path are exercised too.
"""
from __future__ import annotations

import gc
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fcnseg import create_model
from fcnseg.infer.predict import predict_paths
from fcnseg.models.checkpoint import model_from_checkpoint, save_checkpoint

N_IMAGES = 1000
N_BAD = 10
FIRST, LAST = 100, N_IMAGES - N_BAD
MAX_GROWTH_MB = 10.0
SIDES = np.arange(16, 49, 8)  # 5 x 5 image shapes: the backend's per-shape caches are warm by image FIRST


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _write_images(folder: Path, rng: np.random.Generator) -> list[str]:
    """N_IMAGES files: mixed sizes, formats and modes, with N_BAD bad ones spread among them."""
    modes = [("RGB", "png"), ("L", "png"), ("P", "png"), ("RGBA", "png"), ("1", "png"), ("I;16", "png"),
             ("RGB", "jpg"), ("L", "jpg"), ("CMYK", "jpg")]
    bad_at = set(rng.choice(N_IMAGES, N_BAD, replace=False).tolist())
    bad = []
    for i in range(N_IMAGES):
        h, w = rng.choice(SIDES, 2)
        mode, ext = modes[i % len(modes)]
        path = folder / f"{i // 100}" / f"{i:04d}.{ext}"
        path.parent.mkdir(exist_ok=True)
        if i in bad_at:
            path.write_bytes([b"", b"not an image", b"\x89PNG\r\n\x1a\n\x00\x00"][len(bad) % 3])
            bad.append(str(path))
            continue
        if mode == "I;16":
            im = Image.fromarray(rng.integers(0, 65536, (h, w)).astype(np.uint16))
        else:
            im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)
        im.save(path, quality=85) if ext == "jpg" else im.save(path)
    return bad


@pytest.mark.slow
def test_memory_bounded_over_1000_mixed_images(tmp_path):
    """RSS after image 990 (the last good one) within MAX_GROWTH_MB of after image 100.

    Measured: +0.8 MB. The bound catches a leak of more than ~11 KB per image over the 890 images
    between the readings (keeping each image's score map, 11×H×W float32 = 11–100 KB, would show);
    smaller ones (keeping each decoded RGB array, 0.8–7 KB) would not. Sizes come from 25 shapes on
    purpose: with 1,000 distinct shapes the first pass grows ~50 MB (oneDNN's per-shape primitive
    cache, an LRU of bounded capacity, plus malloc slack), flat on a second pass over the same files and
    flat from the start with ``torch.backends.mkldnn.enabled = False``: bounded caches, not a leak.
    """
    if not Path("/proc/self/statm").is_file():
        pytest.skip("needs /proc/self/statm (Linux)")
    src = tmp_path / "in"
    src.mkdir()
    bad = _write_images(src, np.random.default_rng(0))
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "m.pt", create_model("fcn8s", 11, width=1 / 16, fc_channels=16))
    model, _ = model_from_checkpoint(ckpt)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rss: dict[int, float] = {}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gen = predict_paths(model, [src], tmp_path / "out", palette=np.zeros((11, 3), np.uint8), skip_bad=True)
            for i, _ in enumerate(gen, 1):
                if i in (FIRST, LAST):
                    gc.collect()
                    rss[i] = _rss_mb()
    finally:
        torch.set_num_threads(threads)
    skipped = [str(w.message) for w in caught if "skipped" in str(w.message)]
    assert len(rss) == 2 and i == N_IMAGES - N_BAD, (i, rss)
    assert len(skipped) == N_BAD and all(any(p in m for m in skipped) for p in bad)
    assert len(list((tmp_path / "out").glob("*_label.png"))) == N_IMAGES - N_BAD
    growth = rss[LAST] - rss[FIRST]
    print(f"RSS after image {FIRST}: {rss[FIRST]:.1f} MB, after {LAST}: {rss[LAST]:.1f} MB (+{growth:.1f} MB)",
          file=sys.stderr)
    assert growth < MAX_GROWTH_MB, rss
