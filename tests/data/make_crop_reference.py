"""Regenerate tests/data/crop_reference.npz: the scores of tiny Caffe-aligned FCN-32s/16s/8s on odd input sizes.

The nets' weights are filled from a formula (no RNG, so the file does not depend on torch's generator) and
run in float64; the upsampling layers keep their bilinear initialisation. tests/test_models.py compares the
current code's scores with the stored ones, so any change to a crop offset or slice shows.

    PYTHONPATH=. python tests/data/make_crop_reference.py
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

import fcnseg

NAMES = ("fcn32s", "fcn16s", "fcn8s")
SIZES = ((13, 19), (7, 10), (21, 5))
CLASSES = 2
FILE = Path(__file__).with_name("crop_reference.npz")


def formula_model(name: str) -> torch.nn.Module:
    """A width-1/16 Caffe-aligned net whose learned weights are sin waves of He-like scale, in float64."""
    model = fcnseg.create_model(name, CLASSES, width=1 / 16, fc_channels=8, alignment="caffe").double().eval()
    with torch.no_grad():
        for i, (key, p) in enumerate(sorted(model.named_parameters())):
            if key.startswith("upsample."):
                continue
            fan_in = p[0].numel() if p.dim() > 1 else 1
            wave = torch.sin(torch.arange(p.numel(), dtype=torch.float64) * 0.618 + i).reshape(p.shape)
            p.copy_(wave * 2 / math.sqrt(fan_in) if p.dim() > 1 else wave * 0.1)
    return model


def formula_input(h: int, w: int) -> torch.Tensor:
    """A 1×3×h×w float64 image with structure along both axes."""
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    chans = [torch.sin(0.9 * y + 0.4 * x + c) + torch.cos(0.3 * x * (c + 1) - 0.7 * y) for c in range(3)]
    return torch.stack(chans)[None] * 60


def scores() -> dict[str, np.ndarray]:
    """``name-HxW`` → the net's raw scores (1×CLASSES×H×W, float64)."""
    out = {}
    with torch.no_grad():
        for name in NAMES:
            model = formula_model(name)
            for h, w in SIZES:
                out[f"{name}-{h}x{w}"] = model(formula_input(h, w)).numpy()
    return out


if __name__ == "__main__":
    np.savez_compressed(FILE, **scores())
    print(f"wrote {FILE} ({FILE.stat().st_size} bytes)")
