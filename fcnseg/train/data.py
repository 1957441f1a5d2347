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
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from fcnseg.config import DataConfig
from fcnseg.models import FCN
from fcnseg.models.preprocessing import Preprocessing
from fcnseg.errors import unwrap_worker_error
from fcnseg.train.losses import apply_patch_sampling

__all__ = ["unwrap_worker_error", "build_transform", "cacheable", "First", "Transformed", "GlobalBatchSampler",
           "SeededItems", "collate_seeded", "FeatureCache", "CachedItems", "item_seed", "fill_value"]


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
    from fcnseg.data import transforms as T

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


class _Wrapper(Dataset):
    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __getattr__(self, name: str) -> Any:  # classes, num_classes, palette, ... of the wrapped set
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


class First(_Wrapper):
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


class Transformed(_Wrapper):
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
    from fcnseg.data import collate_pad

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


class FeatureCache:
    """Outputs of the frozen trunk prefix for every item, computed once (``train.cache_features``).

    It holds the frozen prefix's taps at stride ≥ 8 plus its last stage output, so
    ``model.forward_features(features, size)`` resumes the backbone right after the prefix. Needs deterministic
    transforms apart from a random flip: with ``mirror`` it also holds every mirrored image's
    features, and :meth:`batch` picks one of the two by the item's seed (:func:`flipped`).
    ``needed`` is what the current model reads; ``flip`` whether this run flips.
    """

    MIN_STRIDE = 8  # finer taps (pool1, pool2) are large and no FCN head reads them

    def __init__(self, model: FCN, dataset: Any, frozen: list[str], device: torch.device, transform=None,
                 mirror: bool = False) -> None:
        bb = model.backbone
        names = list(bb.stages.keys())
        last = max(frozen, key=names.index)
        coarse = {t.name for t in bb.taps if t.name in frozen and t.stride >= self.MIN_STRIDE}
        self.taps = sorted(coarse | {t for t in model.tap_names if t in frozen} | {last}, key=names.index)
        self.needed = self.needed_taps(model, frozen)
        self.items = self._compute(model, dataset, device, transform, mirrored=False)
        self.mirrors: list | None = None
        self.flip = False
        if mirror:
            self.add_mirrors(model, dataset, device, transform)

    def _compute(self, model: FCN, dataset: Any, device: torch.device, transform, mirrored: bool) -> list:
        from fcnseg.data.transforms import RandomHorizontalFlip

        mirror = RandomHorizontalFlip(p=1.0)
        bb = model.backbone
        items = []
        was = bb.training
        bb.eval()
        with torch.no_grad():
            for i in range(len(dataset)):
                image, label = dataset[i]
                if transform is not None:
                    image, label = transform(image, label)
                if mirrored:
                    image, label = mirror(image, label)
                x = model.preprocessing(image[None].to(device))
                feats = bb(x, set(self.taps))
                items.append(({k: v[0].cpu() for k, v in feats.items()}, label, tuple(image.shape[-2:])))
        bb.train(was)
        return items

    def add_mirrors(self, model: FCN, dataset: Any, device: torch.device, transform=None) -> None:
        """Compute the mirrored images' features too (once), and flip from now on."""
        if self.mirrors is None:
            self.mirrors = self._compute(model, dataset, device, transform, mirrored=True)
        self.flip = True

    @property
    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for f, _, _ in self.items + (self.mirrors or []) for v in f.values())

    @staticmethod
    def needed_taps(model: FCN, frozen: list[str]) -> list[str]:
        names = list(model.backbone.stages.keys())
        last = max(frozen, key=names.index)
        return sorted({t for t in model.tap_names if t in frozen} | {last}, key=names.index)

    _memo: list[tuple[tuple, dict[str, str], "FeatureCache"]] = []   # the last caches built in this process
    MEMO_SIZE = 2  # a training split and its validation split

    @classmethod
    def reuse_or_build(cls, model: FCN, dataset: Any, frozen: list[str], device: torch.device,
                       transform=None, mirror: bool = False) -> "FeatureCache":
        """As the constructor, but a study that trains many heads on one frozen trunk (``fcnseg
        reproduce``) computes the features once: a recent cache serves any later model whose
        frozen stages have the same weights (checksummed) and whose taps it holds, on the same
        data (root, split, length) and transform; a run that flips adds the mirrors to it once."""
        from fcnseg.models.checkpoint import state_checksum

        bb = model.backbone
        sums = {n: state_checksum(bb.stages[n].state_dict()) for n in frozen}
        root, split = getattr(dataset, "root", None), getattr(dataset, "split", None)
        key = None if root is None or split is None else (
            str(root), split, len(dataset), repr(transform), str(device), repr(model.preprocessing))
        needed = cls.needed_taps(model, frozen)
        for i, (old_key, old_sums, cache) in enumerate(cls._memo):
            if key is not None and old_key == key and all(old_sums.get(n) == c for n, c in sums.items()) \
                    and set(needed) <= set(cache.taps):
                cls._memo.append(cls._memo.pop(i))  # most recently used last
                cache.needed = needed
                if mirror:
                    cache.add_mirrors(model, dataset, device, transform)
                else:
                    cache.flip = False
                return cache
        if key is not None:  # free the oldest before building a new one
            del cls._memo[:max(0, len(cls._memo) - cls.MEMO_SIZE + 1)]
        cache = cls(model, dataset, frozen, device, transform, mirror)
        if key is not None:
            cls._memo.append((key, sums, cache))
        return cache

    def scoring_items(self, dataset: Any) -> "CachedItems":
        """The cached items of ``dataset`` as ``evaluate`` takes them: (size-only image, label, features)."""
        return CachedItems(self, dataset)

    def uniform(self) -> bool:
        return len({hw for _, _, hw in self.items}) == 1

    def batch(self, keys: list[tuple[int, int]], patch_p: float):
        """(None, features, labels, H×W) for the micro-batch ``[(index, seed), ...]``."""
        picked = [(self.mirrors if self.flip and flipped(s) else self.items)[i] for i, s in keys]
        feats = {t: torch.stack([f[t] for f, _, _ in picked]) for t in self.needed}
        labels = [patch_sample(lab, patch_p, s) for (_, lab, _), (_, s) in zip(picked, keys)]
        if isinstance(labels[0], dict):
            lab: Any = {k: torch.stack([lb[k] for lb in labels]) for k in labels[0]}
        else:
            lab = torch.stack(labels)
        return None, feats, lab, picked[0][2]


class CachedItems(_Wrapper):
    """A :class:`FeatureCache` of ``dataset`` as items for :func:`fcnseg.evaluate.scoring.evaluate`:
    a size-only image ``(0, H, W)``, the label, and ``{"features": ..., "mirrored": ...}`` (mirrored
    when the cache holds mirrors), so scoring resumes the net after the frozen prefix. Other
    attributes (classes, ignore_index, ...) are the dataset's."""

    def __init__(self, cache: FeatureCache, dataset: Any) -> None:
        super().__init__(dataset)
        self.cache = cache

    def __len__(self) -> int:
        return len(self.cache.items)

    def __getitem__(self, i: int):
        feats, label, (h, w) = self.cache.items[i]
        pick = {"features": {t: feats[t] for t in self.cache.needed}}
        if self.cache.mirrors is not None:
            pick["mirrored"] = {t: self.cache.mirrors[i][0][t] for t in self.cache.needed}
        return torch.empty(0, h, w), label, pick
