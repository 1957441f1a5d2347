"""PASCAL VOC 2011/2012 segmentation.

``root`` is ``VOCdevkit/VOC2012`` (or VOC2011); ``VOCdevkit`` or its parent also work (the newest
``VOC20xx`` with ``JPEGImages`` is used). Images ``JPEGImages/<id>.jpg``; labels
``SegmentationClass/<id>.png`` palette PNGs whose indices are the labels (0 background, 1–20, 255 void).
Splits: any ``ImageSets/Segmentation/<split>.txt`` (train, val, trainval), plus ``seg11valid``
(736 VOC2011 val ids not in SBD train; shipped, a copy under ``ImageSets/Segmentation`` wins).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fcnseg.data.base import DatasetInfo, Sample, SegDataset, register
from fcnseg.data.io import apply_lut, image_to_tensor, lines_to_ids, package_list, read_index_png, read_names, read_rgb
from fcnseg.data.palette import voc_colormap

__all__ = ["VOC", "VOC_CLASSES", "VOC_PALETTE", "voc_colormap", "find_voc_root"]

VOC_CLASSES = read_names(package_list("pascal_classes.txt"))
VOC_PALETTE = voc_colormap(len(VOC_CLASSES))
_LUT = np.full(256, -1, dtype=np.int64)
_LUT[:21] = np.arange(21)
_LUT[255] = 255


def find_voc_root(root: Path, prefer: str | None = None) -> Path:
    """The folder holding ``JPEGImages`` among ``root``, ``root/VOC20xx``, ``root/VOCdevkit/VOC20xx``.

    ``prefer`` (e.g. ``"VOC2010"``) is tried first, then the newest year.
    """
    root = Path(root)
    if (root / "JPEGImages").is_dir():
        return root
    for base in (root, root / "VOCdevkit"):
        if base.is_dir():
            years = sorted(base.glob("VOC20*"), key=lambda p: (p.name != prefer, [-ord(c) for c in p.name]))
            for year in years:
                if (year / "JPEGImages").is_dir():
                    return year
    return root


def load_voc_label(path: Path, who: str) -> torch.Tensor:
    """Palette/grey PNG of indices 0–20 and 255 -> int64 (H, W)."""
    return apply_lut(read_index_png(path, who), _LUT, who, path)


@register(DatasetInfo("voc", tuple(VOC_CLASSES), ("train", "val", "trainval", "seg11valid"),
                      description="PASCAL VOC 2011/2012 segmentation, 21 classes"))
class VOC(SegDataset):
    """PASCAL VOC; item = (float32 (3, H, W) RGB 0–255, int64 (H, W) 0–20 / 255)."""

    name = "voc"
    classes = VOC_CLASSES
    palette = VOC_PALETTE

    def _index(self) -> list[Sample]:
        self.root = find_voc_root(self.root)
        seg = self.root / "ImageSets" / "Segmentation"
        cands = [seg / f"{self.split}.txt"]
        if self.split == "seg11valid":
            cands.append(package_list("seg11valid.txt"))
        lst = self._split_list(cands)
        return [Sample(i, {"image": self.root / "JPEGImages" / f"{i}.jpg",
                           "label": self.root / "SegmentationClass" / f"{i}.png"}, str(lst))
                for i in lines_to_ids(lst, self.name)]

    def _load_image(self, s: Sample) -> torch.Tensor:
        return image_to_tensor(read_rgb(s.files["image"], self.name))

    def _load_label(self, s: Sample) -> torch.Tensor:
        return load_voc_label(s.files["label"], self.name)
