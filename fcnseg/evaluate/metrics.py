"""Segmentation metrics from one confusion matrix, as the FCN reference's ``score.py`` computes them.

Rows are ground-truth classes, columns predicted classes. From the matrix ``hist``:

* pixel accuracy       ``diag.sum() / hist.sum()``
* mean accuracy        ``nanmean(diag / hist.sum(1))``
* mean IU              ``nanmean(diag / (hist.sum(1) + hist.sum(0) - diag))``
* frequency-weighted IU ``sum(freq[freq > 0] * iu[freq > 0])`` with ``freq = hist.sum(1) / hist.sum()``

A class absent from both labels and predictions has IU 0/0 = NaN and drops out of the mean, as in
the reference; a class predicted but never labelled has IU 0 and counts (its accuracy is NaN).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np
import torch

from fcnseg.argcheck import whole_number

__all__ = ["ConfusionMatrix", "compute_metrics", "METRIC_NAMES"]

# Summary metrics in the paper's order, with their display names.
METRIC_NAMES = {"pixel_accuracy": "pixel acc.", "mean_accuracy": "mean acc.",
                "mean_iu": "mean IU", "fw_iu": "f.w. IU"}


class ConfusionMatrix:
    """A K×K int64 confusion matrix accumulated with ``torch.bincount`` on ``device``.

    Label values ``ignore_index`` (255) and any value outside ``[0, K)`` are ignored.
    """

    def __init__(self, num_classes: int, device: str | torch.device = "cpu", ignore_index: int = 255) -> None:
        if whole_number(num_classes, "num_classes") < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=device)

    @property
    def device(self) -> torch.device:
        return self.matrix.device

    def update(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        """Add predicted labels ``pred`` against ground truth ``label`` (same shape, any batch)."""
        for name, t in (("pred", pred), ("label", label)):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor of class indices, got {type(t).__name__}")
            if t.is_floating_point() or t.is_complex():
                raise TypeError(f"{name} must hold integer class indices, got dtype {t.dtype}")
        if pred.shape != label.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != label shape {tuple(label.shape)}")
        k = self.num_classes
        pred = pred.to(self.device, torch.int64).reshape(-1)
        label = label.to(self.device, torch.int64).reshape(-1)
        keep = (label >= 0) & (label < k) & (label != self.ignore_index)
        if not bool(keep.all()):
            pred, label = pred[keep], label[keep]
        if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= k):
            raise ValueError(f"predictions outside [0, {k}): min {int(pred.min())}, max {int(pred.max())}")
        self.matrix += torch.bincount(label * k + pred, minlength=k * k).reshape(k, k)

    def merge(self, other: ConfusionMatrix | torch.Tensor) -> ConfusionMatrix:
        """Add another matrix (e.g. from another shard) into this one; returns self."""
        m = other.matrix if isinstance(other, ConfusionMatrix) else torch.as_tensor(other)
        if tuple(m.shape) != tuple(self.matrix.shape):
            raise ValueError(f"cannot merge a {tuple(m.shape)} matrix into a {tuple(self.matrix.shape)} one")
        self.matrix += m.to(self.device, torch.int64)
        return self

    def all_reduce(self, reducer: Callable[[torch.Tensor], torch.Tensor | None] | None) -> ConfusionMatrix:
        """Sum the matrix across processes with ``reducer`` (e.g. ``distributed.all_reduce_sum``).

        The reducer may reduce in place and return None, or return the summed tensor. Returns self.
        """
        if reducer is not None:
            out = reducer(self.matrix)
            if out is not None:
                self.matrix = out.to(self.device, torch.int64)
        return self

    def reset(self) -> None:
        self.matrix.zero_()

    def compute(self, exclude: Iterable[int] | None = None) -> dict:
        """Metrics as fractions (0–1); see :func:`compute_metrics`."""
        return compute_metrics(self.matrix, exclude)


def compute_metrics(matrix: torch.Tensor | np.ndarray, exclude: Iterable[int] | None = None) -> dict:
    """The paper's four metrics plus per-class IU and accuracy from a K×K (label × prediction) matrix.

    ``exclude``: class indices left out of the means and of f.w. IU (e.g. SIFT Flow classes absent from
    its test set); pixel accuracy always uses the whole matrix. Returned keys:
    ``pixel_accuracy, mean_accuracy, mean_iu, fw_iu`` (floats, NaN if undefined), ``per_class_iu``,
    ``per_class_accuracy`` (lists, NaN where undefined), ``class_pixels`` (labelled pixels per class),
    ``pixels`` (counted pixels), ``num_classes``, ``excluded`` and ``confusion`` (the matrix as lists).
    """
    try:
        hist = np.asarray(matrix.detach().cpu() if isinstance(matrix, torch.Tensor) else matrix, dtype=np.int64)
    except (TypeError, ValueError):
        raise TypeError(f"matrix must be a K×K array of counts, got {type(matrix).__name__}") from None
    if hist.size and hist.min() < 0:
        raise ValueError(f"matrix holds negative counts (min {int(hist.min())})")
    if hist.ndim != 2 or hist.shape[0] != hist.shape[1]:
        raise ValueError(f"confusion matrix must be square, got shape {hist.shape}")
    k = hist.shape[0]
    if isinstance(exclude, (str, bytes)) or (exclude is not None and not all(
            isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in exclude)):
        raise TypeError(f"exclude must be class indices (ints), got {exclude!r:.60}")
    excluded = sorted({int(c) for c in (exclude or ())})
    if any(c < 0 or c >= k for c in excluded):
        raise ValueError(f"exclude lists classes outside [0, {k}): {excluded}")
    keep = np.ones(k, bool)
    keep[excluded] = False
    h = hist.astype(np.float64)
    diag, rows, cols, total = np.diag(h), h.sum(1), h.sum(0), h.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = diag / rows
        iu = diag / (rows + cols - diag)
        freq = rows / total if total else np.zeros(k)
    fw = freq > 0
    fw &= keep
    return {
        "pixel_accuracy": float(diag.sum() / total) if total else math.nan,
        "mean_accuracy": _nanmean(acc[keep]),
        "mean_iu": _nanmean(iu[keep]),
        "fw_iu": float((freq[fw] * iu[fw]).sum()) if total else math.nan,
        "per_class_iu": iu.tolist(),
        "per_class_accuracy": acc.tolist(),
        "class_pixels": hist.sum(1).tolist(),
        "pixels": int(hist.sum()),
        "num_classes": k,
        "excluded": excluded,
        "confusion": hist.tolist(),
    }


def _nanmean(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else math.nan
