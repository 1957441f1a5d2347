"""File readers that turn every failure into a one-line :class:`DatasetError` naming the file."""
from __future__ import annotations

import contextlib
import unicodedata
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps

from fcnseg.errors import FcnsegError

__all__ = ["DatasetError", "TooManyPixelsError", "DEFAULT_MAX_PIXELS", "DATASET_MAX_PIXELS", "padded_pixels", "shown",
           "as_image_batch", "load_image_file", "to_rgb_uint8", "read_rgb", "read_index_png", "read_gray16",
           "read_mat", "read_lines", "read_names", "read_indexed_names", "package_list", "lines_to_ids",
           "apply_lut", "image_to_tensor"]

_PACKAGE_LISTS = Path(__file__).resolve().parent / "lists"
DEFAULT_MAX_PIXELS = 4096 * 4096  # predict's limit untiled (images larger must be tiled or asked for)
# Dataset images: PIL's own decompression-bomb threshold (~89 MP), refused from the header like predict's —
# training sets of large photos keep working as before; only the number differs, not the policy.
DATASET_MAX_PIXELS = int(Image.MAX_IMAGE_PIXELS or 0) or 89_478_485
_EXIF_ORIENTATION = 0x0112


class DatasetError(FcnsegError, ValueError):
    """A dataset file is missing, unreadable or malformed (message: ``<dataset>: <what> <path>: <why>``)."""


def _fail(who: str, kind: str, path: Path | str, reason: Any) -> DatasetError:
    text = str(reason).replace("\n", " ").strip() or type(reason).__name__
    return DatasetError(f"{who}: cannot read {kind} {shown(path)}: {text}")


def shown(path: str | Path) -> str:
    """``path`` for a one-line message: control characters (newline, tab, ESC ...) as escapes (``\\n``)."""
    text = str(path)
    if not any(unicodedata.category(c) == "Cc" for c in text):
        return text
    return "".join(repr(c)[1:-1] if unicodedata.category(c) == "Cc" else c for c in text)


class TooManyPixelsError(ValueError):
    """An image whose header declares more than ``max_pixels`` pixels (nothing was decoded)."""

    def __init__(self, width: int, height: int, max_pixels: int, pad: int = 0) -> None:
        self.width, self.height, self.max_pixels, self.pad = width, height, max_pixels, pad
        super().__init__(f"{self.describe()} is above max_pixels={max_pixels}")

    def describe(self) -> str:
        """``WxH (N MP)``, and the padded count the limit was applied to where there is a pad."""
        w, h, p = self.width, self.height, self.pad
        padded = f"; {padded_pixels(w, h, p) / 1e6:.1f} MP with the network's {p} px padding" if p else ""
        return f"{w}x{h} ({w * h / 1e6:.1f} MP{padded})"


def padded_pixels(width: int, height: int, pad: int = 0) -> int:
    """Pixels a network that pads its input by ``pad`` on every side computes on: (W+2p)(H+2p)."""
    return (width + 2 * pad) * (height + 2 * pad)


@contextlib.contextmanager
def _pil_limit_lifted():
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def load_image_file(path: Path | BinaryIO, max_pixels: int | None = DEFAULT_MAX_PIXELS, exif: bool = False,
                    pad: int = 0) -> Image.Image:
    """The one image reader (of a file, or of a binary stream such as an upload's bytes): open, refuse
    above ``max_pixels`` from the header (PIL's own bomb limit is replaced by it; ``None``: no limit;
    counted with ``pad`` px on every side, :func:`padded_pixels`), decode (truncated files fail here),
    first frame only, and with ``exif`` apply the EXIF orientation. Raises :class:`TooManyPixelsError`
    or PIL's own errors."""
    with _pil_limit_lifted():
        im = Image.open(path)
        try:
            w, h = im.size
            if max_pixels is not None and padded_pixels(w, h, pad) > max_pixels:
                raise TooManyPixelsError(w, h, max_pixels, pad)
            im.load()
            if exif and im.getexif().get(_EXIF_ORIENTATION, 1) != 1:
                im = ImageOps.exif_transpose(im)
            return im
        except BaseException:
            im.close()
            raise


