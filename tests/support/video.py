"""Small videos written with PyAV for the video tests (independently of fcnseg's own writer)."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def clip_frames(n: int = 8, size: tuple[int, int] = (48, 64), seed: int = 0) -> list[np.ndarray]:
    """``n`` RGB uint8 (H, W, 3) frames: smooth noise with a bright square moving right."""
    h, w = size
    rng = np.random.default_rng(seed)
    base = np.kron(rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3)), np.ones((8, 8, 1)))[:h, :w].astype(np.uint8)
    frames = []
    for i in range(n):
        f = base.copy()
        x = (i * 5) % max(1, w - 16)
        f[h // 4:h // 4 + 16, x:x + 16] = (250, 240, 30)
        frames.append(f)
    return frames


def write_clip(path: Path, n: int = 8, size: tuple[int, int] = (48, 64), fps: int = 5, seed: int = 0) -> Path:
    """An H.264 MP4 of :func:`clip_frames` (``size`` is H, W) at ``fps``."""
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=Fraction(fps))
        s.height, s.width = size
        s.pix_fmt = "yuv420p" if size[0] % 2 == 0 and size[1] % 2 == 0 else "yuv444p"
        for f in clip_frames(n, size, seed):
            out.mux(s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        out.mux(s.encode())
    return Path(path)


def decoded_frames(path: Path) -> list[np.ndarray]:
    """Every frame of the video ``path`` as RGB uint8, decoded by PyAV."""
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]


def video_info(path: Path) -> dict:
    """Frame count (decoded), width, height and average frame rate of the first video stream."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        n = sum(1 for _ in c.decode(s))
        return {"frames": n, "width": s.codec_context.width, "height": s.codec_context.height,
                "fps": s.average_rate}
