"""Predict label maps for image files, one at a time, optionally by overlapping tiles."""
from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fcnseg.atomic import write_error
from fcnseg.data.io import DEFAULT_MAX_PIXELS, TooManyPixelsError, load_image_file, shown, to_rgb_uint8
from fcnseg.errors import FcnsegError, one_line
from fcnseg.infer.engines import Engine, TorchEngine
from fcnseg.models.base import SegmentationModel
from fcnseg.visualize import colorize, overlay, save_image

__all__ = ["ImageReadError", "ImageTooLargeError", "load_image", "read_rgb_uint8", "iter_image_paths",
           "predict_paths", "predict_labels", "as_engine", "Predictor", "make_output_dir",
           "format_summary", "IMAGE_EXTENSIONS", "DEFAULT_MAX_PIXELS", "DEFAULT_MAX_TILED_PIXELS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".gif")
# Tiling bounds the network's memory, not the decoded image's (3 bytes/pixel, plus label and overlay):
# 134 MP (e.g. 11585x11585) is ~0.4 GB as RGB. Above it, even tiled prediction is refused.
DEFAULT_MAX_TILED_PIXELS = 8 * DEFAULT_MAX_PIXELS
_OUTPUT_SUFFIXES = ("_label.png", "_overlay.png", "_overlay.jpg")


class ImageReadError(FcnsegError, ValueError):
    """An input image is missing, empty, truncated, corrupt or not an image."""


class ImageNotFoundError(ImageReadError, FileNotFoundError):
    """An input path does not exist."""


class ImageTooLargeError(ImageReadError):
    """An image above ``max_pixels`` with no tiling asked for."""


def _check_file(path: Path) -> None:
    """Fail early, one line, for paths that are no image file at all."""
    if not path.exists():
        raise ImageNotFoundError(f"image not found: {shown(path)}")
    if path.is_dir():
        raise ImageReadError(f"cannot read image {shown(path)}: is a directory")
    if not path.is_file():  # a FIFO would block, a device never ends
        raise ImageReadError(f"cannot read image {shown(path)}: not a regular file")
    try:
        size = path.stat().st_size
    except OSError as e:
        raise ImageReadError(f"cannot read image {shown(path)}: {one_line(e, 200)}") from None
    if size == 0:
        raise ImageReadError(f"cannot read image {shown(path)}: empty file (0 bytes)")


def read_rgb_uint8(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS, pad: int = 0
                   ) -> np.ndarray:
    """Image file → uint8 (H, W, 3) RGB; any PIL mode, EXIF orientation applied, first frame only.

    The datasets' reader (:func:`fcnseg.data.io.load_image_file` and :func:`~fcnseg.data.io.to_rgb_uint8`):
    the same pixels, the same decompression-bomb policy. Raises :class:`ImageReadError` (one line, naming
    the file) for missing, empty, truncated, corrupt or non-image files, and :class:`ImageTooLargeError`
    above ``max_pixels`` (checked before decoding; ``None`` = no limit), counting the ``pad`` px border a
    network adds on every side (its ``input_padding``): what the network computes on, not the file.
    """
    path = Path(path)
    _check_file(path)
    try:
        im = load_image_file(path, max_pixels, exif=True, pad=pad)
    except TooManyPixelsError as e:
        raise ImageTooLargeError(f"image {shown(path)} is {e.describe()}, above max_pixels={max_pixels}; "
                                 f"predict it by tiles (tile=...) or raise max_pixels") from None
    except MemoryError:
        raise
    except Image.UnidentifiedImageError:
        raise ImageReadError(f"cannot read image {shown(path)}: not an image file (or an unsupported format)") from None
    except Exception as e:  # OSError, SyntaxError, ValueError, ...
        raise ImageReadError(f"cannot read image {shown(path)}: {one_line(e, 200)}") from None
    try:
        return to_rgb_uint8(im)
    except MemoryError:
        raise
    except Exception as e:
        raise ImageReadError(f"cannot read image {shown(path)}: {one_line(e, 200)}") from None
    finally:
        im.close()


def load_image(path: str | os.PathLike, max_pixels: int | None = None) -> torch.Tensor:
    """Image file → float32 tensor (3, H, W), RGB, 0–255 (see :func:`read_rgb_uint8` for errors)."""
    arr = read_rgb_uint8(path, max_pixels=max_pixels)
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).float()


