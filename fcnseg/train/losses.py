"""Per-pixel softmax cross-entropy with void 255, class weights and patch sampling.

Reductions: ``"mean"`` divides the summed loss by the (weighted) number of labelled pixels;
``"sum"`` sums over pixels and divides by the number of images, which is what the reference's
``SoftmaxWithLoss { normalize: false }`` computes (Caffe's BATCH_SIZE normalisation; with the
reference's batch of one it is the plain pixel sum); ``"image-mean"`` averages each image's loss
over its own labelled pixels, then over the images: ``normalize: true`` (VALID) on batches of one,
accumulated with ``iter_size`` (voc-fcn-alexnet). The trainer computes numerator and denominator
separately so that micro-batches and ranks normalise by the global batch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fcnseg.models.base import HEAD

__all__ = ["IGNORE_INDEX", "REDUCTIONS", "pixel_loss_sum", "loss_numerator", "loss_denominator", "segmentation_loss",
           "patch_mask", "apply_patch_sampling", "check_labels"]

IGNORE_INDEX = 255
REDUCTIONS = ("sum", "mean", "image-mean")
Labels = torch.Tensor | dict
Scores = torch.Tensor | dict


def _pairs(scores: Scores, labels: Labels) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    if isinstance(scores, dict) != isinstance(labels, dict):
        raise ValueError("multi-head scores need a dict of labels with the same heads (and vice versa)")
    if not isinstance(scores, dict):
        return [(HEAD, scores, labels)]
    if set(scores) != set(labels):
        raise ValueError(f"heads {sorted(scores)} do not match label heads {sorted(labels)}")
    return [(h, scores[h], labels[h]) for h in sorted(scores)]


def _weight(class_weights, head: str) -> torch.Tensor | None:
    return class_weights.get(head) if isinstance(class_weights, dict) else class_weights


def pixel_loss_sum(scores: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor | None = None,
                   ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Summed (weighted) cross-entropy over labelled pixels of N×K×H×W scores, computed in float32."""
    w = None if class_weights is None else class_weights.to(scores.device, torch.float32)
    return F.cross_entropy(scores.float(), labels, weight=w, ignore_index=ignore_index, reduction="sum")


def loss_numerator(scores: torch.Tensor, labels: torch.Tensor, reduction: str,
                   class_weights: torch.Tensor | None = None, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """The summed loss (``sum``/``mean``), or the sum of per-image mean losses (``image-mean``)."""
    if reduction != "image-mean":
        return pixel_loss_sum(scores, labels, class_weights, ignore_index)
    total = scores.new_zeros((), dtype=torch.float32)
    for s, lab in zip(scores, labels):  # per image, as Caffe's normalize: true on a batch of one
        den = loss_denominator(lab[None], "mean", class_weights, ignore_index)
        total = total + pixel_loss_sum(s[None], lab[None], class_weights, ignore_index) / max(den, 1.0)
    return total


def loss_denominator(labels: torch.Tensor, reduction: str, class_weights: torch.Tensor | None = None,
                     ignore_index: int = IGNORE_INDEX) -> float:
    """What :func:`loss_numerator` is divided by: images (``sum``, ``image-mean``) or weighted labelled
    pixels (``mean``)."""
    if reduction in ("sum", "image-mean"):
        return float(labels.shape[0])
    if reduction != "mean":
        raise ValueError(f"loss reduction must be one of {REDUCTIONS}, got {reduction!r}")
    valid = labels[labels != ignore_index]
    if class_weights is None:
        return float(valid.numel())
    return float(class_weights.to(valid.device, torch.float64)[valid].sum())


def segmentation_loss(scores: Scores, labels: Labels, reduction: str = "mean", class_weights=None,
                      ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Loss of one batch; multi-head nets (dicts) sum their heads' losses, each normalised alone.

    ``class_weights``: a K tensor, or a dict head → tensor for multi-head nets.
    """
    total = None
    for head, s, lab in _pairs(scores, labels):
        w = _weight(class_weights, head)
        den = loss_denominator(lab, reduction, w, ignore_index)
        term = loss_numerator(s, lab, reduction, w, ignore_index) / max(den, 1e-12)
        total = term if total is None else total + term
    return total


def check_labels(labels: Labels, classes: int | dict, ignore_index: int = IGNORE_INDEX,
                 where: str = "batch") -> None:
    """Raise a one-line ValueError when a label is neither a class index nor void."""
    items = labels.items() if isinstance(labels, dict) else [(HEAD, labels)]
    for head, lab in items:
        k = classes[head] if isinstance(classes, dict) else classes
        bad = (lab != ignore_index) & ((lab < 0) | (lab >= k))
        if bad.any():
            v = int(lab[bad][0])
            raise ValueError(f"{where}: label value {v} is not a class (0..{k - 1}) nor void {ignore_index}"
                             + (f" in head {head!r}" if isinstance(labels, dict) else ""))


def patch_mask(height: int, width: int, p: float, generator: torch.Generator | None = None,
               stride: int = 32) -> torch.Tensor:
    """Bool H×W mask keeping each ``stride``×``stride`` cell (the final layer's) with probability ``p``."""
    gh, gw = -(-height // stride), -(-width // stride)
    keep = torch.rand(gh, gw, generator=generator) < p
    return keep.repeat_interleave(stride, 0).repeat_interleave(stride, 1)[:height, :width]


def apply_patch_sampling(labels: Labels, p: float, generator: torch.Generator | None = None,
                         stride: int = 32, ignore_index: int = IGNORE_INDEX) -> Labels:
    """Set the pixels of dropped cells to void (one mask shared by all heads); H×W or N×H×W labels."""
    if p >= 1.0:
        return labels
    ref = next(iter(labels.values())) if isinstance(labels, dict) else labels
    if ref.dim() == 2:
        drop = ~patch_mask(ref.shape[0], ref.shape[1], p, generator, stride)
    else:
        drop = torch.stack([~patch_mask(ref.shape[-2], ref.shape[-1], p, generator, stride)
                            for _ in range(ref.shape[0])])
    drop = drop.to(ref.device)

    def one(t: torch.Tensor) -> torch.Tensor:
        return t.masked_fill(drop, ignore_index)

    return {k: one(v) for k, v in labels.items()} if isinstance(labels, dict) else one(labels)
