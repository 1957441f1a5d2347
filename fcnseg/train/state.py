"""A run's state on disk: checkpoints (save and resume), RNG states, settings a resume keeps, the
run-folder lock.

Checkpoints hold everything a resume needs (weights, optimizer, scheduler, grad scaler, RNG states
of every rank, iteration), so train K + resume K == train 2K bit for bit on CPU.
"""
from __future__ import annotations

import os
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from fcnseg import distributed as D
from fcnseg.atomic import write_error
from fcnseg.config import RunConfig
from fcnseg.errors import CheckpointError, ConfigError, FcnsegError
from fcnseg.evaluate.scoring import plain
from fcnseg.models.base import SegmentationModel
from fcnseg.models.checkpoint import load_checkpoint, save_checkpoint

__all__ = ["RESUMABLE", "RunLock", "RunState", "Checkpoints", "resume_path", "rng_state", "set_rng_state",
           "seed_all"]

# settings a resumed run may change: they extend the run or change how it is run, not what it computes
RESUMABLE = frozenset({
    "out", "train.resume", "train.iterations", "train.epochs", "train.time_limit", "train.progress", "train.log_every",
    "train.checkpoint_every", "train.eval_every", "train.eval_batch_size", "train.eval_flip", "train.tensorboard",
    "train.device", "train.nonfinite", "train.cache_features", "train.deterministic", "data.workers",
    "data.skip_bad", "data.root", "data.val_root", "model.weights", "model.init_from"})


# --- RNG state ------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """torch (CPU and CUDA), numpy and python RNG states, in checkpoint-safe types."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(),
            "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": {"version": version, "state": list(internal), "gauss_next": gauss_next}}