def iter_image_paths(inputs: Sequence[str | os.PathLike], skip_dir: str | os.PathLike | None = None
                     ) -> Iterator[Path]:
    """Files as given, and image files (by extension) under directories, recursively, sorted, lazily.

    ``skip_dir`` (the output folder) is not searched. Raises :class:`ImageNotFoundError` up front if
    any input does not exist.
    """
    paths = [Path(p) for p in inputs]
    for p in paths:
        if not p.exists():
            raise ImageNotFoundError(f"input not found: {shown(p)}")
    skip = Path(skip_dir).resolve() if skip_dir is not None else None
    for p in paths:
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs[:] = sorted(d for d in dirs if skip is None or (Path(root) / d).resolve() != skip)
                in_skip = skip is not None and Path(root).resolve() == skip
                for name in sorted(files):
                    if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".") and not (
                            in_skip and name.endswith(_OUTPUT_SUFFIXES)):
                        yield Path(root) / name
        else:
            yield p


Predictor = SegmentationModel | Engine


def as_engine(model: Predictor, device: str | torch.device = "cpu") -> Engine:
    """``model`` itself when it is an engine, else the plain PyTorch fp32 engine for it on ``device``."""
    if isinstance(model, Engine):
        return model
    if not isinstance(model, SegmentationModel):
        raise TypeError(f"model must be a fcnseg SegmentationModel or an engine, got {type(model).__name__}")
    return TorchEngine(model, device, channels_last=False)


