"""SIFT Flow (Liu et al. 2009): 33 semantic + 3 geometric classes, 256×256 images.

``root`` is ``SiftFlowDataset``: ``Images/<D>/<id>.jpg``, ``SemanticLabels/<D>/<id>.mat`` and
``GeoLabels/<D>/<id>.mat`` (``<D>`` = spatial_envelope_256x256_static_8outdoorcategories), each .mat
with matrix ``S``. Semantic 0 unlabeled -> 255, 1..33 -> 0..32; geometric 1..3 -> 0..2, -1/0 -> 255.
Splits ``trainval`` (2,486 ids) / ``test`` (200), shipped; a ``<split>.txt`` in ``root`` wins.

Label format (option ``task``): ``"both"`` (default) gives a dict
``{"semantic": int64 (H, W), "geometric": int64 (H, W)}``; ``"semantic"`` or ``"geometric"`` gives that
single int64 (H, W) tensor, and ``.classes`` follows it. Geometric class order follows the shipped
``classes.txt`` of the FCN reference (sky, horizontal, vertical).
"""
from __future__ import annotations

import re

import numpy as np
import torch

from fcnseg.data.base import DatasetInfo, Label, Sample, SegDataset, register
from fcnseg.data.io import DatasetError, apply_lut, image_to_tensor, lines_to_ids, package_list, read_mat, read_rgb
from fcnseg.data.palette import voc_colormap
from fcnseg.errors import ConfigError

__all__ = ["SiftFlow", "SIFTFLOW_CLASSES", "SIFTFLOW_GEO_CLASSES", "SIFTFLOW_ABSENT_IN_TEST",
           "SIFTFLOW_MEAN_BGR", "SIFTFLOW_UNANNOTATED"]

SUBDIR = "spatial_envelope_256x256_static_8outdoorcategories"
SIFTFLOW_MEAN_BGR = (114.578, 115.294, 108.353)  # Caffe reference mean, BGR order
# Test images whose annotations are missing upstream (excluded from evaluation by the reference).
SIFTFLOW_UNANNOTATED = ("highway_bost181", "street_urb506")


def _parse_classes(text: str) -> tuple[list[str], list[str]]:
    sections: dict[str, list[str]] = {"semantic": [], "geometric": []}
    current = None
    for ln in text.splitlines():
        head = ln.strip().lower()
        if head.startswith("semantic:"):
            current = "semantic"
        elif head.startswith("geometric:"):
            current = "geometric"
        elif current and (m := re.match(r"^(\d+)\s+(.+)$", ln.strip())):
            sections[current].append(m.group(2).strip())
    return sections["semantic"], sections["geometric"]


SIFTFLOW_CLASSES, SIFTFLOW_GEO_CLASSES = _parse_classes(
    package_list("siftflow", "classes.txt").read_text(encoding="utf-8"))
# Semantic classes (0-based label indices) that never occur in the test split: cow, desert, moon.
SIFTFLOW_ABSENT_IN_TEST = tuple(SIFTFLOW_CLASSES.index(n) for n in ("cow", "desert", "moon"))

_SEM_LUT = np.array([255] + list(range(33)), dtype=np.int64)  # values 0..33
_GEO_LUT = np.array([255, 255, 0, 1, 2], dtype=np.int64)  # values -1..3
_TASKS = ("both", "semantic", "geometric")


@register(DatasetInfo("siftflow", tuple(SIFTFLOW_CLASSES), ("trainval", "test"),
                      description="SIFT Flow, 33 semantic + 3 geometric classes"))
class SiftFlow(SegDataset):
    """SIFT Flow; item = (float32 (3, 256, 256) RGB 0–255, label per ``task``, see module doc)."""

    name = "siftflow"
    geo_classes = SIFTFLOW_GEO_CLASSES

    def __init__(self, root, split, task: str = "both", **kw) -> None:
        if task not in _TASKS:
            raise ConfigError(f"siftflow: task must be one of {_TASKS}, got {task!r}")
        self.task = task
        self.classes = SIFTFLOW_GEO_CLASSES if task == "geometric" else SIFTFLOW_CLASSES
        self.palette = voc_colormap(len(self.classes))
        super().__init__(root, split, **kw)

    @property
    def exclude_from_means(self) -> dict[str, list[int]] | list[int] | None:
        """On the test split: the semantic classes absent from it (cow, desert, moon), left out of the
        mean metrics (read by ``evaluate`` callers): ``{"semantic": [...]}`` for ``task="both"``, a list
        for ``task="semantic"``; else None."""
        if self.split != "test" or self.task == "geometric":
            return None
        absent = list(SIFTFLOW_ABSENT_IN_TEST)
        return {"semantic": absent} if self.task == "both" else absent

    def _index(self) -> list[Sample]:
        lst = self._split_list([self.root / f"{self.split}.txt", package_list("siftflow", f"{self.split}.txt")])
        keys = ("semantic", "geometric") if self.task == "both" else (self.task,)
        folders = {"semantic": "SemanticLabels", "geometric": "GeoLabels"}
        out = []
        for i in lines_to_ids(lst, self.name):
            files = {"image": self.root / "Images" / SUBDIR / f"{i}.jpg"}
            files.update({k: self.root / folders[k] / SUBDIR / f"{i}.mat" for k in keys})
            out.append(Sample(i, files, str(lst)))
        return out

    def _load_image(self, s: Sample) -> torch.Tensor:
        return image_to_tensor(read_rgb(s.files["image"], self.name))

    def _read(self, s: Sample, key: str) -> torch.Tensor:
        path = s.files[key]
        arr = read_mat(path, self.name, "S", kind=f"{key} label")
        if key == "semantic":
            return apply_lut(arr, _SEM_LUT, self.name, path)
        return apply_lut(arr, _GEO_LUT, self.name, path, lo=-1)

    def _load_label(self, s: Sample) -> Label:
        if self.task == "both":
            return {"semantic": self._read(s, "semantic"), "geometric": self._read(s, "geometric")}
        return self._read(s, self.task)


if len(SIFTFLOW_CLASSES) != 33 or len(SIFTFLOW_GEO_CLASSES) != 3:  # pragma: no cover - shipped file broken
    raise DatasetError("siftflow: shipped classes.txt does not list 33 semantic and 3 geometric classes")