def set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    if s.get("cuda") and torch.cuda.is_available() and len(s["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(s["cuda"])
    n = s["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = s["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


# --- what a run resumes from ----------------------------------------------------------------------
def resume_path(cfg: RunConfig, overwrite: bool, say) -> Path | None:
    """The checkpoint ``train.resume`` names (``auto``: ``out/last.pt`` if there); a fresh run over a
    folder holding a run is refused unless ``overwrite``."""
    out, r = Path(cfg.out), cfg.train.resume
    if not r:
        if (out / "last.pt").is_file() and not overwrite:
            raise ConfigError(f"{out} holds a run ({out / 'last.pt'}); continue it with --resume auto "
                              "(train.resume=auto) or replace it with --overwrite")
        return None
    if r == "auto":
        p = out / "last.pt"
        if p.is_file():
            return p
        say(f"train.resume=auto: no checkpoint in {out}; starting fresh")
        return None
    return Path(r)


def _flat_config(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and not prefix and k in ("model", "data", "train"):
            out.update(_flat_config(v, f"{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _same_settings(path: Path, old: dict, new: dict) -> None:
    """Refuse to resume with settings that change what the run computes (lr, schedule, model, data...):
    the checkpoint's optimizer would not use them, yet config.yaml and log.csv would claim it did."""
    was, now = _flat_config(old), _flat_config(new)
    for key in now:
        if key not in RESUMABLE and key in was and was[key] != now[key]:
            raise ConfigError(f"{key}={now[key]!r} differs from the run being resumed ({path}: {was[key]!r}); "
                              "a resumed run keeps its settings (only iterations/epochs, logging, evaluation and "
                              "device settings may change): drop the override, or start a fresh run with "
                              "--overwrite")


@dataclass
class RunState:
    """Where a run stands: what checkpoints record besides the weights and the optimizer."""

    iteration: int = 0
    best: float | None = None
    elapsed0: float = 0.0           # seconds trained before this process started
    metrics: dict | None = None
    last_good: Path | None = None
    t_start: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        return self.elapsed0 + time.perf_counter() - self.t_start


class Checkpoints:
    """Saves and resumes one run's checkpoints (``out/last.pt``, ``out/best.pt``).

    ``optim``: {"optimizer", "scheduler", "scaler"} objects; ``facts``: what every checkpoint records
    about the data (classes, palette)."""

    def __init__(self, cfg: RunConfig, ctx: D.DistContext, model: SegmentationModel, optim: dict[str, Any],
                 batch: int, steps_per_epoch: int, items: int, facts: dict[str, Any]) -> None:
        self.cfg, self.ctx, self.model, self.optim = cfg, ctx, model, optim   # optim: optimizer/scheduler/scaler
        self.batch, self.steps_per_epoch, self.items, self.facts = batch, steps_per_epoch, items, facts
        self.out = Path(cfg.out)

    def save(self, name: str, state: RunState) -> Path:
        """Every rank calls this (RNG states are gathered); rank 0 writes ``out/<name>``."""
        bad = [k for k, v in self.model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise FcnsegError(f"weights became non-finite ({bad[0]}) by iteration {state.iteration}; "
                              f"not saved (last good checkpoint: {state.last_good or 'none'})")
        states: list[Any] = [None] * self.ctx.world_size
        mine = rng_state()
        if self.ctx.world_size > 1:
            dist.all_gather_object(states, mine)
        else:
            states = [mine]
        path = self.out / name
        if self.ctx.is_main:
            save_checkpoint(path, self.model, **{k: v.state_dict() for k, v in self.optim.items()},
                            iteration=state.iteration, epoch=state.iteration / self.steps_per_epoch,
                            rng_per_rank=states, world_size=self.ctx.world_size,
                            sampler={"seed": self.cfg.train.seed, "batch_size": self.batch,
                                     "position": state.iteration * self.batch, "items": self.items},
                            run_config=self.cfg.to_dict(), best_mean_iu=state.best, elapsed=state.elapsed(),
                            metrics=plain(state.metrics, nan_to_none=False), **self.facts)
        D.barrier()
        if name == "last.pt":
            state.last_good = path
        return path

    def resume(self, path: Path, say) -> RunState:
        """Load weights, optimizer, scheduler, scaler and this rank's RNG states from ``path``."""
        ckpt = load_checkpoint(path)
        if "optimizer" not in ckpt or "iteration" not in ckpt:
            raise CheckpointError(f"{path} is not a training checkpoint (no optimizer state); "
                                  "use model.init_from to start from its weights")
        if isinstance(ckpt.get("run_config"), dict):
            _same_settings(path, ckpt["run_config"], self.cfg.to_dict())
        try:
            self.model.load_state_dict(ckpt["model"])
            for k, v in self.optim.items():
                if k != "scaler" or ckpt.get(k):  # checkpoints of runs without AMP may lack a scaler
                    v.load_state_dict(ckpt[k])
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
            raise CheckpointError(f"cannot resume from {path}: it does not fit this run "
                                  f"({str(e).splitlines()[0][:160]})") from None
        state = RunState(int(ckpt["iteration"]), ckpt.get("best_mean_iu"), float(ckpt.get("elapsed") or 0.0),
                         ckpt.get("metrics"), path)
        self._restore_rng(path, ckpt, state.iteration)
        say(f"resumed from {path} at iteration {state.iteration}")
        return state

    def _restore_rng(self, path: Path, ckpt: dict, iteration: int) -> None:
        old = ckpt.get("sampler") or {}
        if old.get("batch_size") not in (None, self.batch) or old.get("seed") not in (None, self.cfg.train.seed):
            warnings.warn(f"resuming {path} with a different batch size or seed: the data order changes", stacklevel=4)
        states = ckpt.get("rng_per_rank") or []
        if states:
            rank, world = self.ctx.rank, self.ctx.world_size
            same_world = int(ckpt.get("world_size", 1)) == world
            set_rng_state(states[rank] if same_world and rank < len(states) else states[0])
            if not same_world:
                torch.manual_seed(self.cfg.train.seed + 7919 * iteration + rank)


class RunLock:
    """An exclusive lock on a run folder (``OUT/.fcnseg.lock`` holding the owner's pid), so two runs
    never write into one folder. ``fcntl.flock`` dies with its process: a stale lock file is taken over."""

    NAME = ".fcnseg.lock"

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / self.NAME
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        try:
            import fcntl  # noqa: PLC0415 (optional: POSIX only; absent on Windows, where runs go unlocked)
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
