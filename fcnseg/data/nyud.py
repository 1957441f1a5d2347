"""NYUDv2, 40-class task (Gupta et al. 2013 layout).

``root``: ``data/images/img_<id>.png`` (RGB), ``data/depth/img_<id>.png`` (uint16 depth in mm),
``data/hha/img_<id>.png`` (HHA as 3 channels), ``segmentation/img_<id>.mat`` with matrix
``segmentation`` (0 void -> 255, 1..40 -> 0..39). Splits ``train`` (381), ``val`` (414), ``trainval``,
``test`` (654): shipped lists; a ``<split>.txt`` in ``root`` wins.

Option ``modality`` sets the image channels (all float32, unnormalised):

- ``"color"``: 3 (R, G, B) 0–255.
- ``"hha"``: 3, the HHA PNG's channels in file order, 0–255.
- ``"depth"``: 1, log depth (below).
- ``"rgbd"``: 4, R, G, B + log depth (early fusion).
- ``"color+hha"``: 6, R, G, B + HHA (for late fusion: split channels 0:3 / 3:6).

Log depth = ``ln(depth in mm)``: 0 ≤ value ≤ ln(65535) ≈ 11.09, about 6.2–9.2 for Kinect's 0.5–10 m;
pixels without depth (0) are set to :data:`NYUD_LOG_DEPTH_MEAN` = 7.844 (the reference mean) so they
become 0 after mean subtraction. Reference means are in :data:`NYUD_MEANS` (BGR, like Caffe);
:func:`nyud_channel_means` gives them in a dataset item's channel order.
"""
from __future__ import annotations

import numpy as np
import torch

from fcnseg.data.base import DatasetInfo, Sample, SegDataset, register
from fcnseg.data.io import (
    DatasetError,
    apply_lut,
    image_to_tensor,
    lines_to_ids,
    package_list,
    read_gray16,
    read_mat,
    read_names,
    read_rgb,
)
from fcnseg.data.palette import voc_colormap
from fcnseg.errors import ConfigError

__all__ = ["NYUD", "NYUD_CLASSES", "NYUD_MEANS", "NYUD_LOG_DEPTH_MEAN", "NYUD_MODALITIES", "nyud_channel_means"]

NYUD_CLASSES = read_names(package_list("nyud", "classes.txt"))
NYUD_LOG_DEPTH_MEAN = 7.844
# Reference (Caffe) means: colour in BGR order; HHA in its PNG's channel order (the reference does not reorder it).
NYUD_MEANS = {"color": (116.190, 97.203, 92.318), "hha": (132.431, 94.076, 118.477),
              "log_depth": NYUD_LOG_DEPTH_MEAN}
NYUD_MODALITIES = {"color": 3, "hha": 3, "depth": 1, "rgbd": 4, "color+hha": 6}
_PARTS = {"color": ("color",), "hha": ("hha",), "depth": ("depth",), "rgbd": ("color", "depth"),
          "color+hha": ("color", "hha")}
_FOLDERS = {"color": "images", "hha": "hha", "depth": "depth"}
_LUT = np.array([255] + list(range(40)), dtype=np.int64)  # values 0..40


def nyud_channel_means(modality: str, bgr: bool = False) -> tuple[float, ...]:
    """Per-channel reference means for ``modality``, in the item's channel order.

    ``bgr=True`` reverses each 3-channel group (for a model that flips RGB to BGR first).
    """
    out: list[float] = []
    for part in _PARTS[_check_modality(modality)]:
        if part == "depth":
            out.append(NYUD_LOG_DEPTH_MEAN)
        else:
            m = NYUD_MEANS[part]
            # colour means are BGR (Caffe's order); the reference subtracts the HHA mean in the
            # PNG's own channel order, which an item keeps
            out.extend(m if part == "hha" or bgr else m[::-1])
    return tuple(out)


def _check_modality(modality: str) -> str:
    if modality not in NYUD_MODALITIES:
        raise ConfigError(f"nyud: modality must be one of {list(NYUD_MODALITIES)}, got {modality!r}")
    return modality


def log_depth(depth_mm: np.ndarray) -> np.ndarray:
    """``ln(depth)`` for depth > 0, :data:`NYUD_LOG_DEPTH_MEAN` where depth is 0 (missing)."""
    out = np.full(depth_mm.shape, NYUD_LOG_DEPTH_MEAN, dtype=np.float32)
    valid = depth_mm > 0
    out[valid] = np.log(depth_mm[valid])
    return out


@register(DatasetInfo("nyud", tuple(NYUD_CLASSES), ("train", "val", "trainval", "test"),
                      description="NYUDv2 40 classes; modality color|hha|depth|rgbd|color+hha"))
class NYUD(SegDataset):
    """NYUDv2-40; item = (float32 (C, H, W) per ``modality``, int64 (H, W) 0–39 / 255)."""

    name = "nyud"
    classes = NYUD_CLASSES
    palette = voc_colormap(len(NYUD_CLASSES))

    def __init__(self, root, split, modality: str = "color", **kw) -> None:
        self.modality = _check_modality(modality)
        self.channels = NYUD_MODALITIES[modality]
        super().__init__(root, split, **kw)

    def _ids(self) -> tuple[list[str], str]:
        own = self.root / f"{self.split}.txt"
        if self.split == "trainval" and not own.is_file():
            ids = [i for s in ("train", "val") for i in lines_to_ids(self._list(s), self.name)]
            return ids, "shipped train.txt + val.txt"
        lst = self._list(self.split)
        return lines_to_ids(lst, self.name), str(lst)

    def _list(self, split: str):
        return self._split_list([self.root / f"{split}.txt", package_list("nyud", f"{split}.txt")])

    def _index(self) -> list[Sample]:
        ids, source = self._ids()
        out = []
        for i in ids:
            stem = i if i.startswith("img_") else f"img_{i}"
            files = {p: self.root / "data" / _FOLDERS[p] / f"{stem}.png" for p in _PARTS[self.modality]}
            files["label"] = self.root / "segmentation" / f"{stem}.mat"
            out.append(Sample(i, files, source))
        return out

    def _load_image(self, s: Sample) -> torch.Tensor:
        chans = []
        for part in _PARTS[self.modality]:
            path = s.files[part]
            if part == "depth":
                chans.append(log_depth(read_gray16(path, self.name, "depth")))
            else:
                chans.append(read_rgb(path, self.name, "HHA" if part == "hha" else "image",
                                      require_rgb=part == "hha"))
        shapes = {c.shape[:2] for c in chans}
        if len(shapes) > 1:
            raise DatasetError(f"{self.name}: image files of {s.id} differ in size: "
                               + ", ".join(f"{s.files[p]} {c.shape[0]}x{c.shape[1]}"
                                           for p, c in zip(_PARTS[self.modality], chans)))
        return torch.cat([image_to_tensor(c) for c in chans], dim=0)

    def _load_label(self, s: Sample) -> torch.Tensor:
        path = s.files["label"]
        return apply_lut(read_mat(path, self.name, "segmentation"), _LUT, self.name, path)
