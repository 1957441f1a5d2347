"""Colour maps for drawing label maps."""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["voc_colormap", "colorize"]


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
