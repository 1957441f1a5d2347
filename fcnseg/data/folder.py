"""Generic ``images/`` + ``masks/`` folder dataset.

``root/images/<stem>.{jpg,jpeg,png,bmp,tif,tiff}``, ``root/masks/<stem>.png`` (single-channel or palette
PNG whose values are the labels: 0..N-1, 255 void), ``root/classes.txt`` (one name per line).
Split ``root/<split>.txt`` lists stems; ``split=None`` or ``"all"`` takes every image, and a named split
without a list also takes every image (with a warning).
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from fcnseg.data.base import DatasetInfo, Sample, SegDataset, register
from fcnseg.data.io import DatasetError, apply_lut, image_to_tensor, lines_to_ids, read_index_png, read_names, read_rgb
from fcnseg.data.palette import voc_colormap

__all__ = ["FolderDataset"]

_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


@register(DatasetInfo("folder", (), ("all", "train", "val"),
                      description="images/ + masks/ + classes.txt (classes read from the data)"))
class FolderDataset(SegDataset):
    """Folder pair; item = (float32 (3, H, W) RGB 0–255, int64 (H, W) 0..N-1 / 255)."""

    name = "folder"

    def __init__(self, root, split: str | None = "all", **kw) -> None:
        super().__init__(root, split or "all", **kw)

    def _index(self) -> list[Sample]:
        cls_file = self.root / "classes.txt"
        if not cls_file.is_file():
            raise DatasetError(f"{self.name}: missing class list {cls_file}")
        self.classes = read_names(cls_file, self.name)
        if not 0 < len(self.classes) <= 255:
            raise DatasetError(f"{self.name}: cannot read class list {cls_file}: needs 1-255 names, "
                               f"got {len(self.classes)}")
        self.palette = voc_colormap(len(self.classes))
        self._lut = np.full(256, -1, dtype=np.int64)
        self._lut[: len(self.classes)] = np.arange(len(self.classes))
        self._lut[255] = 255
        img_dir, mask_dir = self.root / "images", self.root / "masks"
        if not img_dir.is_dir():
            raise DatasetError(f"{self.name}: missing folder {img_dir}")
        lst = self.root / f"{self.split}.txt"
        if lst.is_file():
            found = {p.stem: p for p in img_dir.iterdir() if p.suffix.lower() in _EXTS}
            stems, source = lines_to_ids(lst, self.name), str(lst)
            # an unlisted stem points at a missing .png, reported by the base class' file check
            images = [found.get(st, img_dir / f"{st}.png") for st in stems]
        else:
            if self.split != "all":
                warnings.warn(f"{self.name}: no split list {lst}; using every image of {img_dir}", stacklevel=3)
            images, source = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in _EXTS), str(img_dir)
        return [Sample(p.stem, {"image": p, "label": mask_dir / f"{p.stem}.png"}, source) for p in images]

    def _load_image(self, s: Sample) -> torch.Tensor:
        return image_to_tensor(read_rgb(s.files["image"], self.name))

    def _load_label(self, s: Sample) -> torch.Tensor:
        path = s.files["label"]
        return apply_lut(read_index_png(path, self.name), self._lut, self.name, path)
