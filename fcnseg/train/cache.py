"""The frozen-trunk feature cache (``train.cache_features``) and the store that shares caches.

A :class:`FeatureCache` holds the outputs of a frozen, deterministic backbone prefix for every item;
the net resumes after the prefix through ``model.forward_features``. A :class:`FeatureStore` is
owned by its caller (one training run, or ``fcnseg reproduce``'s whole study, whose runs train many
heads on one frozen trunk) and hands a cache it holds to any later model that can use it.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fcnseg.config import RunConfig
from fcnseg.data.transforms import RandomHorizontalFlip
from fcnseg.models import FCN
from fcnseg.models.checkpoint import state_checksum
from fcnseg.train.data import Wrapper, build_transform, cacheable, flipped, patch_sample

__all__ = ["FeatureCache", "FeatureStore", "CachedItems", "cacheable_prefix", "training_cache"]


def cacheable_prefix(model: FCN, frozen: list[str]) -> list[str]:
    """Leading backbone stages without trainable parameters whose output is deterministic
    (a random layer — dropout, batch norm in training mode — only in a stage frozen in eval mode)."""
    prefix = []
    for name, stage in model.backbone.stages.items():
        if any(p.requires_grad for p in stage.parameters()):
            break
        random_layer = any(m.training and (isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0
                                           or isinstance(m, nn.modules.batchnorm._BatchNorm))
                           for m in stage.modules())
        if random_layer and name not in frozen:
            break
        prefix.append(name)
    return prefix


def training_cache(cfg: RunConfig, model: FCN, frozen: list[str], dataset: Any, device: torch.device,
                   store: FeatureStore, micro: int, say: Callable[[str], None]) -> FeatureCache | None:
    """The training split's cache for ``train.cache_features``, or None (and why) where it cannot serve."""
    d = cfg.data
    prefix = cacheable_prefix(model, frozen)
    if not prefix:
        say("train.cache_features: no frozen, deterministic backbone prefix (set train.freeze_backbone); "
            "not caching")
        return None
    if not cacheable(d):
        say("train.cache_features: the training transforms are random (scale_range/crop/jitter); not caching")
        return None
    t0 = time.perf_counter()
    cache = store.get(model, dataset, prefix, device, build_transform(d, model.preprocessing, True, flip=False),
                      mirror=bool(d.flip))
    if not cache.uniform() and micro > 1:
        say("train.cache_features: images differ in size and micro-batches hold several; not caching")
        return None
    say(f"cached {'/'.join(cache.taps)} features of {len(dataset)} images{' and their mirrors' if cache.flip else ''} "
        f"({cache.nbytes / 2**20:.1f} MiB, {time.perf_counter() - t0:.1f}s)")
    return cache


class FeatureCache:
    """Outputs of the frozen trunk prefix for every item, computed once.

    It holds the frozen prefix's taps at stride ≥ 8 plus its last stage output, so
    ``model.forward_features(features, size)`` resumes the backbone right after the prefix. Needs
    deterministic transforms apart from a random flip: with ``mirror`` it also holds every mirrored
    image's features, and :meth:`batch` picks one of the two by the item's seed (:func:`flipped`).
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
                feats = bb(model.preprocessing(image[None].to(device)), set(self.taps))  # the prefix only
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

    def scoring_items(self, dataset: Any) -> CachedItems:
        """The cached items of ``dataset`` as ``evaluate`` takes them: (image giving the size, label, features)."""
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


class FeatureStore:
    """The last few :class:`FeatureCache` s a caller built, reused while they fit.

    The caller owns it: a training run makes its own (its training and validation splits), ``fcnseg
    reproduce`` one per study and hands it to every ``train`` / ``score`` call, so its runs compute a
    frozen trunk's features once.
    """

    def __init__(self, size: int = 2) -> None:
        self.size = size  # a training split and its validation split
        self.entries: list[tuple[tuple, dict[str, str], FeatureCache]] = []

    def get(self, model: FCN, dataset: Any, frozen: list[str], device: torch.device, transform=None,
            mirror: bool = False) -> FeatureCache:
        """As the :class:`FeatureCache` constructor, but a held cache serves any later model whose
        frozen stages have the same weights (checksummed) and whose taps it holds, on the same data
        (root, split, length) and transform; a run that flips adds the mirrors to it once."""
        sums = {n: state_checksum(model.backbone.stages[n].state_dict()) for n in frozen}
        key = _data_key(model, dataset, transform, device)
        needed = FeatureCache.needed_taps(model, frozen)
        for i, (old_key, old_sums, cache) in enumerate(self.entries):
            if key is not None and old_key == key and all(old_sums.get(n) == c for n, c in sums.items()) \
                    and set(needed) <= set(cache.taps):
                self.entries.append(self.entries.pop(i))  # most recently used last
                cache.needed = needed
                if mirror:
                    cache.add_mirrors(model, dataset, device, transform)
                else:
                    cache.flip = False
                return cache
        if key is not None:  # free the oldest before building a new one
            del self.entries[:max(0, len(self.entries) - self.size + 1)]
        cache = FeatureCache(model, dataset, frozen, device, transform, mirror)
        if key is not None:
            self.entries.append((key, sums, cache))
        return cache


def _data_key(model: FCN, dataset: Any, transform, device: torch.device) -> tuple | None:
    """What identifies the cached data (None for a dataset without root and split: never reused)."""
    root, split = getattr(dataset, "root", None), getattr(dataset, "split", None)
    if root is None or split is None:
        return None
    return str(root), split, len(dataset), repr(transform), str(device), repr(model.preprocessing)


class CachedItems(Wrapper):
    """A :class:`FeatureCache` of ``dataset`` as items for :func:`fcnseg.evaluate.scoring.evaluate`:
    ``{"label": ..., "features": ..., "mirrored": ...}`` (mirrored when the cache holds mirrors) in place of
    ``(image, label)``, so scoring resumes the net after the frozen prefix at the label's size. Other
    attributes (classes, ignore_index, ...) are the dataset's."""

    def __init__(self, cache: FeatureCache, dataset: Any) -> None:
        super().__init__(dataset)
        self.cache = cache

    def __len__(self) -> int:
        return len(self.cache.items)

    def __getitem__(self, i: int):
        feats, label, _ = self.cache.items[i]
        item = {"label": label, "features": {t: feats[t] for t in self.cache.needed}}
        if self.cache.mirrors is not None:
            item["mirrored"] = {t: self.cache.mirrors[i][0][t] for t in self.cache.needed}
        return item
