"""Atomic file writes: a temporary file in the target's folder, fsynced, then renamed over it,
so a reader sees the old file or the new one, never half of one. A failed write names the path."""
from __future__ import annotations

import errno
import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from fcnseg.errors import FcnsegError

__all__ = ["atomic_write", "write_bytes", "write_text", "write_json", "remove_stale_temporaries", "WriteError",
           "TMP_SUFFIX"]

TMP_SUFFIX = ".tmp"


class WriteError(FcnsegError, OSError):
    """A file the project writes could not be written (disk full, read-only folder, ...); names the path."""

    def __str__(self) -> str:  # the message, never OSError's "[Errno ...] ..." layout
        return str(self.args[0]) if self.args else ""


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return "no space left on device"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror.lower()
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return "no space left on device" if "file write failed" in text or "No space" in text else text


def write_error(path: str | os.PathLike, e: BaseException) -> WriteError:
    """The one-line error for a failed write of ``path``."""
    # one argument, no filename: str(err) is the message (assigning err.filename, even None, would make
    # str() print "[Errno None] None: None")
    return WriteError(f"cannot write {path}: {_reason(e)}")


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", **open_kwargs) -> Iterator[IO]:
    """``with atomic_write(p) as f: f.write(...)`` — ``p`` appears only once the block succeeds.

    An ``OSError`` while writing (or torch's stream-writer ``RuntimeError``, which is how ``torch.save``
    reports a full disk) becomes a :class:`WriteError` naming ``p``; the temporary file is removed."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    except OSError as e:
        raise write_error(path, e) from e
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, WriteError):
            raise
        if isinstance(e, OSError) or (isinstance(e, RuntimeError) and "inline_container" in str(e)):
            raise write_error(path, e) from e
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_write(path) as f:
        f.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any, **dump_kwargs) -> Path:
    dump_kwargs.setdefault("indent", 2)
    return write_text(path, json.dumps(obj, **dump_kwargs) + "\n")


def remove_stale_temporaries(folder: str | os.PathLike, older_than_s: float = 0.0) -> list[Path]:
    """Remove the temporaries a killed writer left in ``folder`` (``.NAME.XXXX.tmp``); returns them.

    Only files of :func:`atomic_write`'s own pattern are touched; ``older_than_s`` spares ones a live
    writer may still be filling."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    now = time.time()
    for p in folder.glob(f".*{TMP_SUFFIX}"):
        try:
            if p.is_file() and now - p.stat().st_mtime >= older_than_s:
                p.unlink()
                removed.append(p)
        except OSError:
            continue
    return removed