def to_rgb_uint8(im: Image.Image) -> np.ndarray:
    """A decoded image of any mode → uint8 (H, W, 3) RGB, the one conversion: alpha dropped; 16-bit
    grey keeps its high byte (value >> 8, the inverse of 8→16-bit ×257); float grey in 0–1 is ×255."""
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im)
    if mode.startswith("I") or mode == "F":
        a = np.asarray(im)
        if mode.startswith("I;16") or (mode == "I" and a.size and a.max() > 255):
            g = (np.clip(a.astype(np.int64), 0, 65535) >> 8).astype(np.uint8)
        else:
            a = np.nan_to_num(a.astype(np.float64))
            if mode == "F" and a.size and a.max() <= 1.0:
                a = a * 255.0
            g = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return np.repeat(g[:, :, None], 3, axis=2)
    if mode == "P":
        im = im.convert("RGBA")  # keeps palette transparency semantics, then drop alpha
    return np.asarray(im.convert("RGB"))


def _open_loaded(path: Path, who: str, kind: str) -> Image.Image:
    try:
        return load_image_file(path, DATASET_MAX_PIXELS)
    except Image.UnidentifiedImageError as e:  # its message repeats the path
        raise _fail(who, kind, path, "not an image file (or an unsupported format)") from e
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ...
        raise _fail(who, kind, path, e) from e


def as_image_batch(images: Any, name: str = "images", channels: int | None = 3) -> tuple[torch.Tensor, bool]:
    """What users pass as images → (float32 N×C×H×W tensor, 0–255 values kept; whether one image was given).

    Accepted: a torch tensor C×H×W or N×C×H×W (uint8, or float/int in 0–255), a PIL image (any mode, as
    :func:`to_rgb_uint8` converts it), a numpy array H×W×C (uint8 or 0–255 numbers) or H×W grey (repeated
    to 3 channels). ``channels``: the channel count required (None: any). Anything else is a
    :class:`TypeError` naming ``name``; wrong shapes or channel counts a :class:`ValueError`.
    """
    if isinstance(images, Image.Image):
        images = to_rgb_uint8(images)
    if isinstance(images, np.ndarray):
        if images.ndim == 2:
            images = np.repeat(images[:, :, None], 3, axis=2)
        if images.ndim != 3:
            raise ValueError(f"{name}: a numpy image must be H×W×C or H×W, got shape {images.shape}")
        _check_dtype(images.dtype.kind in "uifb" and images.dtype.kind != "b", images.dtype, name)
        images = torch.from_numpy(np.ascontiguousarray(images.transpose(2, 0, 1)))
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, a PIL image or a numpy array, got {type(images).__name__}")
    _check_dtype(images.is_floating_point() or (not images.is_complex() and images.dtype != torch.bool),
                 images.dtype, name)
    single = images.dim() == 3
    batch = images[None] if single else images
    if batch.dim() != 4:
        raise ValueError(f"{name} must be C×H×W or N×C×H×W, got shape {tuple(images.shape)}")
    if channels is not None and batch.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channels (dimension {0 if single else 1}), "
                         f"got shape {tuple(images.shape)}")
    if min(batch.shape) == 0:
        raise ValueError(f"{name} is empty: shape {tuple(images.shape)}")
    return batch.float(), single


def _check_dtype(ok: bool, dtype, name: str) -> None:
    if not ok:
        raise TypeError(f"{name} must hold real numbers (uint8 or float 0–255), got dtype {dtype}")


def image_to_tensor(arr: np.ndarray) -> torch.Tensor:
    """(H, W) or (H, W, C) array -> float32 tensor (C, H, W), values unchanged."""
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32))


def read_rgb(path: Path, who: str, kind: str = "image", require_rgb: bool = False) -> np.ndarray:
    """Read an image as uint8 (H, W, 3) RGB. ``require_rgb`` rejects non-RGB files (e.g. HHA)."""
    im = _open_loaded(path, who, kind)
    if require_rgb and im.mode != "RGB":
        raise _fail(who, kind, path, f"expected a 3-channel RGB PNG, got mode {im.mode}")
    return to_rgb_uint8(im)


def read_index_png(path: Path, who: str, kind: str = "label") -> np.ndarray:
    """Read a single-channel ('L') or palette ('P') label image as uint8 (H, W) indices."""
    im = _open_loaded(path, who, kind)
    if im.mode not in ("L", "P"):
        raise _fail(who, kind, path, f"expected a single-channel or palette image, got mode {im.mode}")
    return np.asarray(im)