def _starts(length: int, tile: int, overlap: int, align: int) -> list[tuple[int, int]]:
    """(start, end) windows covering ``[0, length)``; starts are multiples of ``align``."""
    if length <= tile:
        return [(0, length)]
    step = max(align, (tile - overlap) // align * align)
    wins, a = [], 0
    while a + tile < length:
        wins.append((a, a + tile))
        a += step
    last = max(0, (length - tile) // align * align)
    if wins and last <= wins[-1][0]:
        wins.pop()
    wins.append((last, length))
    return wins


def _cores(wins: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Part of each window whose pixels it owns: split overlaps at their middle."""
    bounds = [0] + [(nxt[0] + cur[1]) // 2 for cur, nxt in zip(wins, wins[1:])] + [wins[-1][1]]
    return list(zip(bounds, bounds[1:]))


def _scores(engine: Engine, rgb: np.ndarray, head: str | None) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None].float()
    out = engine.predict_scores(x)
    return (out[head] if head is not None else next(iter(out.values())))[0]


@torch.inference_mode()
def predict_labels(model: Predictor, rgb: np.ndarray, *, device: str | torch.device = "cpu",
                   tile: int | None = None, overlap: int | None = None, head: str | None = None) -> np.ndarray:
    """Label map (H, W) uint8/int64 for a uint8 (H, W, 3) RGB image, by a model (run by the PyTorch
    engine on ``device``) or an engine; ``head``: which head's labels (default the first).

    With ``tile``, the image is cut into ``tile``×``tile`` windows (the last of a row/column up to one
    output stride larger) overlapping by ``overlap`` (default ``tile // 4``) whose starts are multiples
    of the model's output stride, so each window sees the pixel grid as the whole image would; every
    pixel takes the label from the window whose centre part owns it (overlaps split in the middle).
    Away from window edges (beyond the receptive field) this equals whole-image prediction.
    """
    engine = as_engine(model, device)
    h, w = rgb.shape[:2]
    dtype = np.uint8 if max(engine.heads.values()) <= 255 else np.int64
    if tile is None or (h <= tile and w <= tile):
        return _scores(engine, rgb, head).argmax(0).cpu().numpy().astype(dtype)
    if tile < 1:
        raise ValueError(f"tile must be >= 1, got {tile}")
    overlap = tile // 4 if overlap is None else int(overlap)
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile), got {overlap} for tile {tile}")
    align = engine.output_stride
    out = np.empty((h, w), dtype)
    rows, cols = _starts(h, tile, overlap, align), _starts(w, tile, overlap, align)
    for (y0, y1), (cy0, cy1) in zip(rows, _cores(rows)):
        for (x0, x1), (cx0, cx1) in zip(cols, _cores(cols)):
            lab = _scores(engine, rgb[y0:y1, x0:x1], head).argmax(0).cpu().numpy()
            out[cy0:cy1, cx0:cx1] = lab[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0]
    return out


def make_output_dir(path: str | os.PathLike) -> Path:
    """Create the output folder ``path`` (and parents) up front; a failure names it (:class:`WriteError`)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(path, e) from None
    return path


def _unique_stem(rel: Path, used: set[str]) -> str:
    stem = str(rel.with_suffix("")) if rel.parent != Path(".") else rel.stem
    stem, n = stem.replace(os.sep, "__"), 1
    cand = stem
    while cand in used:
        cand, n = f"{stem}-{n}", n + 1
    used.add(cand)
    return cand


def _relative(path: Path, inputs: list[Path]) -> Path:
    for root in inputs:
        if root.is_dir():
            try:
                return path.relative_to(root)
            except ValueError:
                continue
    return Path(path.name)


def predict_paths(model: Predictor, inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                  palette: np.ndarray | Sequence, device: str | torch.device = "cpu", skip_bad: bool = False,
                  tile: int | None = None, overlap: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                  max_tiled_pixels: int | None = DEFAULT_MAX_TILED_PIXELS,
                  class_names: Sequence[str] | None = None, alpha: float = 0.5, overlay_format: str = "png",
                  head: str | None = None) -> Iterator[dict]:
    """Predict every image in ``inputs`` (files, or directories searched recursively), one at a time.

    Writes ``<stem>_label.png`` (palette PNG of class indices) and ``<stem>_overlay.<png|jpg>`` into
    ``out_dir`` (files under an input directory keep their sub-path in the stem, ``a__b``; repeated
    stems get ``-1``, ``-2``) and yields per image ``{"path", "size": (H, W), "seconds", "top":
    [(class, fraction), ...] (3 largest), "label_path", "overlay_path", "tiled"}``.

    Images above ``max_pixels`` (counted with the network's ``input_padding``)
    raise :class:`ImageTooLargeError` unless ``tile`` is given (then the
    limit is ``max_tiled_pixels``, the decoded image still has to fit in memory). Unreadable
    files raise :class:`ImageReadError` naming the file; with ``skip_bad`` they (and too-large images)
    are skipped with a warning naming the file. Missing inputs always raise, before any work.
    """
    if overlay_format not in ("png", "jpg", None):
        raise ValueError(f"overlay_format must be 'png', 'jpg' or None, got {overlay_format!r}")
    device = torch.device(device)
    out_dir = make_output_dir(out_dir)
    roots = [Path(p) for p in inputs]
    paths = iter_image_paths(roots, skip_dir=out_dir)
    engine = as_engine(model, device)
    pad = engine.input_padding
    used: set[str] = set()
    for path in paths:
        t0 = time.perf_counter()
        try:
            try:
                rgb = read_rgb_uint8(path, max_tiled_pixels, 0) if tile else read_rgb_uint8(path, max_pixels, pad)
            except ImageTooLargeError as e:
                if not tile:
                    raise
                what = str(e).split("; predict it by tiles")[0].replace("max_pixels", "max_tiled_pixels")
                raise ImageTooLargeError(f"{what}: too large even for tiled prediction, which still decodes "
                                         "the whole image") from None
        except ImageReadError as e:
            if not skip_bad:
                raise
            warnings.warn(f"{e}; skipped", stacklevel=2)
            continue
        label = predict_labels(engine, rgb, device=device, tile=tile, overlap=overlap, head=head)
        stem = _unique_stem(_relative(path, roots), used)
        label_path = out_dir / f"{stem}_label.png"
        save_image(colorize(label, palette), label_path)
        overlay_path = None
        if overlay_format is not None:
            overlay_path = out_dir / f"{stem}_overlay.{overlay_format}"
            save_image(overlay(rgb, label, palette, alpha), overlay_path,
                       **({"quality": 90} if overlay_format == "jpg" else {}))
        counts = torch.from_numpy(label).reshape(-1).bincount().numpy()
        top = np.argsort(-counts, kind="stable")[:3]
        names = list(class_names) if class_names is not None else None
        yield {
            "path": str(path),
            "size": (int(rgb.shape[0]), int(rgb.shape[1])),
            "seconds": time.perf_counter() - t0,
            "top": [(names[i] if names and i < len(names) else int(i), float(counts[i] / label.size))
                    for i in top if counts[i] > 0],
            "label_path": str(label_path),
            "overlay_path": str(overlay_path) if overlay_path else None,
            "tiled": bool(tile) and (rgb.shape[0] > tile or rgb.shape[1] > tile),
        }


def format_summary(s: dict) -> str:
    """One line per image for the CLI: ``path  HxW  0.12 s  person 61.2%, background 30.0%, ...``."""
    h, w = s["size"]
    top = ", ".join(f"{c} {100 * f:.1f}%" for c, f in s["top"])
    return f"{shown(s['path'])}  {h}x{w}  {s['seconds']:.2f} s{'  (tiled)' if s.get('tiled') else ''}  {top}"
