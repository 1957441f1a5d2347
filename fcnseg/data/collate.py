"""Batching items of different sizes."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from fcnseg.data.base import IGNORE_INDEX

__all__ = ["collate_pad", "pad_to"]


def pad_to(t: torch.Tensor, h: int, w: int, value: float) -> torch.Tensor:
    """Pad the last two dims of ``t`` at the bottom/right to (h, w) with ``value``."""
    ph, pw = h - t.shape[-2], w - t.shape[-1]
    if ph == 0 and pw == 0:
        return t
    out = t.new_full((*t.shape[:-2], h, w), value)
    out[..., : t.shape[-2], : t.shape[-1]] = t
    return out


def collate_pad(batch: Sequence[tuple[torch.Tensor, Any]], ignore_index: int = IGNORE_INDEX
                ) -> tuple[torch.Tensor, Any]:
    """Stack ``(image, label)`` items of different sizes into (N, C, Hmax, Wmax) / (N, Hmax, Wmax).

    Images are padded bottom/right with 0, labels with ``ignore_index``; dict labels (SIFT Flow) are
    collated key by key into a dict of (N, Hmax, Wmax) tensors.
    """
    if not batch:
        raise ValueError("collate_pad: empty batch")
    images = [item[0] for item in batch]
    h = max(im.shape[-2] for im in images)
    w = max(im.shape[-1] for im in images)
    image_batch = torch.stack([pad_to(im, h, w, 0) for im in images])
    labels = [item[1] for item in batch]
    if isinstance(labels[0], dict):
        label_batch: Any = {k: torch.stack([pad_to(lab[k], h, w, ignore_index) for lab in labels])
                            for k in labels[0]}
    else:
        label_batch = torch.stack([pad_to(lab, h, w, ignore_index) for lab in labels])
    return image_batch, label_batch