def read_gray16(path: Path, who: str, kind: str = "depth") -> np.ndarray:
    """Read a 16-bit (or 8-bit) single-channel PNG as float32 (H, W)."""
    im = _open_loaded(path, who, kind)
    if not (im.mode.startswith("I") or im.mode == "L"):
        raise _fail(who, kind, path, f"expected a single-channel 16-bit image, got mode {im.mode}")
    return np.asarray(im).astype(np.float32)


def read_mat(path: Path, who: str, key: str, field: str | None = None, kind: str = "label") -> np.ndarray:
    """Read matrix ``key`` (or ``key.field`` of a MATLAB struct) from a MATLAB v5 .mat file."""
    import scipy.io  # noqa: PLC0415 (optional: heavy, ~0.15 s; only .mat labels need it)

    try:
        mat = scipy.io.loadmat(str(path), squeeze_me=True, struct_as_record=False)
    except NotImplementedError as e:  # v7.3 / HDF5 files
        raise _fail(who, kind, path, f"MATLAB v7.3 files are not supported, save as v5 ({e})") from e
    except Exception as e:
        raise _fail(who, kind, path, e) from e
    if key not in mat:
        found = sorted(k for k in mat if not k.startswith("__"))
        raise _fail(who, kind, path, f"no variable '{key}' (found {found})")
    value = mat[key]
    if field is not None:
        if not hasattr(value, field):
            names = list(getattr(value, "_fieldnames", []) or [])
            raise _fail(who, kind, path, f"'{key}' has no field '{field}' (fields {names})")
        value = getattr(value, field)
    arr = np.asarray(value)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.number):
        raise _fail(who, kind, path, f"'{key}{'.' + field if field else ''}' is not a 2-D numeric matrix "
                                     f"(shape {arr.shape}, dtype {arr.dtype})")
    return arr


def read_lines(path: Path, who: str, kind: str = "list") -> list[str]:
    """Non-empty, stripped lines of a text file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except Exception as e:
        raise _fail(who, kind, path, e) from e
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def lines_to_ids(path: Path, who: str) -> list[str]:
    """Ids listed one per line (first whitespace-separated token)."""
    return [ln.split()[0] for ln in read_lines(path, who, "split list")]


def package_list(*parts: str) -> Path:
    """Path of a list file shipped in ``fcnseg/data/lists``."""
    return _PACKAGE_LISTS.joinpath(*parts)


def apply_lut(arr: np.ndarray, lut: np.ndarray, who: str, path: Path, lo: int = 0) -> torch.Tensor:
    """Map integer labels through ``lut`` (value ``v`` -> ``lut[v - lo]``).

    Values outside the table, and values whose entry is negative (``-1`` = not allowed), fail.
    """
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise _fail(who, "label", path, "label values are not integers")
    a = arr.astype(np.int64) - lo
    if a.size and (a.min() < 0 or a.max() >= len(lut)):
        raise _fail(who, "label", path, f"label values outside [{lo}, {lo + len(lut) - 1}] "
                                         f"(min {a.min() + lo}, max {a.max() + lo})")
    out = lut[a].astype(np.int64)
    if out.size and out.min() < 0:
        bad = sorted(set((a[out < 0] + lo).tolist()))[:8]
        raise _fail(who, "label", path, f"invalid label values {bad}")
    return torch.from_numpy(out)


def read_names(path: Path, who: str = "fcnseg.data") -> list[str]:
    """Class names, one per line, up to the first blank line (shipped lists end with a note); a UTF-8
    byte-order mark is dropped, a name listed twice is refused."""
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()
    except Exception as e:
        raise _fail(who, "class list", path, e) from e
    names: list[str] = []
    for ln in lines:
        if not ln.strip():
            if names:
                break
            continue
        if ln.strip() in names:
            raise _fail(who, "class list", path, f"duplicate class name {ln.strip()!r} "
                                                 f"(entries {names.index(ln.strip()) + 1} and {len(names) + 1})")
        names.append(ln.strip())
    return names


def read_indexed_names(path: Path, who: str = "fcnseg.data") -> dict[int, str]:
    """``index: name`` lines (PASCAL-Context ``labels.txt`` format) -> {index: name}."""
    out = {}
    for n, ln in enumerate(read_lines(path, who, "label list"), 1):
        idx, sep, name = ln.partition(":")
        if not sep or not idx.strip().isdigit():
            raise _fail(who, "label list", path, f"line {n} is not 'index: name': {ln!r}")
        out[int(idx)] = name.strip()
    return out
