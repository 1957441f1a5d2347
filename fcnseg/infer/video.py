"""Videos through a segmenter: frames decoded as a stream (PyAV, the ``[video]`` extra), labelled in
batches, written back as an overlay video (H.264 MP4, the input's frame rate and size) and optionally
one label PNG per frame. Memory stays bounded by one batch of frames; outputs appear atomically."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fcnseg.atomic import TMP_SUFFIX, atomic_write, write_error
from fcnseg.data.io import padded_pixels, shown
from fcnseg.errors import ConfigError, FcnsegError, one_line
from fcnseg.visualize import colorize, overlay, save_image

__all__ = ["VIDEO_EXTENSIONS", "VideoReadError", "is_video", "VideoReader", "write_video", "predict_video",
           "FRAMES_SUFFIX", "VIDEO_SUFFIX"]

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv")
VIDEO_SUFFIX = "_overlay.mp4"   # <stem>_overlay.mp4, as an image's <stem>_overlay.png
FRAMES_SUFFIX = "_frames"       # <stem>_frames/000000_label.png, ...
DEFAULT_FPS = Fraction(25)      # for a stream that declares no rate


class VideoReadError(FcnsegError, ValueError):
    """A video file that cannot be decoded (corrupt, truncated, no video stream, unsupported codec)."""


def is_video(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def _av():
    try:
        import av  # noqa: PLC0415 (optional: the [video] extra, needed only when a video is given)
    except ImportError:
        raise ConfigError("video input needs PyAV: pip install 'fcnseg[video]'") from None
    return av


def _reason(e: BaseException) -> str:
    return one_line(e, 200) if not getattr(e, "strerror", None) else str(e.strerror)


class VideoReader(contextlib.AbstractContextManager):
    """``with VideoReader(path) as v:`` — ``v.width``, ``v.height``, ``v.fps`` (a Fraction), ``v.frames``
    (the container's count, 0 when unknown) and ``iter(v)``: uint8 (H, W, 3) RGB frames, decoded one at
    a time. Any failure is a :class:`VideoReadError` naming the file; above ``max_pixels`` (counting the
    network's ``pad`` px on every side; ``None``: no limit) it is refused before decoding."""

    def __init__(self, path: str | os.PathLike, max_pixels: int | None = None, pad: int = 0) -> None:
        self.path = Path(path)
        self._av = av = _av()
        try:
            self._container = av.open(str(self.path))
        except av.FFmpegError as e:
            raise VideoReadError(f"cannot read video {shown(self.path)}: {_reason(e)}") from None
        try:
            fmt = self._container.format.name
            if fmt.endswith("_pipe") or fmt == "image2":  # FFmpeg reads a still image as a 1-frame video
                raise VideoReadError(f"cannot read video {shown(self.path)}: a still image ({fmt}), not a video")
            if not self._container.streams.video:
                raise VideoReadError(f"cannot read video {shown(self.path)}: no video stream")
            self._stream = s = self._container.streams.video[0]
            s.thread_type = "AUTO"
            self.width, self.height = int(s.codec_context.width), int(s.codec_context.height)
            if self.width < 1 or self.height < 1:
                raise VideoReadError(f"cannot read video {shown(self.path)}: no frame size in its header")
            if max_pixels is not None and padded_pixels(self.width, self.height, pad) > max_pixels:
                raise VideoReadError(f"video {shown(self.path)} has {self.width}x{self.height} frames, above "
                                     f"max_pixels={max_pixels}; predict them by tiles (--tile)")
            rate = s.average_rate or s.guessed_rate
            self.fps = Fraction(rate) if rate and rate > 0 else DEFAULT_FPS
            self.frames = int(s.frames or 0)
        except BaseException:
            self._container.close()
            raise

    def __iter__(self) -> Iterator[np.ndarray]:
        av = self._av
        frames = self._container.decode(self._stream)
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                return
            except av.FFmpegError as e:
                raise VideoReadError(f"cannot read video {shown(self.path)}: {_reason(e)}") from None
            rgb = frame.to_ndarray(format="rgb24")
            if rgb.shape[:2] != (self.height, self.width):
                raise VideoReadError(f"cannot read video {shown(self.path)}: frame size changes mid-stream "
                                     f"({self.width}x{self.height} to {rgb.shape[1]}x{rgb.shape[0]})")
            yield rgb

    def __exit__(self, *exc) -> None:
        self._container.close()


@contextlib.contextmanager
def write_video(path: str | os.PathLike, width: int, height: int, fps: Fraction, crf: int = 18
                ) -> Iterator[Callable[[np.ndarray], None]]:
    """``with write_video(path, width, height, fps) as write: write(rgb)`` — H.264 in MP4 (yuv420p, or
    yuv444p for odd sizes, which 4:2:0 cannot hold) into a temporary file renamed over ``path`` only when
    the block succeeds; a failed write raises :class:`fcnseg.atomic.WriteError` naming ``path``."""
    av = _av()
    with atomic_write(path) as f:
        try:
            out = av.open(f, "w", format="mp4")
        except av.FFmpegError as e:
            raise write_error(path, e) from None
        try:
            s = out.add_stream("libx264", rate=fps)
            s.width, s.height = width, height
            s.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
            s.options = {"crf": str(crf)}
            yield lambda rgb: out.mux(s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), "rgb24")))
            out.mux(s.encode())  # flush the encoder
            out.close()          # writes the index
        except BaseException as e:
            with contextlib.suppress(Exception):
                out.close()
            if isinstance(e, av.FFmpegError):
                raise write_error(path, e) from None
            raise


