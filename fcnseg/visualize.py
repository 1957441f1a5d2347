"""Pictures: palette label PNGs, overlays, confusion-matrix and training-curve plots (matplotlib Agg)."""
from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fcnseg.atomic import atomic_write

__all__ = ["colorize", "overlay", "plot_confusion", "plot_curves", "to_rgb_array", "save_image"]

VOID = 255


def _label_array(label: torch.Tensor | np.ndarray) -> np.ndarray:
    """(H, W) uint8 class indices; negative or > 255 values become void (255)."""
    lab = np.asarray(label.detach().cpu() if isinstance(label, torch.Tensor) else label)
    if lab.ndim != 2:
        raise ValueError(f"label map must be 2-D (H, W), got shape {lab.shape}")
    if lab.dtype == np.uint8:
        return lab
    return np.where((lab < 0) | (lab > VOID), VOID, lab).astype(np.uint8)


def _palette_table(palette: np.ndarray | Sequence, void_color=(0, 0, 0)) -> np.ndarray:
    """256×3 uint8 table: the palette's colours, black for unused indices, ``void_color`` at 255."""
    pal = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    table = np.zeros((256, 3), np.uint8)
    n = min(len(pal), VOID)
    table[:n] = pal[:n]
    table[VOID] = void_color
    return table


def colorize(label: torch.Tensor | np.ndarray, palette: np.ndarray | Sequence,
             void_color=(0, 0, 0)) -> Image.Image:
    """Label map (H, W) → palette ("P") PIL image whose pixel values are the class indices.

    Void (255) and out-of-range values are drawn ``void_color`` (black); saved as PNG, the file stays an
    index image that reads back to the same labels.
    """
    lab = np.ascontiguousarray(_label_array(label))
    im = Image.frombytes("P", (lab.shape[1], lab.shape[0]), lab.tobytes())
    im.putpalette(_palette_table(palette, void_color).reshape(-1).tolist())
    return im


def to_rgb_array(image: torch.Tensor | np.ndarray | Image.Image) -> np.ndarray:
    """RGB image as uint8 (H, W, 3): a C×H×W tensor in 0–255, an H×W×3 array, or a PIL image."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if t.dim() != 3:
            raise ValueError(f"image tensor must be (C, H, W), got shape {tuple(t.shape)}")
        arr = t[:3].permute(1, 2, 0).numpy()
    else:
        arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] < 3:
        raise ValueError(f"image must be (H, W, 3), got shape {arr.shape}")
    return np.clip(np.rint(arr[:, :, :3]), 0, 255).astype(np.uint8) if arr.dtype != np.uint8 else arr[:, :, :3]


def overlay(image_rgb: torch.Tensor | np.ndarray | Image.Image, label: torch.Tensor | np.ndarray,
            palette: np.ndarray | Sequence, alpha: float = 0.5) -> Image.Image:
    """Blend class colours over the image (``alpha`` = colour weight); void pixels show the image."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    img = to_rgb_array(image_rgb)
    lab = _label_array(label)
    if img.shape[:2] != lab.shape:
        raise ValueError(f"image {img.shape[:2]} and label {lab.shape} sizes differ")
    table = _palette_table(palette).astype(np.float32)
    out = np.empty_like(img)
    for r in range(0, lab.shape[0], 512):  # row blocks keep temporaries small for huge images
        lb = lab[r:r + 512]
        a = np.where(lb == VOID, 0.0, alpha).astype(np.float32)[:, :, None]
        blend = img[r:r + 512].astype(np.float32) * (1 - a) + table[lb] * a
        out[r:r + 512] = np.clip(np.rint(blend), 0, 255).astype(np.uint8)
    return Image.fromarray(out)


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415 (optional: heavy, ~0.2 s; only plots need it)
    from matplotlib.figure import Figure  # noqa: PLC0415 (optional: as above)

    fig = Figure(figsize=(w, h))
    FigureCanvasAgg(fig)
    return fig


def _format(path: Path) -> str:
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot tell the image format of {path} from its suffix")
    return fmt


def save_image(im: Image.Image, path: str | os.PathLike, **params) -> Path:
    """Save ``im`` atomically (format from the suffix): an interrupted or failed save leaves no partial
    file, and a failed write raises :class:`fcnseg.atomic.WriteError` naming ``path``."""
    path = Path(path)
    fmt = _format(path)
    with atomic_write(path) as f:
        im.save(f, format=fmt, **params)
    return path


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_write(path) as f:  # matplotlib's format from the suffix (png, pdf, svg, ...)
        fig.savefig(f, format=path.suffix.lstrip(".").lower() or "png", dpi=100, bbox_inches="tight")
    return path


