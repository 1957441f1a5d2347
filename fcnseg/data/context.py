"""PASCAL-Context (Mottaghi et al. 2014), 59-class task.

``root`` is ``VOCdevkit/VOC2010`` (``VOCdevkit`` or its parent also work): ``JPEGImages/<id>.jpg``,
splits ``ImageSets/Main/{train,val}.txt``. The context annotations, ``trainval/<id>.mat`` with matrix
``LabelMap`` (indices into the full label list ``labels.txt``, lines ``index: name``), live in a context
folder: ``context_dir`` when given, else ``VOC2010/`` itself (unpacked inside), else a folder apart from
VOCdevkit as the reference keeps it (``data/pascal-context`` beside ``data/pascal/VOC2010``): the first of
``pascal-context``, ``PASCAL-Context``, ``context`` beside ``VOC2010``, beside its parent or beside that
one's parent (or that folder itself) holding ``trainval/``. ``labels.txt`` is read from the context folder,
``root`` or its parent when present, else the shipped copy (``lists/context/classes-400.txt``, 459 labels).

Labels: the 59 classes of ``classes-59.txt`` -> 1..59 (matched by name; ``diningtable``, ``clothes``,
``bedcloth`` are the full list's ``table``, ``cloth``, ``bedclothes``), everything else (and 0) -> 0
background. ``ignore_background=True`` turns 0 into 255. ``.classes`` always has 60 entries
(index 0 = background), so labels keep their indices either way.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fcnseg.data.base import DatasetInfo, Sample, SegDataset, register
from fcnseg.data.io import (
    DatasetError,
    apply_lut,
    image_to_tensor,
    lines_to_ids,
    package_list,
    read_indexed_names,
    read_mat,
    read_rgb,
)
from fcnseg.data.palette import voc_colormap
from fcnseg.data.voc import find_voc_root

__all__ = ["PascalContext", "CONTEXT_CLASSES", "CONTEXT_ALIASES", "context_lut", "find_context_dir"]

_c59 = read_indexed_names(package_list("context", "classes-59.txt"))
CONTEXT_CLASSES = [_c59[i] for i in range(60)]
# 59-class names spelled differently in the full label list.
CONTEXT_ALIASES = {"diningtable": "table", "clothes": "cloth", "bedcloth": "bedclothes"}


def context_lut(full: dict[int, str], ignore_background: bool = False) -> np.ndarray:
    """Lookup table full-label index (0..max) -> 59-class label (0 background / 255)."""
    by_name = {name: idx for idx, name in full.items()}
    bg = 255 if ignore_background else 0
    lut = np.full(max(full) + 1, bg, dtype=np.int64)
    for k, name in enumerate(CONTEXT_CLASSES[1:], 1):
        key = CONTEXT_ALIASES.get(name, name)
        if key not in by_name:
            raise DatasetError(f"pascal-context: class '{name}' not found in the full label list")
        lut[by_name[key]] = k
    return lut


@register(DatasetInfo("pascal-context", tuple(CONTEXT_CLASSES), ("train", "val"),
                      description="PASCAL-Context 59 classes + background"))
class PascalContext(SegDataset):
    """PASCAL-Context-59; item = (float32 (3, H, W) RGB 0–255, int64 (H, W) 0–59, or 1–59 / 255)."""

    name = "pascal-context"
    classes = CONTEXT_CLASSES
    palette = voc_colormap(len(CONTEXT_CLASSES))

    def __init__(self, root, split, ignore_background: bool = False, context_dir: str | Path | None = None,
                 **kw) -> None:
        self.ignore_background = ignore_background
        self.context_dir = None if context_dir is None else Path(context_dir)
        super().__init__(root, split, **kw)

    def _index(self) -> list[Sample]:
        given = Path(self.root)
        self.root = find_voc_root(self.root, prefer="VOC2010")
        self.context_dir = find_context_dir(self.root, given, self.context_dir)
        labels = next((p for p in (self.context_dir / "labels.txt", self.root / "labels.txt",
                                   self.root.parent / "labels.txt") if p.is_file()),
                      package_list("context", "classes-400.txt"))
        self.labels_file = labels
        self._lut = context_lut(read_indexed_names(labels, self.name), self.ignore_background)
        lst = self._split_list([self.root / "ImageSets" / "Main" / f"{self.split}.txt"])
        return [Sample(i, {"image": self.root / "JPEGImages" / f"{i}.jpg",
                           "label": self.context_dir / "trainval" / f"{i}.mat"}, str(lst))
                for i in lines_to_ids(lst, self.name)]

    def _load_image(self, s: Sample) -> torch.Tensor:
        return image_to_tensor(read_rgb(s.files["image"], self.name))

    def _load_label(self, s: Sample) -> torch.Tensor:
        path = s.files["label"]
        return apply_lut(read_mat(path, self.name, "LabelMap"), self._lut, self.name, path)


_CONTEXT_NAMES = ("pascal-context", "PASCAL-Context", "context")


def find_context_dir(voc_root: Path, given: Path, context_dir: Path | None = None) -> Path:
    """The folder holding the context ``trainval/`` (see the module docstring), or a DatasetError
    naming the places looked at."""
    if context_dir is not None:
        if not (context_dir / "trainval").is_dir():
            raise DatasetError(f"pascal-context: context_dir {context_dir} has no trainval/ folder")
        return context_dir
    tried = [voc_root]
    for base in dict.fromkeys((given, voc_root.parent, voc_root.parent.parent, voc_root.parent.parent.parent)):
        tried += [base / n for n in _CONTEXT_NAMES]
    for folder in tried:
        if (folder / "trainval").is_dir():
            return folder
    raise DatasetError(f"pascal-context: no trainval/ folder of LabelMap .mat files in {voc_root} nor in a "
                       f"context folder apart from it ({', '.join(str(t) for t in tried[1:4])}, ...); set "
                       "data.options.context_dir")


def _check_shipped() -> None:  # fail loudly at import if the shipped lists disagree
    context_lut(read_indexed_names(package_list("context", "classes-400.txt")))


_check_shipped()
