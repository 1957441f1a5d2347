"""Class-balancing weights."""
from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["median_frequency_weights"]


def median_frequency_weights(labels: Iterable[torch.Tensor] | object, num_classes: int | None = None,
                             ignore_index: int = 255) -> torch.Tensor:
    """Median-frequency balancing (Eigen & Fergus 2015), as used by SegNet for CamVid.

    ``freq[c]`` = pixels of class c / total labelled pixels of the images in which c occurs;
    ``weight[c] = median(freq) / freq[c]``. Classes that never occur get weight 0 and are left out of
    the median. ``labels``: an iterable of int label tensors (H, W), or a dataset (its
    ``load_label(i)`` is used when present, else ``dataset[i][1]``).
    """
    if num_classes is None:
        num_classes = labels.num_classes
    if hasattr(labels, "load_label") and hasattr(labels, "__len__"):
        it: Iterable[torch.Tensor] = (labels.load_label(i) for i in range(len(labels)))
    elif hasattr(labels, "__getitem__") and hasattr(labels, "num_classes"):
        it = (labels[i][1] for i in range(len(labels)))
    else:
        it = labels
    class_pixels = torch.zeros(num_classes, dtype=torch.float64)
    image_pixels = torch.zeros(num_classes, dtype=torch.float64)
    for lab in it:
        lab = lab.reshape(-1)
        lab = lab[(lab != ignore_index) & (lab >= 0) & (lab < num_classes)]
        counts = torch.bincount(lab, minlength=num_classes).double()
        class_pixels += counts
        image_pixels += (counts > 0).double() * lab.numel()
    present = image_pixels > 0
    if not present.any():
        raise ValueError("median_frequency_weights: no labelled pixels")
    freq = torch.zeros(num_classes, dtype=torch.float64)
    freq[present] = class_pixels[present] / image_pixels[present]
    weights = torch.zeros(num_classes, dtype=torch.float64)
    weights[present] = torch.quantile(freq[present], 0.5) / freq[present]
    return weights.float()