def plot_confusion(matrix: torch.Tensor | np.ndarray | Sequence, class_names: Sequence[str],
                   path: str | os.PathLike) -> Path:
    """Row-normalised confusion matrix (rows: ground truth) as an image file; returns its path."""
    m = np.asarray(matrix.cpu() if isinstance(matrix, torch.Tensor) else matrix, dtype=np.float64)
    k = m.shape[0]
    if m.shape != (k, k) or len(class_names) != k:
        raise ValueError(f"confusion matrix {m.shape} does not fit {len(class_names)} class names")
    rows = m.sum(1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    side = min(4 + 0.3 * k, 40)
    fig = _figure(side + 1.5, side)
    ax = fig.add_subplot()
    im = ax.imshow(norm, vmin=0, vmax=1, cmap="Blues", interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(k), list(class_names), rotation=90, fontsize=8)
    ax.set_yticks(range(k), list(class_names), fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    if k <= 30:
        for i in range(k):
            for j in range(k):
                if norm[i, j] >= 0.01:
                    ax.text(j, i, f"{100 * norm[i, j]:.0f}", ha="center", va="center", fontsize=6,
                            color="white" if norm[i, j] > 0.5 else "black")
    return _save(fig, path)


def _read_log(log_csv: str | os.PathLike) -> dict[str, list[float]]:
    path = Path(log_csv)
    if not path.is_file():
        raise FileNotFoundError(f"training log not found: {path}")
    cols: dict[str, list[float]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "iter" not in reader.fieldnames or "loss" not in reader.fieldnames:
            raise ValueError(f"{path}: expected a CSV with columns iter,epoch,loss,lr,...; "
                             f"got {reader.fieldnames}")
        for name in reader.fieldnames:
            cols[name] = []
        for row in reader:
            for name in reader.fieldnames:
                cols[name].append(_num(row.get(name)))
    return cols


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _read_val(val_json: str | os.PathLike) -> list[dict]:
    """Validation records: a CSV with an ``iter`` column, a JSON list of dicts, a dict holding
    such a list, or JSON lines."""
    path = Path(val_json)
    if not path.is_file():
        raise FileNotFoundError(f"validation metrics file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".csv":  # the training engine's eval.csv: iter, mean_iu, ...
        return [{k: _num(v) for k, v in row.items()} for row in csv.DictReader(text.splitlines())]
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        try:
            data = [json.loads(ln) for ln in text.splitlines() if ln.strip()]
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not JSON or JSON lines ({e})") from None
    if isinstance(data, dict):
        data = next((v for v in data.values() if isinstance(v, list)), [data])
    return [r for r in data if isinstance(r, dict) and "iter" in r]


def plot_curves(log_csv: str | os.PathLike, path: str | os.PathLike,
                val_json: str | os.PathLike | None = None) -> Path:
    """Loss (raw and smoothed) and learning rate against iteration; validation metrics if given.

    ``val_json`` holds records like ``{"iter": 4000, "mean_iu": 0.61, "pixel_accuracy": 0.89, ...}``.
    """
    cols = _read_log(log_csv)
    it = np.asarray(cols["iter"])
    loss = np.asarray(cols["loss"])
    val = _read_val(val_json) if val_json is not None else []
    panels = 2 + bool(val)
    fig = _figure(8, 2.6 * panels)
    ax = fig.add_subplot(panels, 1, 1)
    ax.plot(it, loss, lw=0.6, alpha=0.4, label="loss")
    if len(loss) >= 10:
        w = max(len(loss) // 50, 5)
        smooth = np.convolve(np.nan_to_num(loss), np.ones(w) / w, mode="valid")
        ax.plot(it[w - 1:], smooth, lw=1.2, label=f"loss (mean of {w})")
    ax.set_ylabel("loss")
    ax.legend(loc="upper right", fontsize=8)
    ax2 = fig.add_subplot(panels, 1, 2, sharex=ax)
    if "lr" in cols:
        ax2.plot(it, cols["lr"], lw=1)
    ax2.set_ylabel("learning rate")
    if val:
        ax3 = fig.add_subplot(panels, 1, 3, sharex=ax)
        vit = [r["iter"] for r in val]
        for key, name in (("mean_iu", "mean IU"), ("pixel_accuracy", "pixel acc."),
                          ("mean_accuracy", "mean acc."), ("fw_iu", "f.w. IU")):
            ys = [100 * _num(r.get(key)) for r in val]
            if not all(math.isnan(y) for y in ys):
                ax3.plot(vit, ys, marker="o", ms=3, label=name)
        ax3.set_ylabel("validation (%)")
        ax3.legend(loc="lower right", fontsize=8)
    fig.axes[-1].set_xlabel("iteration")
    return _save(fig, path)
