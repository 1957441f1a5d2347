"""What one server accepts: bytes per request, pixels per image, images per request, requests admitted."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Limits"]


@dataclass(frozen=True)
class Limits:
    """``max_bytes``: a request body's size (checked while it streams in; 413 past it). ``max_pixels``: an
    image's W×H, read from its header before decoding (413 past it: decompression bombs stop here).
    ``max_images``: files in one multipart request. ``max_queue``: requests admitted at once, the one
    the model is running and those waiting for it (503 past it). ``read_timeout``: seconds a client may
    take to send its body (408 past it, so slow senders cannot hold the queue)."""

    max_bytes: int = 20 * 2**20
    max_pixels: int = 2048 * 2048
    max_images: int = 16
    max_queue: int = 16
    read_timeout: float = 30.0
