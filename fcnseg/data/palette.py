"""Colour maps for drawing label maps."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fcnseg.errors import CheckpointError

__all__ = ["voc_colormap", "colorize", "palette_or_default"]


def voc_colormap(n: int = 256) -> np.ndarray:
    """PASCAL VOC bit-interleaved colour map: uint8 (n, 3).

    Bits 0, 1, 2 of index ``i`` feed R, G, B from the most significant bit down, then bits 3–5, and so on
    (0 -> black, 1 -> (128, 0, 0), 2 -> (0, 128, 0), 255 -> (224, 224, 192)).
    """
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        r = g = b = 0
        c = i
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


def colorize(label: torch.Tensor | np.ndarray, palette: np.ndarray, void_color=(0, 0, 0)) -> np.ndarray:
    """Label map (H, W) -> uint8 RGB (H, W, 3); values outside the palette (void 255) get ``void_color``."""
    lab = np.asarray(label.cpu() if isinstance(label, torch.Tensor) else label).astype(np.int64)
    table = np.tile(np.asarray(void_color, dtype=np.uint8), (256, 1))
    table[: len(palette)] = palette[:256]
    return table[np.clip(lab, 0, 255)]


def palette_or_default(raw: Any, source: str, classes: int) -> np.ndarray:
    """A model file's recorded palette (``raw``: one RGB triple per class at least) as uint8 (n, 3), else
    (``raw`` None) the VOC colour map; a malformed one is a one-line :class:`CheckpointError` naming ``source``."""
    if raw is None:
        return voc_colormap()
    try:
        pal = np.asarray(raw, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        pal = None
    if pal is None or pal.ndim != 2 or pal.shape[1] != 3 or len(pal) < classes or pal.min() < 0 or pal.max() > 255:
        raise CheckpointError(f"{source}: palette must list {classes} RGB triples in 0-255, got {raw!r:.60}")
    return pal.astype(np.uint8)