@contextlib.contextmanager
def _frames_folder(final: Path) -> Iterator[Path]:
    """A temporary folder beside ``final`` that replaces it once the block succeeds (removed if not)."""
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=TMP_SUFFIX, dir=final.parent))
    except OSError as e:
        raise write_error(final, e) from e
    try:
        yield tmp
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and not isinstance(e, FcnsegError):
            raise write_error(final, e) from e
        raise


def _batches(frames: Iterator[np.ndarray], n: int) -> Iterator[list[np.ndarray]]:
    batch: list[np.ndarray] = []
    for f in frames:
        batch.append(f)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def predict_video(labels_of: Callable[[list[np.ndarray]], Sequence[np.ndarray]], path: str | os.PathLike,
                  out_dir: str | os.PathLike, stem: str, *, palette: np.ndarray | Sequence, alpha: float = 0.5,
                  overlay_video: bool = True, frames: bool = False, batch_size: int = 1, progress: bool = False,
                  max_pixels: int | None = None, pad: int = 0) -> dict:
    """Label every frame of the video ``path`` (``labels_of``: a batch of RGB frames → their label maps),
    ``batch_size`` frames at a time, with a tqdm bar in frames/s when ``progress``.

    Writes ``<stem>_overlay.mp4`` (unless not ``overlay_video``; no sound) and, with ``frames``,
    ``<stem>_frames/NNNNNN_label.png`` (palette PNGs, frame numbers from 0) into ``out_dir``. Returns
    ``{"size": (H, W), "frames": n, "fps": Fraction, "counts": per-class pixel counts, "overlay_path",
    "frames_path"}``. Raises :class:`VideoReadError` naming the file; nothing is left half-written.
    """
    out_dir = Path(out_dir)
    video_path = out_dir / f"{stem}{VIDEO_SUFFIX}" if overlay_video else None
    frames_path = out_dir / f"{stem}{FRAMES_SUFFIX}" if frames else None
    counts = np.zeros(0, np.int64)
    n = 0
    with contextlib.ExitStack() as stack:
        v = stack.enter_context(VideoReader(path, max_pixels, pad))
        write = stack.enter_context(write_video(video_path, v.width, v.height, v.fps)) if video_path else None
        folder = stack.enter_context(_frames_folder(frames_path)) if frames_path else None
        bar = stack.enter_context(tqdm(total=v.frames or None, unit="frame", desc=shown(Path(path).name),
                                       disable=not progress, leave=False, dynamic_ncols=True))
        for batch in _batches(iter(v), max(1, int(batch_size))):
            for rgb, label in zip(batch, labels_of(batch)):
                c = np.bincount(label.reshape(-1), minlength=len(counts))
                counts = np.pad(counts, (0, len(c) - len(counts))) + c
                if write is not None:
                    write(np.asarray(overlay(rgb, label, palette, alpha)))
                if folder is not None:
                    save_image(colorize(label, palette), folder / f"{n:06d}_label.png")
                n += 1
            bar.update(len(batch))
        if n == 0:
            raise VideoReadError(f"cannot read video {shown(path)}: no frame could be decoded")
    return {"size": (v.height, v.width), "frames": n, "fps": v.fps, "counts": counts,
            "overlay_path": video_path, "frames_path": frames_path}
