"""Training data: transforms from the config, a resumable world-size-independent batch sampler,
per-item seeded augmentation, and the frozen-trunk feature cache.

Determinism: the global batch of step ``t`` is a fixed function of (seed, t) — epoch ``e`` is a
seeded permutation, step ``t`` takes its next ``batch_size`` positions — and every item's random
augmentation (and patch-sampling mask) is drawn from a seed derived from (seed, epoch, position).
So a resumed run, any ``data.workers`` and any world size see the same images, the same way.
Rank ``r`` of ``W`` takes the ``r``-th contiguous slice of each global batch (the union over ranks
is what ``DistributedSampler`` + ``set_epoch`` would give for a step, but resumable mid-epoch).
"""
from __future__ import annotations

import hashlib
import random
import signal
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from fcnseg.config import DataConfig, RunConfig
from fcnseg.data import build_dataset, collate_pad, median_frequency_weights
from fcnseg.data import transforms as T
from fcnseg.errors import ConfigError, FcnsegError, unwrap_worker_error
from fcnseg.models.preprocessing import Preprocessing
from fcnseg.train.losses import apply_patch_sampling

__all__ = ["unwrap_worker_error", "build_transform", "cacheable", "First", "Transformed", "GlobalBatchSampler",
           "SeededItems", "collate_seeded", "item_seed", "fill_value", "Wrapper", "flipped", "patch_sample",
           "build_datasets", "Shard", "worker_init", "loader_steps", "class_weights"]


FLIP_P = 0.5  # probability of a random horizontal flip (``data.flip``)


