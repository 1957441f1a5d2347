"""Evaluate a model on a dataset: the paper's metrics, per class, per head, with a time split."""
from __future__ import annotations

import functools
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate
from tqdm import tqdm

from fcnseg.argcheck import whole_number
from fcnseg.atomic import atomic_write
from fcnseg.data.collate import collate_pad
from fcnseg.errors import ConfigError, FcnsegError, unwrap_worker_error
from fcnseg.evaluate.metrics import METRIC_NAMES, ConfusionMatrix
from fcnseg.models.base import HEAD, SegmentationModel, is_single, unwrap

__all__ = ["Scorer", "evaluate", "format_table", "save_metrics", "plain"]

Exclude = Iterable[int] | Mapping[str, Iterable[int]] | None
Features = dict[str, torch.Tensor]


@runtime_checkable
class Scorer(Protocol):
    """What :func:`evaluate` scores besides a model: an inference engine (``fcnseg.infer.engines``).

    ``predict_scores`` maps RGB 0–255 images (N×C×H×W) to per-head float scores (N×K×H×W)."""

    heads: dict[str, int]

    def predict_scores(self, images: torch.Tensor) -> dict[str, torch.Tensor]: ...


class _ModelScorer:
    """A :class:`SegmentationModel` as a scorer that can also resume from cached backbone taps."""

    def __init__(self, model: SegmentationModel) -> None:
        self.model = model
        self.heads = dict(model.heads)

    def predict_scores(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model(self.model.preprocessing(images))

    def resume(self, features: Features, size: tuple[int, int]) -> dict[str, torch.Tensor]:
        """Scores at ``size`` from cached backbone taps (the model's explicit entry for them)."""
        return self.model.forward_features(features, size)


def _as_scorer(model: Any) -> _ModelScorer | Scorer:
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module  # evaluated directly, on this process's shard
    if isinstance(model, SegmentationModel):
        return _ModelScorer(model)
    if isinstance(model, Scorer):
        return model
    raise TypeError(f"model must be a fcnseg SegmentationModel or an inference engine, got {type(model).__name__}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _per_head_exclude(exclude: Exclude, heads: dict[str, int]) -> dict[str, list[int]]:
    if exclude is None:
        return {h: [] for h in heads}
    if isinstance(exclude, Mapping):
        unknown = set(exclude) - set(heads)
        if unknown:
            raise ConfigError(f"exclude names unknown heads {sorted(unknown)}; model heads: {sorted(heads)}")
        return {h: [int(c) for c in exclude.get(h, ())] for h in heads}
    if len(heads) > 1:
        raise ConfigError(f"exclude for a multi-head model must be a dict head -> classes (heads: {sorted(heads)})")
    return {h: [int(c) for c in exclude] for h in heads}


def _labels_by_head(labels: Any, heads: dict[str, int], label_key: str | None) -> dict[str, torch.Tensor]:
    if isinstance(labels, Mapping):
        if is_single(heads):
            if label_key is None and len(labels) == 1:
                label_key = next(iter(labels))
            if label_key not in labels:
                raise ConfigError(f"dataset labels are a dict with keys {sorted(labels)}; the model has one "
                                  f"head: pass label_key= to pick one")
            return {HEAD: labels[label_key]}
        missing = [h for h in heads if h not in labels]
        if missing:
            raise ConfigError(f"model heads {missing} have no labels; dataset label keys: {sorted(labels)}")
        return {h: labels[h] for h in heads}
    if not is_single(heads):
        raise ConfigError(f"model has heads {sorted(heads)} but the dataset gives a single label map")
    return {HEAD: labels}


def _check_classes(dataset: Dataset, heads: dict[str, int]) -> None:
    k = getattr(dataset, "num_classes", None)
    if is_single(heads) and isinstance(k, int) and k > 0 and k != heads[HEAD]:
        raise ConfigError(f"model predicts {heads[HEAD]} classes but dataset "
                          f"{getattr(dataset, 'name', type(dataset).__name__)} has {k}")


def evaluate(model: nn.Module, dataset: Dataset, *, device: str | torch.device = "cpu", batch_size: int = 1,
             workers: int = 0, exclude: Exclude = None,
             reducer: Callable[[torch.Tensor], torch.Tensor | None] | None = None,
             sampler: Sampler | None = None, progress: bool = True, label_key: str | None = None,
             collate_fn: Callable | None = None, flip: bool = False) -> dict:
    """Score ``model`` on ``dataset`` (items: RGB 0–255 image, int64 label with void 255).

    Images keep their size (batch 1 by default); larger batches are padded with void labels by
    ``fcnseg.data.collate_pad`` so padding is never counted (the model still sees the padded image).
    ``flip`` scores each image as the mean of its and its mirror's class probabilities (test-time
    flip augmentation; twice the model time). Items may instead be dicts ``{"label", "features"[,
    "mirrored"]}`` holding a frozen backbone prefix's taps (``fcnseg.train.cache.CachedItems``): the
    net then resumes from them at the label's size (``forward_features``), with no image. Confusion
    matrices accumulate on ``device``; ``reducer`` (e.g. ``distributed.all_reduce_sum``) sums them
    across processes, each rank evaluating its ``sampler`` shard.

    Returns the metrics of :func:`fcnseg.evaluate.metrics.compute_metrics` (fractions 0–1) — for a
    multi-head model one such dict per head name — plus ``images`` and ``timing`` (seconds spent waiting
    for data, in the model incl. preprocessing and argmax, and accumulating metrics; ``total``).
    """
    scorer = _as_scorer(model)
    if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")) or isinstance(dataset, (str, bytes)):
        raise TypeError(f"dataset must be a map-style dataset of (image, label) items, got {type(dataset).__name__}")
    if whole_number(batch_size, "batch_size") < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    heads = dict(scorer.heads)
    _check_classes(dataset, heads)
    excl = _per_head_exclude(exclude, heads)
    ignore = int(getattr(dataset, "ignore_index", 255))
    if collate_fn is None and batch_size > 1:
        collate_fn = functools.partial(_collate, ignore_index=ignore)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, sampler=sampler, num_workers=workers,
                        collate_fn=collate_fn, pin_memory=device.type == "cuda")
    cms = {h: ConfusionMatrix(k, device, ignore) for h, k in heads.items()}
    timing = {"data": 0.0, "model": 0.0, "metrics": 0.0}
    images = 0
    net = scorer.model if isinstance(scorer, _ModelScorer) else None
    was_training = net is not None and net.training
    if net is not None:
        net.to(device).eval()
    bar = _progress(len(loader), progress)
    start = tick = time.perf_counter()
    try:
        with torch.inference_mode():
            for batch in loader:
                if isinstance(batch, Mapping):  # cached items: the trunk's taps in place of the image
                    image, labels = None, batch["label"]
                    cached = _to({k: v for k, v in batch.items() if k != "label"}, device)
                else:
                    image, labels, cached = batch[0].to(device, non_blocking=True), batch[1], None
                labels = {h: v.to(device, non_blocking=True)
                          for h, v in _labels_by_head(labels, heads, label_key).items()}
                t0 = time.perf_counter()
                timing["data"] += t0 - tick
                outs = _scores(scorer, image, flip, cached, device, _size(labels))
                preds = {h: outs[h].argmax(1) for h in heads}
                _sync(device)
                t1 = time.perf_counter()
                timing["model"] += t1 - t0
                for h, cm in cms.items():
                    cm.update(preds[h], labels[h])
                _sync(device)
                tick = time.perf_counter()
                timing["metrics"] += tick - t1
                images += next(iter(labels.values())).shape[0]
                if bar is not None:
                    bar.update(1)
    except FcnsegError as e:  # raised in a DataLoader worker: its own message, not torch's wrapper
        raise unwrap_worker_error(e) from None
    finally:
        if bar is not None:
            bar.close()
        if net is not None:
            net.train(was_training)
    t0 = time.perf_counter()
    results = {h: cm.all_reduce(reducer).compute(excl[h]) for h, cm in cms.items()}
    for h, cm in cms.items():
        if not int(cm.matrix.sum()):
            where = f" for head {h}" if len(cms) > 1 else ""
            warnings.warn(f"{getattr(dataset, 'name', type(dataset).__name__)}: no labelled pixels in {images} "
                          f"images{where} (every label is void); the metrics are null", stacklevel=2)
    timing["metrics"] += time.perf_counter() - t0
    timing["total"] = time.perf_counter() - start
    out = dict(unwrap(results))
    out["images"] = images
    out["timing"] = timing
    return out


def _collate(batch: list, ignore_index: int) -> Any:
    """Padded images and labels (:func:`collate_pad`); cached items (dicts of equal-sized taps) stacked."""
    return default_collate(batch) if isinstance(batch[0], Mapping) else collate_pad(batch, ignore_index)


def _size(labels: dict[str, torch.Tensor]) -> tuple[int, int]:
    """H×W of a batch's label maps: the size its scores are wanted at."""
    return tuple(next(iter(labels.values())).shape[-2:])


def _scores(scorer: _ModelScorer | Scorer, image: torch.Tensor | None, flip: bool, cached: dict | None,
            device: torch.device, size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Head name → scores on ``device`` (with ``flip``: the mean softmax of the image and its mirror).
    ``cached``: the item's backbone taps (``"features"``, and ``"mirrored"`` for flips) to resume from
    at ``size``, in place of ``image``."""
    if cached is not None and not isinstance(scorer, _ModelScorer):
        raise ConfigError("cached features can only be scored by a model, not an inference engine")
    if flip and cached is not None and "mirrored" not in cached:
        raise ConfigError("flip needs the mirrored features in cached items")

    def run(mirrored: bool) -> dict[str, torch.Tensor]:
        if cached is None:
            out = scorer.predict_scores(image.flip(-1) if mirrored else image)
        else:
            out = scorer.resume(cached["mirrored" if mirrored else "features"], size)
        return {h: v.to(device) for h, v in out.items()}

    outs = run(False)
    if not flip:
        return outs
    mirrored = run(True)
    return {h: (v.softmax(1) + mirrored[h].flip(-1).softmax(1)) / 2 for h, v in outs.items()}


def _to(tree: Any, device: torch.device) -> Any:
    if isinstance(tree, Mapping):
        return {k: _to(v, device) for k, v in tree.items()}
    return tree.to(device, non_blocking=True)


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    return tqdm(total=total, desc="eval", unit="batch", leave=False, file=sys.stderr, dynamic_ncols=True)


def _pct(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def _head_table(m: Mapping, names: Sequence[str] | None) -> list[str]:
    lines = ["  ".join(f"{v:>10}" for v in METRIC_NAMES.values()),
             "  ".join(f"{_pct(m[k]):>10}" for k in METRIC_NAMES)]
    iu, acc = m.get("per_class_iu"), m.get("per_class_accuracy")
    if iu is None:
        return lines
    k = len(iu)
    names = list(names) if names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for {k} classes")
    width = max(12, max(len(n) for n in names) + 2)
    pixels = m.get("class_pixels") or [0] * k
    excluded = set(m.get("excluded", ()))
    lines += ["", f"{'class':<{width}}{'IU':>8}{'acc.':>8}{'pixels':>14}"]
    for i, name in enumerate(names):
        note = "  (excluded)" if i in excluded else ""
        lines.append(f"{name:<{width}}{_pct(iu[i]):>8}{_pct(acc[i]):>8}{pixels[i]:>14}{note}")
    return lines


def format_table(metrics: Mapping, class_names: Sequence[str] | Mapping[str, Sequence[str]] | None = None) -> str:
    """Text table: the four metrics and per-class IU / accuracy, in percent ("-" where undefined).

    For multi-head results ``class_names`` may be a dict head → names.
    """
    if "mean_iu" in metrics:
        lines = _head_table(metrics, class_names)
    else:
        lines = []
        for head, m in metrics.items():
            if isinstance(m, Mapping) and "mean_iu" in m:
                names = class_names.get(head) if isinstance(class_names, Mapping) else None
                lines += ([""] if lines else []) + [f"[{head}]"] + _head_table(m, names)
    t = metrics.get("timing")
    if isinstance(t, Mapping):
        lines += ["", f"{metrics.get('images', '?')} images in {t.get('total', 0):.1f} s: data "
                      f"{t.get('data', 0):.1f} s, model {t.get('model', 0):.1f} s, metrics {t.get('metrics', 0):.1f} s"]
    return "\n".join(lines)


def plain(x: Any, nan_to_none: bool = True) -> Any:
    """Metrics as plain numbers, strings, lists and dicts (for JSON and checkpoints);
    non-finite floats become ``None`` unless ``nan_to_none`` is false."""
    if isinstance(x, Mapping):
        return {str(k): plain(v, nan_to_none) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v, nan_to_none) for v in x]
    if hasattr(x, "tolist") and not isinstance(x, (str, bytes)):  # tensors, arrays, numpy scalars
        return plain(x.tolist(), nan_to_none)
    if nan_to_none and isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def save_metrics(metrics: Mapping, path: str | os.PathLike) -> Path:
    """Write metrics as JSON (NaN → null), atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(plain(metrics), indent=1)
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    return path
