"""Base dataset class and the dataset registry."""
from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from fcnseg.argcheck import path_arg
from fcnseg.data.io import DatasetError
from fcnseg.errors import ConfigError

__all__ = ["IGNORE_INDEX", "Sample", "SegDataset", "DatasetInfo", "register", "build_dataset",
           "list_datasets", "dataset_info"]

IGNORE_INDEX = 255
Label = torch.Tensor | dict[str, torch.Tensor]
Transform = Callable[[torch.Tensor, Any], tuple[torch.Tensor, Any]]


@dataclass
class Sample:
    """One item: its id, the files it needs (kind -> path) and where it was listed (for messages)."""

    id: str
    files: dict[str, Path]
    source: str = ""


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a registered dataset (no data needed)."""

    name: str
    classes: tuple[str, ...]  # empty when read from the data (``folder``)
    splits: tuple[str, ...]
    channels: int = 3
    description: str = ""
    ignore_index: int = IGNORE_INDEX

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class SegDataset(Dataset):
    """Common behaviour: file checks, ``skip_bad``, size checks, ``transform``.

    Subclasses set ``name``/``classes``/``palette`` and implement :meth:`_index`, :meth:`_load_image`
    and :meth:`_load_label`.

    ``skip_bad``: missing files are found at construction (every listed file is ``stat``-ed) and those
    items dropped with a warning; files that exist but fail to decode (truncated PNG, .mat without the
    field, size mismatch, bad label values) are found lazily when first loaded: the item is warned
    about, remembered in ``.bad`` and replaced by the next good item. ``validate=True`` decodes every
    item at construction instead, so ``len`` already excludes them. Without ``skip_bad`` every such
    problem raises :class:`DatasetError` naming the file.
    """

    name = "base"
    classes: list[str] = []
    palette: np.ndarray = np.zeros((0, 3), np.uint8)
    ignore_index = IGNORE_INDEX

    def __init__(self, root: str | Path, split: str, transform: Transform | None = None,
                 skip_bad: bool = False, validate: bool = False) -> None:
        self.root = Path(root)
        self.split = split
        self.transform = transform
        self.skip_bad = skip_bad
        self.bad: set[str] = set()
        if not self.root.is_dir():
            raise DatasetError(f"{self.name}: root folder {self.root} "
                               f"{'is not a folder' if self.root.exists() else 'does not exist'}")
        samples = self._check_files(self._index())
        if validate:
            samples = self._validate(samples)
        if not samples:
            raise DatasetError(f"{self.name}: split '{split}' under {self.root} is empty")
        self.samples = samples

    # --- to implement -------------------------------------------------------------------------------
    def _index(self) -> list[Sample]:
        raise NotImplementedError

    def _load_image(self, s: Sample) -> torch.Tensor:
        raise NotImplementedError

    def _load_label(self, s: Sample) -> Label:
        raise NotImplementedError

    # --- public -------------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def ids(self) -> list[str]:
        return [s.id for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Label]:
        if not self.skip_bad:
            image, label = self.load(index)
        else:
            image, label = self._load_skipping(index)
        if self.transform is not None:
            image, label = self.transform(image, label)
        return image, label

    def load(self, index: int) -> tuple[torch.Tensor, Label]:
        """Image float32 (C, H, W) RGB 0–255 and label int64 (H, W) (void 255), untransformed."""
        s = self.samples[index]
        image = self._load_image(s)
        label = self._load_label(s)
        self._check_size(s, image, label)
        return image, label

    def load_label(self, index: int) -> Label:
        """Only the label of item ``index`` (cheap, e.g. for class statistics)."""
        return self._load_label(self.samples[index])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, n={len(self)})"

    # --- helpers ------------------------------------------------------------------------------------
    def _split_list(self, candidates: Sequence[Path]) -> Path:
        """First existing list file among ``candidates`` (root-provided before package-shipped)."""
        for p in candidates:
            if p.is_file():
                return p
        raise DatasetError(f"{self.name}: no list for split '{self.split}' (looked for "
                           f"{', '.join(str(p) for p in candidates)})")

    def _check_files(self, samples: list[Sample]) -> list[Sample]:
        kept = []
        for s in samples:
            missing = [(k, p) for k, p in s.files.items() if not p.is_file()]
            if not missing:
                kept.append(s)
                continue
            kind, path = missing[0]
            what = f"{kind} {path} is not a regular file" if path.exists() else f"missing {kind} file {path}"
            msg = f"{self.name}: {what}" + (f" (listed in {s.source})" if s.source else "")
            if not self.skip_bad:
                raise DatasetError(msg)
            warnings.warn(msg + "; item skipped", stacklevel=3)
        return kept

    def _validate(self, samples: list[Sample]) -> list[Sample]:
        kept = []
        for s in samples:
            try:
                self._check_size(s, self._load_image(s), self._load_label(s))
                kept.append(s)
            except DatasetError as e:
                if not self.skip_bad:
                    raise
                warnings.warn(f"{e}; item skipped", stacklevel=3)
        return kept

    def _load_skipping(self, index: int) -> tuple[torch.Tensor, Label]:
        n = len(self.samples)
        for k in range(n):
            i = (index + k) % n
            if self.samples[i].id in self.bad:
                continue
            try:
                return self.load(i)
            except DatasetError as e:
                self.bad.add(self.samples[i].id)
                warnings.warn(f"{e}; item skipped", stacklevel=3)
        raise DatasetError(f"{self.name}: every item of split '{self.split}' under {self.root} is bad")

    def _check_size(self, s: Sample, image: torch.Tensor, label: Label) -> None:
        labels = label if isinstance(label, dict) else {"label": label}
        for kind, lab in labels.items():
            if tuple(lab.shape) != tuple(image.shape[-2:]):
                lpath = s.files.get(kind, s.files.get("label", ""))
                raise DatasetError(
                    f"{self.name}: {kind} {lpath} is {lab.shape[0]}x{lab.shape[1]} (HxW) but image "
                    f"{next(iter(s.files.values()))} is {image.shape[-2]}x{image.shape[-1]}")


# --- registry ---------------------------------------------------------------------------------------
class UnknownDatasetError(ConfigError, KeyError):
    """A dataset name that is not registered (a ``KeyError`` too, for older callers)."""

    __str__ = Exception.__str__  # KeyError would quote the message


_REGISTRY: dict[str, tuple[type[SegDataset], DatasetInfo]] = {}


def register(info: DatasetInfo) -> Callable[[type[SegDataset]], type[SegDataset]]:
    """Class decorator: make a dataset buildable by ``info.name``."""

    def deco(cls: type[SegDataset]) -> type[SegDataset]:
        if info.name in _REGISTRY and _REGISTRY[info.name][0] is not cls:
            raise ValueError(f"dataset '{info.name}' is already registered")
        _REGISTRY[info.name] = (cls, info)
        cls.info = info
        return cls

    return deco


def _lookup(name: str) -> tuple[type[SegDataset], DatasetInfo]:
    key = name.lower().replace("_", "-")
    if key not in _REGISTRY:
        raise UnknownDatasetError(f"unknown dataset '{name}'; known: {', '.join(list_datasets())}")
    return _REGISTRY[key]


def build_dataset(name: str, root: str | Path, split: str | None, **opts: Any) -> SegDataset:
    """Build registered dataset ``name`` (see :func:`list_datasets`) on ``root`` for ``split``."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a dataset name (str), got {type(name).__name__}; known: {list_datasets()}")
    root = path_arg(root, "root")
    if split is not None and not isinstance(split, str):
        raise TypeError(f"split must be a str (or None where the dataset allows it), "
                        f"got {type(split).__name__} {split!r:.60}")
    cls, _ = _lookup(name)
    return cls(root, split, **opts)


def list_datasets() -> list[str]:
    """Names accepted by :func:`build_dataset`."""
    return sorted(_REGISTRY)


def dataset_info(name: str) -> DatasetInfo:
    """Static :class:`DatasetInfo` of a registered dataset."""
    return _lookup(name)[1]
