"""Training logs: CSV (``out/log.csv``), optional TensorBoard, and SIGINT/SIGTERM handling."""
from __future__ import annotations

import csv
import io
import os
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

from fcnseg.atomic import atomic_write, write_error
from fcnseg.errors import FcnsegError, first_line

__all__ = ["CsvLog", "TensorBoard", "StopRequest", "RunLock", "LOG_FIELDS", "write_csv"]

LOG_FIELDS = ("iter", "epoch", "loss", "lr", "img_per_s", "elapsed")


class CsvLog:
    """Appends rows to a CSV; on resume rows beyond the resumed iteration are dropped first."""

    def __init__(self, path: str | Path, resume_iter: int | None = None, fields: tuple[str, ...] = LOG_FIELDS):
        self.path, self.fields = Path(path), fields
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows: list[dict] = []
        if resume_iter is not None and self.path.is_file():
            try:
                with self.path.open(newline="", encoding="utf-8") as f:
                    rows = [r for r in csv.DictReader(f) if _int(r.get("iter")) <= resume_iter]
            except (OSError, UnicodeDecodeError, csv.Error) as e:
                raise FcnsegError(f"cannot resume the training log {self.path}: {first_line(e)} "
                                  "(move it away to start a new one)") from None
        write_csv(self.path, rows, fields)

    def write(self, row: dict[str, Any]) -> None:
        """Append one row in a single write (a reader never sees half a row); errors name the file."""
        buf = io.StringIO()
        csv.DictWriter(buf, fieldnames=self.fields, extrasaction="ignore").writerow(
            {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        try:
            with self.path.open("a", newline="") as f:
                f.write(buf.getvalue())
                f.flush()
        except OSError as e:
            raise write_error(self.path, e) from e


def write_csv(path: str | Path, rows: list[dict], fields: list[str] | tuple[str, ...]) -> None:
    """Write a whole CSV atomically (header and ``rows``)."""
    with atomic_write(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(fields), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def _int(v: Any) -> int:
    try:
        return int(float(v))
    except (TypeError, ValueError):
        return 1 << 62


class TensorBoard:
    """``SummaryWriter`` when tensorboard is installed and wanted, else a silent no-op."""

    def __init__(self, logdir: str | Path, enabled: bool) -> None:
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # tensorboard not installed
            warnings.warn("train.tensorboard is on but tensorboard is not installed; logging to CSV only",
                          stacklevel=2)
            return
        self.writer = SummaryWriter(str(logdir))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class StopRequest:
    """SIGINT/SIGTERM set a flag the loop checks after each step; a second signal aborts at once.

    Installed only in the main thread; previous handlers come back on exit.
    """

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._previous: dict[int, Any] = {}
        self._pid = os.getpid()

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self.handle)
        return self

    def handle(self, signum: int, frame: Any = None) -> None:
        if os.getpid() != self._pid:  # a forked DataLoader worker inherited the handler: the main process speaks
            return
        if self.requested:  # second signal: give up without saving
            self.__exit__()
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        print(f"\n{self.signal_name} received: finishing this step and saving a checkpoint "
              "(send again to abort without saving)", file=sys.stderr, flush=True)

    def __exit__(self, *exc: Any) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)
        self._previous = {}


class RunLock:
    """An exclusive lock on a run folder (``OUT/.fcnseg.lock`` holding the owner's pid), so two runs
    never write into one folder. ``fcntl.flock`` dies with its process: a stale lock file is taken over."""

    NAME = ".fcnseg.lock"

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / self.NAME
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:  # no flock (Windows): unlocked, as before
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise write_error(self.path, e) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            owner = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise FcnsegError(f"{self.path.parent} is in use by another run (pid {owner}, lock {self.path}); "
                              "wait for it or choose another out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the flock
            self._fd = None
