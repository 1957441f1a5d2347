"""Datasets, joint transforms and batching for fcnseg.

Every dataset item is ``(image, label)``: ``image`` float32 (C, H, W), RGB 0–255, not normalised
(the model normalises; C > 3 for NYUD fusion inputs); ``label`` int64 (H, W) with void = 255 (SIFT Flow
with ``task="both"``: a dict ``{"semantic", "geometric"}``). Build by name with :func:`build_dataset`.
"""
from __future__ import annotations

from pathlib import Path

from fcnseg.data import camvid, context, folder, nyud, sbd, siftflow, voc  # noqa: F401  (each registers itself)
from fcnseg.data.base import IGNORE_INDEX, DatasetInfo, SegDataset, build_dataset, dataset_info, list_datasets, register
from fcnseg.data.camvid import MEDIAN_FREQUENCY_WEIGHTS, CamVid
from fcnseg.data.collate import collate_pad
from fcnseg.data.context import PascalContext
from fcnseg.data.folder import FolderDataset
from fcnseg.data.io import DatasetError
from fcnseg.data.nyud import NYUD, NYUD_LOG_DEPTH_MEAN, NYUD_MEANS, nyud_channel_means
from fcnseg.data.palette import colorize, voc_colormap
from fcnseg.data.sbd import SBD
from fcnseg.data.siftflow import SIFTFLOW_ABSENT_IN_TEST, SIFTFLOW_MEAN_BGR, SiftFlow
from fcnseg.data.transforms import ColorJitter, Compose, RandomCrop, RandomHorizontalFlip, RandomScale, Resize
from fcnseg.data.voc import VOC
from fcnseg.data.weights import median_frequency_weights

__all__ = [
    "build_dataset", "list_datasets", "dataset_info", "register", "DatasetInfo", "SegDataset", "DatasetError",
    "IGNORE_INDEX", "collate_pad", "sample_root", "voc_colormap", "colorize", "median_frequency_weights",
    "Compose", "RandomScale", "RandomCrop", "RandomHorizontalFlip", "ColorJitter", "Resize",
    "CamVid", "VOC", "SBD", "SiftFlow", "NYUD", "PascalContext", "FolderDataset",
    "MEDIAN_FREQUENCY_WEIGHTS", "SIFTFLOW_ABSENT_IN_TEST", "SIFTFLOW_MEAN_BGR", "NYUD_MEANS",
    "NYUD_LOG_DEPTH_MEAN", "nyud_channel_means",
]


def sample_root(name: str = "camvid") -> Path:
    """Folder of the bundled sample (``fcnseg/data/sample/<name>``), readable by ``build_dataset(name, ...)``."""
    root = Path(__file__).resolve().parent / "sample" / name
    if not root.is_dir():
        raise FileNotFoundError(f"no bundled sample {root} (run scripts/make_sample.py)")
    return root
