"""Cache folders and the SHA-256 records kept beside cached files (one place for both).

The cache root is ``$FCNSEG_CACHE``, else ``$XDG_CACHE_HOME/fcnseg``, else ``~/.cache/fcnseg``; converted
weights live at its top, downloads and exported engines in sub-folders. A cached file ``F`` has a record
``F.sha256`` — its SHA-256, then a note (the file's name, or the model key of an exported engine) — and is
trusted only while the file still hashes to it.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from fcnseg.atomic import write_text

__all__ = ["cache_dir", "sha256_file", "record_path", "write_record", "read_record", "matches_record"]


def cache_dir(kind: str | None = None) -> Path:
    """The cache root, or its sub-folder ``kind`` (``"downloads"``, ``"engines"``); not created here."""
    if os.environ.get("FCNSEG_CACHE"):
        root = Path(os.environ["FCNSEG_CACHE"])
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fcnseg"
    return root / kind if kind else root


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def record_path(path: Path) -> Path:
    """``<file>.sha256``, the record beside a cached file."""
    return path.with_name(path.name + ".sha256")


def write_record(path: Path, note: str, digest: str | None = None) -> None:
    """Write ``path``'s record atomically: ``digest`` (default: hash the file now) and ``note``."""
    write_text(record_path(path), f"{digest or sha256_file(path)}  {note}\n")


def read_record(path: Path) -> list[str]:
    """The fields of ``path``'s record ([] when it is missing or unreadable)."""
    try:
        return record_path(path).read_text(encoding="utf-8").split()
    except (OSError, UnicodeDecodeError):
        return []


def matches_record(path: Path, *note: str) -> bool:
    """True when ``path`` exists, still hashes to its record and (when given) the record's note is ``note``."""
    fields = read_record(path)
    if not fields or not path.is_file() or (note and fields[1:] != list(note)):
        return False
    return fields[0] == sha256_file(path)