def item_seed(seed: int, epoch: int, position: int, salt: str = "") -> int:
    """A 63-bit seed from (seed, epoch, position) (stable across processes and platforms)."""
    h = hashlib.blake2b(f"{seed}:{epoch}:{position}:{salt}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 1


def fill_value(pre: Preprocessing) -> list[float]:
    """RGB 0–255 values that preprocess to 0 (padding of random crops)."""
    mean = list(pre.mean[:3])
    if pre.bgr:
        mean = mean[::-1]
    return [m / pre.scale for m in mean] + [m / pre.scale for m in pre.mean[3:]]


def cacheable(d: DataConfig) -> bool:
    """Whether the frozen-trunk feature cache can serve these training transforms: ``resize`` and
    ``flip`` only (the cache holds each image's features and its mirror's)."""
    scale = d.scale_range is not None and list(d.scale_range) != [1, 1]
    return not (scale or d.crop or d.jitter)


def build_transform(d: DataConfig, pre: Preprocessing, train: bool, flip: bool = True):
    """Resize (train and val), then for training random scale, crop, flip, jitter as configured
    (``flip=False`` leaves the flip out: the feature cache draws it itself)."""
    ts: list[Any] = []
    if d.resize and d.resize != 1:
        ts.append(T.Resize(scale=1.0 / d.resize))
    if train:
        if d.scale_range is not None and list(d.scale_range) != [1, 1]:
            ts.append(T.RandomScale(float(d.scale_range[0]), float(d.scale_range[1])))
        if d.crop:
            ts.append(T.RandomCrop(tuple(d.crop) if isinstance(d.crop, list) else int(d.crop), fill=fill_value(pre)))
        if d.flip and flip:
            ts.append(T.RandomHorizontalFlip(FLIP_P))
        if d.jitter:
            ts.append(T.ColorJitter(d.jitter, d.jitter, d.jitter))
    return T.Compose(ts) if ts else None


class Wrapper(Dataset):
    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __getattr__(self, name: str) -> Any:  # classes, num_classes, palette, ... of the wrapped set
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


class First(Wrapper):
    """The first ``n`` items of a dataset (``data.max_items``)."""

    def __init__(self, dataset: Any, n: int) -> None:
        super().__init__(dataset)
        self.n = min(n, len(dataset))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.dataset[i]

    def load_label(self, i: int):
        if hasattr(self.dataset, "load_label"):
            return self.dataset.load_label(i)
        return self.dataset[i][1]


class Transformed(Wrapper):
    """Apply a joint ``(image, label)`` transform to every item."""

    def __init__(self, dataset: Any, transform) -> None:
        super().__init__(dataset)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        image, label = self.dataset[i]
        return self.transform(image, label) if self.transform is not None else (image, label)


class SeededItems(Dataset):
    """Index with ``(index, seed)``: the item, transformed under that seed, patch-sampled; RNGs restored."""

    def __init__(self, dataset: Any, transform=None, patch_p: float = 1.0) -> None:
        self.dataset, self.transform, self.patch_p = dataset, transform, patch_p

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                random.seed(seed)
                np.random.seed(seed % (1 << 32))
                image, label = self.dataset[index]
                if self.transform is not None:
                    image, label = self.transform(image, label)
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
        label = patch_sample(label, self.patch_p, seed)
        return image, label, seed


def patch_sample(label: Any, p: float, seed: int) -> Any:
    """The item's patch-sampling mask, drawn from its own seed."""
    if p >= 1.0:
        return label
    return apply_patch_sampling(label, p, torch.Generator().manual_seed(seed ^ 0x5A5A5A5A))


def collate_seeded(items: Sequence[tuple[torch.Tensor, Any, int]]):
    """``collate_pad`` of (image, label) plus the items' seeds."""
    images, labels = collate_pad([(im, lab) for im, lab, _ in items])
    return images, labels, torch.tensor([s for _, _, s in items], dtype=torch.int64)


class GlobalBatchSampler:
    """Yields this rank's micro-batches ``[(index, seed), ...]`` for steps ``start .. total-1``.

    Each step's global batch of ``batch_size`` items is split into ``world_size`` contiguous
    rank slices, each into ``accumulate`` micro-batches. Epochs drop the last partial batch.
    """

    def __init__(self, num_items: int, batch_size: int, seed: int, *, start_step: int = 0, total_steps: int,
                 rank: int = 0, world_size: int = 1, accumulate: int = 1) -> None:
        if num_items < batch_size:
            raise ValueError(f"data.batch_size {batch_size} is larger than the training set ({num_items} items)")
        if batch_size % (world_size * accumulate):
            raise ValueError(f"data.batch_size {batch_size} (global) is not divisible by world size {world_size}"
                             f" × train.accumulate {accumulate}")
        self.n, self.batch, self.seed = num_items, batch_size, seed
        self.start, self.total = start_step, total_steps
        self.rank, self.world, self.accumulate = rank, world_size, accumulate
        self.micro = batch_size // (world_size * accumulate)
        self.steps_per_epoch = num_items // batch_size
        self._perm: tuple[int, torch.Tensor] | None = None

    def __len__(self) -> int:
        return max(0, self.total - self.start) * self.accumulate

    def permutation(self, epoch: int) -> torch.Tensor:
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(item_seed(self.seed, epoch, -1, "perm"))
            self._perm = (epoch, torch.randperm(self.n, generator=g))
        return self._perm[1]

    def global_batch(self, step: int) -> list[tuple[int, int]]:
        epoch, k = divmod(step, self.steps_per_epoch)
        perm = self.permutation(epoch)
        pos = range(k * self.batch, (k + 1) * self.batch)
        return [(int(perm[p]), item_seed(self.seed, epoch, p)) for p in pos]

    def step_micro_batches(self, step: int) -> list[list[tuple[int, int]]]:
        g = self.global_batch(step)
        per_rank = self.batch // self.world
        mine = g[self.rank * per_rank:(self.rank + 1) * per_rank]
        return [mine[m * self.micro:(m + 1) * self.micro] for m in range(self.accumulate)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start, self.total):
            yield from self.step_micro_batches(step)


def flipped(seed: int) -> bool:
    """The flip an item with this seed gets when ``flip`` is its only random transform: the first
    draw of a generator seeded as :class:`SeededItems` seeds one, so cached and uncached runs agree."""
    return torch.rand((), generator=torch.Generator().manual_seed(seed)).item() < FLIP_P


def build_datasets(cfg: RunConfig, train_set: Any = None, val_set: Any = None) -> tuple[Any, Any]:
    """The training and validation sets: those given, else built as ``cfg.data`` names them."""
    d = cfg.data
    if train_set is None or (val_set is None and d.val_split):
        if d.root is None:
            raise ConfigError("data.root is not set (the dataset's folder)")
        if train_set is None:
            train_set = _build(d, d.train_split)
        if val_set is None and d.val_split:
            val_set = _build(d, d.val_split, d.val_dataset, d.val_root)
    if d.max_items:
        train_set = First(train_set, d.max_items)
        val_set = First(val_set, d.max_items) if val_set is not None else None
    return train_set, val_set


def _build(d: DataConfig, split: str, name: str | None = None, root: str | None = None) -> Any:
    try:
        return build_dataset(name or d.dataset, root or d.root, split, skip_bad=d.skip_bad, **d.options)
    except KeyError as e:
        raise ConfigError(f"data.dataset: {e.args[0] if e.args else e}") from None
    except TypeError as e:
        raise ConfigError(f"data.options for {d.dataset}: {e}") from None


def class_weights(cfg: RunConfig, dataset: Any, classes: int | dict, say: Callable[[str], None]
                  ) -> torch.Tensor | None:
    """``train.class_weights``: None, the dataset's median-frequency weights, or the listed numbers."""
    cw = cfg.train.class_weights
    if cw is None:
        return None
    if isinstance(classes, dict):
        raise ConfigError("train.class_weights is not supported for multi-head datasets")
    if cw == "median-frequency":
        w = median_frequency_weights(dataset, classes)
        say("median-frequency class weights: " + " ".join(f"{x:.4g}" for x in w.tolist()))
        return w
    if len(cw) != classes or any(not isinstance(x, (int, float)) or x < 0 for x in cw):
        raise ConfigError(f"train.class_weights needs {classes} non-negative numbers, got {cw}")
    return torch.tensor([float(x) for x in cw])


class Shard(Sampler):
    """Rank ``r`` of ``W`` evaluates items r, r+W, ... (no padding, so nothing is counted twice)."""

    def __init__(self, n: int, rank: int, world: int) -> None:
        self.idx = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.idx)

    def __len__(self) -> int:
        return len(self.idx)


