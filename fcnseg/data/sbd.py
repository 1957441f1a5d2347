"""SBD (Hariharan et al. 2011), class boundaries release.

``root`` is ``benchmark_RELEASE/dataset`` (``benchmark_RELEASE`` also works): ``img/<id>.jpg``,
``cls/<id>.mat`` (MATLAB v5, struct ``GTcls`` with field ``Segmentation``, uint8 0–20, no void) and
``train.txt``/``val.txt`` id lists. Same 21 classes and palette as VOC.
"""
from __future__ import annotations

import numpy as np
import torch

from fcnseg.data.base import DatasetInfo, Sample, SegDataset, register
from fcnseg.data.io import apply_lut, image_to_tensor, lines_to_ids, read_mat, read_rgb
from fcnseg.data.voc import VOC_CLASSES, VOC_PALETTE

__all__ = ["SBD"]

_LUT = np.full(256, -1, dtype=np.int64)
_LUT[:21] = np.arange(21)
_LUT[255] = 255


@register(DatasetInfo("sbd", tuple(VOC_CLASSES), ("train", "val"),
                      description="SBD (VOC classes, .mat labels)"))
class SBD(SegDataset):
    """SBD; item = (float32 (3, H, W) RGB 0–255, int64 (H, W) 0–20)."""

    name = "sbd"
    classes = VOC_CLASSES
    palette = VOC_PALETTE

    def _index(self) -> list[Sample]:
        if not (self.root / "cls").is_dir() and (self.root / "dataset" / "cls").is_dir():
            self.root = self.root / "dataset"
        lst = self._split_list([self.root / f"{self.split}.txt"])
        return [Sample(i, {"image": self.root / "img" / f"{i}.jpg", "label": self.root / "cls" / f"{i}.mat"},
                       str(lst)) for i in lines_to_ids(lst, self.name)]

    def _load_image(self, s: Sample) -> torch.Tensor:
        return image_to_tensor(read_rgb(s.files["image"], self.name))

    def _load_label(self, s: Sample) -> torch.Tensor:
        path = s.files["label"]
        return apply_lut(read_mat(path, self.name, "GTcls", "Segmentation"), _LUT, self.name, path)
