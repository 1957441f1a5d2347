"""Training logs and progress: CSV (``out/log.csv``, ``out/eval.csv``), optional TensorBoard, the
tqdm bar and messages, and SIGINT/SIGTERM handling (stop requests)."""
from __future__ import annotations

import csv
import io
import math
import os
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

from tqdm import tqdm

from fcnseg.atomic import atomic_write, write_error
from fcnseg.errors import FcnsegError, first_line

__all__ = ["CsvLog", "EvalLog", "TensorBoard", "StopRequest", "Progress", "LOG_FIELDS", "write_csv", "say",
           "mean_iu", "flat_metrics"]

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
        try:  # optional dependency: imported only when wanted
            from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415 (optional: tensorboard is not a dependency)
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

    def __enter__(self) -> StopRequest:
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


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Progress:
    """Messages of rank 0 (through the tqdm bar while one is shown) and the bar itself."""

    def __init__(self, main: bool) -> None:
        self.main = main
        self.bar: tqdm | None = None
        self.said: set[str] = set()

    def say(self, msg: str) -> None:
        if not self.main:
            return
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            say(msg)

    def once(self, key: str, msg: str) -> None:
        """``say`` the first message given for ``key``; later ones not."""
        if key not in self.said:
            self.said.add(key)
            self.say(msg)

    def open(self, total: int, initial: int, enabled: bool) -> None:
        if self.main and enabled:
            self.bar = tqdm(total=total, initial=initial, desc="train", dynamic_ncols=True, file=sys.stderr)

    def update(self, loss: float | None = None, img_per_s: float | None = None) -> None:
        if self.bar is None:
            return
        if loss is None:
            self.bar.update(1)
        else:
            self.bar.set_postfix(loss=f"{loss:.4g}", img_s=f"{img_per_s:.1f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar = None


class EvalLog:
    """``out/eval.csv``: one row of scalar metrics per evaluation (a resume keeps the rows up to its
    iteration)."""

    def __init__(self, path: Path, resume_iter: int | None) -> None:
        self.path = path
        self.rows: list[dict] = self._load(resume_iter) if resume_iter is not None else []

    def _load(self, resume_iter: int) -> list[dict]:
        if not self.path.is_file():
            return []
        try:
            with self.path.open(newline="", encoding="utf-8") as f:
                return [r for r in csv.DictReader(f) if float(r.get("iter") or "inf") <= resume_iter]
        except (OSError, UnicodeDecodeError, csv.Error, ValueError) as e:
            raise FcnsegError(f"cannot resume the evaluation log {self.path}: {first_line(e)} "
                              "(move it away to start a new one)") from None

    def write(self, iteration: int, metrics: dict) -> None:
        self.rows.append({"iter": iteration, **flat_metrics(metrics)})
        write_csv(self.path, self.rows, list(dict.fromkeys(k for r in self.rows for k in r)))


def mean_iu(metrics: dict) -> float | None:
    """The mean IU, or the mean over heads of theirs."""
    if isinstance(metrics.get("mean_iu"), (int, float)):
        return float(metrics["mean_iu"])
    per_head = [v["mean_iu"] for v in metrics.values() if isinstance(v, dict) and isinstance(v.get("mean_iu"), float)]
    return sum(per_head) / len(per_head) if per_head else None


def flat_metrics(metrics: dict, prefix: str = "") -> dict[str, float]:
    """Scalar metrics only (per-class lists and timings left out)."""
    out = {}
    for k, v in metrics.items():
        if k == "timing":
            continue
        if isinstance(v, dict):
            out.update(flat_metrics(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[f"{prefix}{k}"] = float(v)
    return out