def worker_init(worker_id: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle (one notice)
    s = torch.initial_seed() % (1 << 32)
    random.seed(s)
    np.random.seed(s)


def loader_steps(cfg: RunConfig, dataset: Any, pre: Preprocessing, sampler: GlobalBatchSampler,
                 pin_memory: bool) -> Iterator[list]:
    """Per step from ``sampler.start``, the ``accumulate`` micro-batches (images, None, labels, H×W)
    read by a DataLoader (transforms and patch sampling seeded per item)."""
    t, d = cfg.train, cfg.data
    g = torch.Generator().manual_seed(t.seed)
    loader = DataLoader(SeededItems(dataset, build_transform(d, pre, train=True), t.patch_p),
                        batch_sampler=sampler, num_workers=d.workers, collate_fn=collate_seeded,
                        pin_memory=pin_memory, generator=g, worker_init_fn=worker_init if d.workers else None)
    it = iter(loader)
    for _ in range(sampler.start, sampler.total):
        step = []
        for _ in range(t.accumulate):
            try:
                images, labels, _seeds = next(it)
            except FcnsegError as e:  # raised in a worker: torch wraps the message in its traceback
                raise unwrap_worker_error(e) from None
            step.append((images, None, labels, tuple(images.shape[-2:])))
        yield step
