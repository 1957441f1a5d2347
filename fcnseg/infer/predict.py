"""Predict label maps for image (and video) files, one at a time, optionally by overlapping tiles."""
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
from fcnseg.infer.video import FRAMES_SUFFIX, VIDEO_EXTENSIONS, VIDEO_SUFFIX, VideoReadError, is_video, predict_video
from fcnseg.models.base import SegmentationModel
from fcnseg.visualize import colorize, overlay, save_image

__all__ = ["ImageReadError", "ImageTooLargeError", "load_image", "read_rgb_uint8", "iter_image_paths",
           "predict_paths", "predict_labels", "as_engine", "Predictor", "make_output_dir",
           "format_summary", "IMAGE_EXTENSIONS", "DEFAULT_MAX_PIXELS", "DEFAULT_MAX_TILED_PIXELS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".gif")
# Tiling bounds the network's memory, not the decoded image's (3 bytes/pixel, plus label and overlay):
# 134 MP (e.g. 11585x11585) is ~0.4 GB as RGB. Above it, even tiled prediction is refused.
DEFAULT_MAX_TILED_PIXELS = 8 * DEFAULT_MAX_PIXELS
_OUTPUT_SUFFIXES = ("_label.png", "_overlay.png", "_overlay.jpg", VIDEO_SUFFIX)


class ImageReadError(FcnsegError, ValueError):
    """An input image is missing, empty, truncated, corrupt or not an image."""


class ImageNotFoundError(ImageReadError, FileNotFoundError):
    """An input path does not exist."""


class ImageTooLargeError(ImageReadError):
    """An image above ``max_pixels`` with no tiling asked for."""


def _check_file(path: Path, what: str = "image") -> None:
    """Fail early, one line, for paths that are no image (or video) file at all."""
    if not path.exists():
        raise ImageNotFoundError(f"{what} not found: {shown(path)}")
    if path.is_dir():
        raise ImageReadError(f"cannot read {what} {shown(path)}: is a directory")
    if not path.is_file():  # a FIFO would block, a device never ends
        raise ImageReadError(f"cannot read {what} {shown(path)}: not a regular file")
    try:
        size = path.stat().st_size
    except OSError as e:
        raise ImageReadError(f"cannot read {what} {shown(path)}: {one_line(e, 200)}") from None
    if size == 0:
        raise ImageReadError(f"cannot read {what} {shown(path)}: empty file (0 bytes)")


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


def iter_image_paths(inputs: Sequence[str | os.PathLike], skip_dir: str | os.PathLike | None = None,
                     extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> Iterator[Path]:
    """Files as given, and files with ``extensions`` (default: images) under directories, recursively,
    sorted, lazily.

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
                in_skip = skip is not None and Path(root).resolve() == skip
                dirs[:] = sorted(d for d in dirs if (skip is None or (Path(root) / d).resolve() != skip) and not (
                    in_skip and d.endswith(FRAMES_SUFFIX)))
                for name in sorted(files):
                    if name.lower().endswith(extensions) and not name.startswith(".") and not (
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


@torch.inference_mode()
def _labels_batch(engine: Engine, frames: Sequence[np.ndarray], head: str | None) -> list[np.ndarray]:
    """Label maps of same-size uint8 (H, W, 3) RGB frames, in one forward pass."""
    x = torch.from_numpy(np.ascontiguousarray(np.stack(frames).transpose(0, 3, 1, 2))).float()
    out = engine.predict_scores(x)
    scores = out[head] if head is not None else next(iter(out.values()))
    dtype = np.uint8 if max(engine.heads.values()) <= 255 else np.int64
    return list(scores.argmax(1).cpu().numpy().astype(dtype))


def _top(counts: np.ndarray, class_names: Sequence[str] | None) -> list[tuple[str | int, float]]:
    """The 3 largest classes by pixel count, with their fractions."""
    total = max(1, int(counts.sum()))
    names = list(class_names) if class_names is not None else None
    return [(names[i] if names and i < len(names) else int(i), float(counts[i] / total))
            for i in np.argsort(-counts, kind="stable")[:3] if counts[i] > 0]


def predict_paths(model: Predictor, inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                  palette: np.ndarray | Sequence, device: str | torch.device = "cpu", skip_bad: bool = False,
                  tile: int | None = None, overlap: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                  max_tiled_pixels: int | None = DEFAULT_MAX_TILED_PIXELS,
                  class_names: Sequence[str] | None = None, alpha: float = 0.5, overlay_format: str = "png",
                  head: str | None = None, frames: bool = False, batch_size: int = 1, progress: bool = False,
                  shard: tuple[int, int] = (0, 1)) -> Iterator[dict]:
    """Predict every image and video in ``inputs`` (files, or directories searched recursively), one at a time.

    Writes ``<stem>_label.png`` (palette PNG of class indices) and ``<stem>_overlay.<png|jpg>`` into
    ``out_dir`` (files under an input directory keep their sub-path in the stem, ``a__b``; repeated
    stems get ``-1``, ``-2``, in input order) and yields per image ``{"path", "size": (H, W), "seconds",
    "top": [(class, fraction), ...] (3 largest), "label_path", "overlay_path", "tiled"}``.

    Videos (by extension, :data:`~fcnseg.infer.video.VIDEO_EXTENSIONS`; needs PyAV) give
    ``<stem>_overlay.mp4`` (unless ``overlay_format`` is None) and, with ``frames``, one label PNG per
    frame in ``<stem>_frames/`` (its ``label_path``); frames go through the engine ``batch_size`` at a
    time, with a frames/s bar when ``progress``; their summary adds ``"frames"`` and ``"fps"``.

    ``shard=(rank, world)``: this process predicts every ``world``-th file from the ``rank``-th (names
    are those of the whole list, so ``world`` processes write exactly the files one would).

    Images above ``max_pixels`` (counted with the network's ``input_padding``)
    raise :class:`ImageTooLargeError` unless ``tile`` is given (then the
    limit is ``max_tiled_pixels``, the decoded image still has to fit in memory). Unreadable
    files raise :class:`ImageReadError` (videos :class:`~fcnseg.infer.video.VideoReadError`) naming the
    file; with ``skip_bad`` they (and too-large images) are skipped with a warning naming the file.
    Missing inputs always raise, before any work.
    """
    if overlay_format not in ("png", "jpg", None):
        raise ValueError(f"overlay_format must be 'png', 'jpg' or None, got {overlay_format!r}")
    rank, world = shard
    if not 0 <= rank < world:
        raise ValueError(f"shard must be (rank, world) with 0 <= rank < world, got {shard}")
    device = torch.device(device)
    out_dir = make_output_dir(out_dir)
    roots = [Path(p) for p in inputs]
    paths = iter_image_paths(roots, skip_dir=out_dir, extensions=IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)
    engine = as_engine(model, device)
    pad = engine.input_padding

    def labels_of(batch: list[np.ndarray]) -> list[np.ndarray]:
        if tile:
            return [predict_labels(engine, f, tile=tile, overlap=overlap, head=head) for f in batch]
        return _labels_batch(engine, batch, head)

    used: set[str] = set()
    for i, path in enumerate(paths):
        stem = _unique_stem(_relative(path, roots), used)  # for every file, so names do not depend on shard
        if i % world != rank:
            continue
        t0 = time.perf_counter()
        try:
            if is_video(path):
                _check_file(path, "video")
                v = predict_video(labels_of, path, out_dir, stem, palette=palette, alpha=alpha,
                                  overlay_video=overlay_format is not None, frames=frames, batch_size=batch_size,
                                  progress=progress, max_pixels=max_tiled_pixels if tile else max_pixels,
                                  pad=0 if tile else pad)
                yield {"path": str(path), "size": v["size"], "seconds": time.perf_counter() - t0,
                       "top": _top(v["counts"], class_names),
                       "label_path": str(v["frames_path"]) if v["frames_path"] else None,
                       "overlay_path": str(v["overlay_path"]) if v["overlay_path"] else None,
                       "tiled": bool(tile) and (v["size"][0] > tile or v["size"][1] > tile),
                       "frames": v["frames"], "fps": v["fps"]}
                continue
            try:
                rgb = read_rgb_uint8(path, max_tiled_pixels, 0) if tile else read_rgb_uint8(path, max_pixels, pad)
            except ImageTooLargeError as e:
                if not tile:
                    raise
                what = str(e).split("; predict it by tiles")[0].replace("max_pixels", "max_tiled_pixels")
                raise ImageTooLargeError(f"{what}: too large even for tiled prediction, which still decodes "
                                         "the whole image") from None
        except (ImageReadError, VideoReadError) as e:
            if not skip_bad:
                raise
            warnings.warn(f"{e}; skipped", stacklevel=2)
            continue
        label = predict_labels(engine, rgb, device=device, tile=tile, overlap=overlap, head=head)
        label_path = out_dir / f"{stem}_label.png"
        save_image(colorize(label, palette), label_path)
        overlay_path = None
        if overlay_format is not None:
            overlay_path = out_dir / f"{stem}_overlay.{overlay_format}"
            save_image(overlay(rgb, label, palette, alpha), overlay_path,
                       **({"quality": 90} if overlay_format == "jpg" else {}))
        yield {
            "path": str(path),
            "size": (int(rgb.shape[0]), int(rgb.shape[1])),
            "seconds": time.perf_counter() - t0,
            "top": _top(torch.from_numpy(label).reshape(-1).bincount().numpy(), class_names),
            "label_path": str(label_path),
            "overlay_path": str(overlay_path) if overlay_path else None,
            "tiled": bool(tile) and (rgb.shape[0] > tile or rgb.shape[1] > tile),
        }


def format_summary(s: dict) -> str:
    """One line per image for the CLI: ``path  HxW  0.12 s  person 61.2%, background 30.0%, ...``
    (a video's: ``path  HxW  40 frames at 25 fps  3.10 s  ...``)."""
    h, w = s["size"]
    top = ", ".join(f"{c} {100 * f:.1f}%" for c, f in s["top"])
    frames = f"  {s['frames']} frames at {float(s['fps']):.4g} fps" if "frames" in s else ""
    return (f"{shown(s['path'])}  {h}x{w}{frames}  {s['seconds']:.2f} s{'  (tiled)' if s.get('tiled') else ''}"
            f"  {top}")
