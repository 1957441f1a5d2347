"""Request bodies read under a byte limit (checked as they stream in), images decoded under a pixel limit.

Every refusal is a :class:`Problem`: an HTTP status and a one-line message naming the upload.
"""
from __future__ import annotations

import asyncio
import io
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.types import Message, Receive

from fcnseg.data.io import TooManyPixelsError, load_image_file, to_rgb_uint8
from fcnseg.errors import FcnsegError, one_line
from fcnseg.serve.limits import Limits

__all__ = ["Problem", "Upload", "read_uploads", "decode"]

# raw bodies: besides image/*, what clients send by default (curl --data-binary says urlencoded)
_RAW_TYPES = ("application/octet-stream", "application/x-www-form-urlencoded")


class Problem(FcnsegError):
    """A request refused: ``status`` (400, 405, 408, 413, 415, 503 …) and a one-line message."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.headers = status, headers or {}


@dataclass(frozen=True)
class Upload:
    """One image as sent: a display name (the file's name, or ``image``) and its bytes."""

    name: str
    data: bytes


def _limited(receive: Receive, max_bytes: int) -> Receive:
    """``receive`` that refuses (413) as soon as the body passes ``max_bytes``, before buffering more."""
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > max_bytes:
                raise Problem(413, f"request body is over --max-bytes {max_bytes}")
        return message

    return wrapped


def _name(filename: str | None, n: int) -> str:
    """A safe display name: the file name without folders or control characters, else ``image-<n>``."""
    base = re.split(r"[\\/]", filename or "")[-1]
    base = re.sub(r"[\x00-\x1f\x7f]", "", base).strip()[:120]
    return base or f"image-{n}"


async def read_uploads(request: Request, limits: Limits) -> list[Upload]:
    """The images of a request: the file fields of a ``multipart/form-data`` body, or the raw body as one
    image (``image/*``, ``application/octet-stream`` or no content type)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_bytes:
        raise Problem(413, f"request body of {declared} bytes is over --max-bytes {limits.max_bytes}")
    kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    limited = Request(request.scope, _limited(request.receive, limits.max_bytes))
    try:
        async with asyncio.timeout(limits.read_timeout):
            if kind == "multipart/form-data":
                return await _multipart(limited, limits)
            if kind and not kind.startswith("image/") and kind not in _RAW_TYPES:
                raise Problem(415, f"unsupported Content-Type {kind}: send an image (image/*, "
                                   "application/octet-stream) or multipart/form-data with image files")
            body = await limited.body()
    except TimeoutError:
        raise Problem(408, f"request body not received within {limits.read_timeout:g} s") from None
    if not body:
        raise Problem(400, "empty request body: send an image, or multipart/form-data with image files")
    return [Upload("image", body)]


async def _multipart(request: Request, limits: Limits) -> list[Upload]:
    form = await request.form(max_files=limits.max_images, max_fields=64, max_part_size=64 * 1024)
    try:
        files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if not files:
            raise Problem(400, "the multipart body holds no file: send each image as a file field")
        return [Upload(_name(f.filename, n), await f.read()) for n, f in enumerate(files, 1)]
    finally:
        await form.close()


def decode(upload: Upload, max_pixels: int) -> np.ndarray:
    """An upload → uint8 (H, W, 3) RGB by the one image reader (:func:`fcnseg.data.io.load_image_file`:
    pixel limit from the header before decoding, EXIF orientation, first frame); refusals as
    :class:`Problem` 400 (empty, truncated, corrupt), 413 (over ``max_pixels``) or 415 (not an image)."""
    if not upload.data:
        raise Problem(400, f"{upload.name}: empty file (0 bytes)")
    try:
        im = load_image_file(io.BytesIO(upload.data), max_pixels, exif=True)
    except TooManyPixelsError as e:
        raise Problem(413, f"{upload.name}: image is {e.describe()}, over --max-pixels {max_pixels}") from None
    except Image.UnidentifiedImageError:
        raise Problem(415, f"{upload.name}: not an image (or an unsupported format)") from None
    except MemoryError:
        raise
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError … on truncated or corrupt files
        raise Problem(400, f"{upload.name}: cannot decode the image: {one_line(e, 200)}") from None
    try:
        return to_rgb_uint8(im)
    except MemoryError:
        raise
    except Exception as e:
        raise Problem(400, f"{upload.name}: cannot decode the image: {one_line(e, 200)}") from None
    finally:
        im.close()
