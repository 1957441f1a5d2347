"""The training loop: ``train(cfg)``, used by ``fcnseg train``.

Iteration-based (epochs are seeded permutations of the training set); checkpoints hold
everything a resume needs (weights, optimizer, scheduler, grad scaler, RNG states, iteration),
so train K + resume K == train 2K bit for bit on CPU. SIGINT/SIGTERM finish the step, save and
return; SIGKILL loses at most the steps since the last checkpoint (files are written atomically).
Under ``torchrun`` the global batch is split over ranks (DDP); only rank 0 writes.
"""
from __future__ import annotations

import copy
import gc
import math
import os
import random
import signal
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch.utils.data import DataLoader, Sampler

from fcnseg.atomic import remove_stale_temporaries, write_text
from fcnseg.config import RunConfig, apply_preset
from fcnseg.errors import CheckpointError, ConfigError, FcnsegError, first_line
from fcnseg import distributed as D
from fcnseg.models.checkpoint import load_checkpoint, save_checkpoint
from fcnseg.evaluate.scoring import plain
from fcnseg.train.losses import IGNORE_INDEX, check_labels, loss_denominator, loss_numerator
from fcnseg.train.optim import build_optimizer, build_scheduler
from fcnseg.train.runlog import CsvLog, RunLock, StopRequest, TensorBoard, write_csv
from fcnseg.train.data import (FeatureCache, First, GlobalBatchSampler, SeededItems, Transformed, build_transform,
                         cacheable, collate_seeded, unwrap_worker_error)
from fcnseg.train.model import (Resumable, build_model, dataset_classes, freeze_backbone, init_from_checkpoint, keep_frozen_eval)

__all__ = ["train", "score", "rng_state", "set_rng_state"]

_MAX_CONSECUTIVE_SKIPS = 100

# settings a resumed run may change: they extend the run or change how it is run, not what it computes
RESUMABLE = frozenset({
    "out", "train.resume", "train.iterations", "train.epochs", "train.progress", "train.log_every",
    "train.checkpoint_every", "train.eval_every", "train.eval_batch_size", "train.eval_flip", "train.tensorboard",
    "train.device", "train.nonfinite", "train.cache_features", "train.deterministic", "data.workers",
    "data.skip_bad", "data.root", "data.val_root", "model.weights", "model.init_from"})


def train(cfg: RunConfig, *, train_set: Any = None, val_set: Any = None, overwrite: bool = False) -> dict[str, Any]:
    """Train as ``cfg`` says; return a summary (iterations, loss, checkpoint paths, metrics...).

    ``train_set``/``val_set`` replace the datasets named in ``cfg.data`` (items as from
    ``fcnseg.data.build_dataset``; the config's transforms still apply). The run folder is locked
    while training; a fresh run over a folder holding a run is refused unless ``overwrite``.
    """
    cfg = apply_preset(copy.deepcopy(cfg))
    ctx = D.setup(cfg.train.device)
    ok = False
    saved_flags = (torch.are_deterministic_algorithms_enabled(),
                   torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark)
    lock = RunLock(cfg.out) if ctx.is_main else nullcontext()
    try:
        with lock:
            result = _train_locked(cfg, ctx, train_set, val_set, overwrite)
        ok = True
        return result
    finally:
        torch.use_deterministic_algorithms(saved_flags[0], warn_only=saved_flags[1])
        torch.backends.cudnn.benchmark = saved_flags[2]
        D.cleanup(ctx, ok)


def _train_locked(cfg: RunConfig, ctx: D.DistContext, train_set: Any, val_set: Any, overwrite: bool) -> dict:
    if ctx.is_main:
        stale = remove_stale_temporaries(cfg.out)
        if stale:
            _say(f"removed {len(stale)} temporary file(s) a killed write left in {cfg.out}")
    run = _Run(cfg, ctx, train_set, val_set, overwrite=overwrite)
    result = run.run()
    if ctx.world_size > 1:  # free the DDP reducer now, while all ranks are in step
        del run
        gc.collect()
        D.barrier()
    return result


def score(cfg: RunConfig) -> dict[str, Any] | None:
    """Score the net ``cfg`` builds (an earlier run's weights via ``model.init_from``) on its
    validation split with its evaluation settings (``train.eval_flip``, ...), without training;
    ``None`` when it has no validation split."""
    cfg = apply_preset(copy.deepcopy(cfg))
    ctx = D.setup(cfg.train.device)
    ok = False
    try:
        metrics = _Run(cfg, ctx, None, None, overwrite=True)._evaluate()  # writes nothing
        ok = True
        return metrics
    finally:
        D.cleanup(ctx, ok)


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


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


class _Shard(Sampler):
    """Rank ``r`` of ``W`` evaluates items r, r+W, ... (no padding, so nothing is counted twice)."""

    def __init__(self, n: int, rank: int, world: int) -> None:
        self.idx = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.idx)

    def __len__(self) -> int:
        return len(self.idx)


def _worker_init(worker_id: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle (one notice)
    s = torch.initial_seed() % (1 << 32)
    random.seed(s)
    np.random.seed(s)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class _Run:
    def __init__(self, cfg: RunConfig, ctx: D.DistContext, train_set: Any, val_set: Any,
                 overwrite: bool = False) -> None:
        self.cfg, self.ctx, self.overwrite = cfg, ctx, overwrite
        t, d = cfg.train, cfg.data
        self.main = ctx.is_main
        self.out = Path(cfg.out)
        self.device = ctx.device
        self.world = ctx.world_size
        if t.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
            torch.backends.cudnn.benchmark = False
        elif self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        _seed_all(t.seed)
        self.resume_path = self._resume_path()  # before any work: a refusal comes at once

        # data
        self.train_raw, self.val_raw = self._datasets(train_set, val_set)
        names = getattr(self.train_raw, "classes", None)   # recorded so predict can name and colour classes
        self.class_names = list(names) if names is not None else None
        palette = getattr(self.train_raw, "palette", None)
        self.palette = palette.tolist() if hasattr(palette, "tolist") else palette
        self.classes = cfg.model.num_classes if cfg.model.num_classes is not None else dataset_classes(self.train_raw)

        # model (same initialisation on every rank)
        torch.manual_seed(t.seed)
        self.model = build_model(cfg.model, self.classes)
        self.heads = sorted(self.model.heads)
        self.frozen: list[str] = freeze_backbone(self.model) if t.freeze_backbone else []
        if cfg.model.init_from and self.resume_path is None:
            copied, fresh = init_from_checkpoint(self.model, cfg.model.init_from)
            listed = f" ({', '.join(fresh[:6])}{', ...' if len(fresh) > 6 else ''})" if fresh else ""
            self._say(f"initialised {len(copied)} tensors from {cfg.model.init_from}; "
                      f"{len(fresh)} keep their initialisation{listed}")
        self.model.to(self.device)
        if t.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.pre = self.model.preprocessing
        self.class_weights = self._class_weights()
        self.cw_cpu = None if self.class_weights is None else self.class_weights.cpu()

        # schedule
        B = d.batch_size
        if len(self.train_raw) < B:
            raise ConfigError(f"data.batch_size {B} is larger than the training set ({len(self.train_raw)} items)")
        if B % (self.world * t.accumulate):
            raise ConfigError(f"data.batch_size {B} is the global batch: it must be divisible by world size "
                              f"{self.world} × train.accumulate {t.accumulate}")
        self.batch = B
        self.steps_per_epoch = len(self.train_raw) // B
        self.total = t.iterations if t.iterations is not None else t.epochs * self.steps_per_epoch

        self.optimizer = build_optimizer(self.model, t.optimizer, t.lr, momentum=t.momentum,
                                         weight_decay=t.weight_decay, bias_lr_mult=t.bias_lr_mult,
                                         backbone_lr_mult=t.backbone_lr_mult,
                                         backbone_bias_lr_mult=t.backbone_bias_lr_mult,
                                         backbone_bias_decay_mult=t.backbone_bias_decay_mult)
        self.scheduler = build_scheduler(self.optimizer, t.schedule, self.total, step_size=t.step_size,
                                         gamma=t.gamma, poly_power=t.poly_power, warmup_iters=t.warmup_iters)
        self.amp_dtype = self._amp_dtype()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)

        # state
        self.iteration, self.best, self.elapsed0, self.metrics = 0, None, 0.0, None
        self.last_good: Path | None = None
        if self.resume_path is not None:
            self._resume(self.resume_path)
        else:
            torch.manual_seed(t.seed + ctx.rank)  # per-rank dropout stream (rank 0: as one process)
        self.ddp = self.world > 1
        self.net = D.wrap_model(Resumable(self.model), ctx, t.sync_bn)

    # --- setup helpers ----------------------------------------------------------------------------
    def _say(self, msg: str) -> None:
        if self.main:
            bar = getattr(self, "bar", None)
            if bar is not None:
                bar.write(msg, file=sys.stderr)
            else:
                _say(msg)

    def _datasets(self, train_set: Any, val_set: Any) -> tuple[Any, Any]:
        d, t = self.cfg.data, self.cfg.train
        if train_set is None or (val_set is None and d.val_split):
            from fcnseg.data import build_dataset

            if d.root is None:
                raise ConfigError("data.root is not set (the dataset's folder)")

            def build(split: str, name: str | None = None, root: str | None = None):
                try:
                    return build_dataset(name or d.dataset, root or d.root, split, skip_bad=d.skip_bad, **d.options)
                except KeyError as e:
                    raise ConfigError(f"data.dataset: {e.args[0] if e.args else e}") from None
                except TypeError as e:
                    raise ConfigError(f"data.options for {d.dataset}: {e}") from None

            if train_set is None:
                train_set = build(d.train_split)
            if val_set is None and d.val_split:
                val_set = build(d.val_split, d.val_dataset, d.val_root)
        if d.max_items:
            train_set = First(train_set, d.max_items)
            val_set = First(val_set, d.max_items) if val_set is not None else None
        return train_set, val_set

    def _resume_path(self) -> Path | None:
        r = self.cfg.train.resume
        if not r:
            if (self.out / "last.pt").is_file() and not self.overwrite:
                raise ConfigError(f"{self.out} holds a run ({self.out / 'last.pt'}); continue it with --resume auto "
                                  "(train.resume=auto) or replace it with --overwrite")
            return None
        if r == "auto":
            p = self.out / "last.pt"
            if p.is_file():
                return p
            self._say(f"train.resume=auto: no checkpoint in {self.out}; starting fresh")
            return None
        return Path(r)

    def _class_weights(self) -> torch.Tensor | None:
        cw = self.cfg.train.class_weights
        if cw is None:
            return None
        if isinstance(self.classes, dict):
            raise ConfigError("train.class_weights is not supported for multi-head datasets")
        if cw == "median-frequency":
            from fcnseg.data import median_frequency_weights

            w = median_frequency_weights(self.train_raw, self.classes)
            self._say("median-frequency class weights: " + " ".join(f"{x:.4g}" for x in w.tolist()))
        else:
            if len(cw) != self.classes or any(not isinstance(x, (int, float)) or x < 0 for x in cw):
                raise ConfigError(f"train.class_weights needs {self.classes} non-negative numbers, got {cw}")
            w = torch.tensor([float(x) for x in cw])
        return w.to(self.device, torch.float32)

    def _amp_dtype(self) -> torch.dtype | None:
        amp = self.cfg.train.amp
        if self.device.type != "cuda":
            if amp in ("bf16", "fp16"):
                warnings.warn(f"train.amp={amp} is for CUDA only; training in float32 on {self.device}", stacklevel=3)
            return None
        if amp == "off":
            return None
        if amp == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if amp == "bf16" else torch.float16

    def _resume(self, path: Path) -> None:
        ckpt = load_checkpoint(path)
        if "optimizer" not in ckpt or "iteration" not in ckpt:
            raise CheckpointError(f"{path} is not a training checkpoint (no optimizer state); "
                                  "use model.init_from to start from its weights")
        if isinstance(ckpt.get("run_config"), dict):
            _same_settings(path, ckpt["run_config"], self.cfg.to_dict())
        try:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            if ckpt.get("scaler"):
                self.scaler.load_state_dict(ckpt["scaler"])
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
            raise CheckpointError(f"cannot resume from {path}: it does not fit this run "
                                  f"({str(e).splitlines()[0][:160]})") from None
        self.iteration = int(ckpt["iteration"])
        self.best = ckpt.get("best_mean_iu")
        self.elapsed0 = float(ckpt.get("elapsed") or 0.0)
        self.metrics = ckpt.get("metrics")
        old = ckpt.get("sampler") or {}
        if old.get("batch_size") not in (None, self.batch) or old.get("seed") not in (None, self.cfg.train.seed):
            warnings.warn(f"resuming {path} with a different batch size or seed: the data order changes", stacklevel=3)
        states = ckpt.get("rng_per_rank") or []
        if states:
            same_world = int(ckpt.get("world_size", 1)) == self.world
            set_rng_state(states[self.ctx.rank] if same_world and self.ctx.rank < len(states) else states[0])
            if not same_world:
                torch.manual_seed(self.cfg.train.seed + 7919 * self.iteration + self.ctx.rank)
        self.last_good = path
        self._say(f"resumed from {path} at iteration {self.iteration}")

    # --- batches ------------------------------------------------------------------------------------
    def _batches(self):
        """Yields per step a list of ``accumulate`` micro-batches (images|None, features|None, labels, size) on CPU."""
        t, d = self.cfg.train, self.cfg.data
        sampler = GlobalBatchSampler(len(self.train_raw), self.batch, t.seed, start_step=self.iteration,
                                     total_steps=self.total, rank=self.ctx.rank, world_size=self.world,
                                     accumulate=t.accumulate)
        cache = self._cache(sampler.micro) if t.cache_features else None
        if cache is not None:
            for step in range(self.iteration, self.total):
                yield [cache.batch(mb, t.patch_p) for mb in sampler.step_micro_batches(step)]
            return
        g = torch.Generator().manual_seed(t.seed)
        loader = DataLoader(SeededItems(self.train_raw, build_transform(d, self.pre, train=True), t.patch_p),
                            batch_sampler=sampler, num_workers=d.workers, collate_fn=collate_seeded,
                            pin_memory=self.device.type == "cuda", generator=g,
                            worker_init_fn=_worker_init if d.workers else None)
        it = iter(loader)
        for _ in range(self.iteration, self.total):
            step = []
            for _ in range(t.accumulate):
                try:
                    images, labels, _seeds = next(it)
                except FcnsegError as e:  # raised in a worker: torch wraps the message in its traceback
                    raise unwrap_worker_error(e) from None
                step.append((images, None, labels, tuple(images.shape[-2:])))
            yield step

    def _cache(self, micro: int) -> FeatureCache | None:
        d = self.cfg.data
        frozen = self._cacheable_prefix()
        if not frozen:
            self._say("train.cache_features: no frozen, deterministic backbone prefix "
                      "(set train.freeze_backbone); not caching")
            return None
        if not cacheable(d):
            self._say("train.cache_features: the training transforms are random "
                      "(scale_range/crop/jitter); not caching")
            return None
        t0 = time.perf_counter()
        cache = FeatureCache.reuse_or_build(self.model, self.train_raw, frozen, self.device,
                                            build_transform(d, self.pre, True, flip=False), mirror=bool(d.flip))
        if not cache.uniform() and micro > 1:
            self._say("train.cache_features: images differ in size and micro-batches hold several; not caching")
            return None
        self._say(f"cached {'/'.join(cache.taps)} features of {len(self.train_raw)} images"
                  f"{' and their mirrors' if cache.flip else ''} "
                  f"({cache.nbytes / 2**20:.1f} MiB, {time.perf_counter() - t0:.1f}s)")
        return cache

    def _cacheable_prefix(self) -> list[str]:
        """Leading backbone stages without trainable parameters whose output is deterministic."""
        prefix = []
        for name, stage in self.model.backbone.stages.items():
            if any(p.requires_grad for p in stage.parameters()):
                break
            random_layer = any(m.training and (isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0
                                               or isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
                               for m in stage.modules())
            if random_layer and name not in self.frozen:
                break
            prefix.append(name)
        return prefix

    # --- one step -----------------------------------------------------------------------------------
    def _by_head(self, labels: Any) -> dict[str, Any]:
        """Labels per head: a single-head dataset's label map belongs to the model's one head."""
        return labels if isinstance(labels, dict) else {self.heads[0]: labels}

    def _denominators(self, micro: list) -> dict[str, float]:
        t = self.cfg.train
        if t.loss_reduction in ("sum", "image-mean"):
            return {h: float(self.batch) for h in self.heads}
        local = torch.zeros(len(self.heads), dtype=torch.float64)
        for _, _, labels, _ in micro:
            lab = self._by_head(labels)
            for i, h in enumerate(self.heads):
                local[i] += loss_denominator(lab[h], "mean", self.cw_cpu)
        D.all_reduce_sum(local)
        return {h: float(local[i]) if local[i] > 0 else 1.0 for i, h in enumerate(self.heads)}

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _step(self, micro: list) -> torch.Tensor:
        """Forward/backward of every micro-batch (no optimizer step); returns this rank's loss share."""
        den = self._denominators(micro)
        self.optimizer.zero_grad(set_to_none=True)
        acc = torch.zeros((), dtype=torch.float64, device=self.device)
        for m, (x, feats, labels, size) in enumerate(micro):
            check_labels(labels, self.classes, IGNORE_INDEX, where=f"training batch at iteration {self.iteration + 1}")
            if feats is None:
                x = self.pre(x.to(self.device, non_blocking=True))
                if self.cfg.train.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
            else:
                feats = {k: v.to(self.device, non_blocking=True) for k, v in feats.items()}
            lab = {h: v.to(self.device, non_blocking=True) for h, v in self._by_head(labels).items()}
            sync = self.net.no_sync() if self.ddp and m < len(micro) - 1 else nullcontext()
            with sync:
                with self._autocast():
                    out = self.net(x) if feats is None else self.net(features=feats, size=size)
                loss = sum(loss_numerator(out[h], lab[h], self.cfg.train.loss_reduction, self.class_weights)
                           / den[h] for h in self.heads)
                # DDP averages gradients over ranks; losses are normalised by the global batch already
                self.scaler.scale(loss * self.world).backward()
            acc += loss.detach().double()
        return acc

    # --- checkpoints --------------------------------------------------------------------------------
    def _save(self, name: str) -> Path:
        """Every rank calls this (RNG states are gathered); rank 0 writes ``out/<name>``."""
        bad = [k for k, v in self.model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise FcnsegError(f"weights became non-finite ({bad[0]}) by iteration {self.iteration}; "
                              f"not saved (last good checkpoint: {self.last_good or 'none'})")
        states = [None] * self.world
        mine = rng_state()
        if self.world > 1:
            dist.all_gather_object(states, mine)
        else:
            states = [mine]
        path = self.out / name
        if self.main:
            save_checkpoint(path, self.model, optimizer=self.optimizer.state_dict(),
                            scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict(),
                            iteration=self.iteration, epoch=self.iteration / self.steps_per_epoch,
                            rng_per_rank=states, world_size=self.world,
                            sampler={"seed": self.cfg.train.seed, "batch_size": self.batch,
                                     "position": self.iteration * self.batch, "items": len(self.train_raw)},
                            run_config=self.cfg.to_dict(), best_mean_iu=self.best,
                            elapsed=self.elapsed0 + time.perf_counter() - self.t_start,
                            metrics=plain(self.metrics, nan_to_none=False), classes=self.class_names,
                            palette=self.palette)
        D.barrier()
        if name == "last.pt":
            self.last_good = path
        return path

    # --- evaluation ---------------------------------------------------------------------------------
    def _evaluate(self) -> dict | None:
        if self.val_raw is None:
            return None
        from fcnseg.evaluate.scoring import evaluate  # a broken import is a bug to see, not a reason to skip validation
        t = self.cfg.train
        tf = build_transform(self.cfg.data, self.pre, train=False)
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # evaluation must not shift the training RNG
            val = self._val_cached(tf) if t.cache_features and t.eval_batch_size == 1 else None
            if val is None:
                val = self.val_raw if tf is None else Transformed(self.val_raw, tf)
            shard = _Shard(len(val), self.ctx.rank, self.world) if self.world > 1 else None
            metrics = evaluate(self.model, val, device=self.device, batch_size=t.eval_batch_size, sampler=shard,
                               reducer=D.all_reduce_sum if self.world > 1 else None, progress=False,
                               exclude=getattr(self.val_raw, "exclude_from_means", None), flip=t.eval_flip)
        self.model.train()
        keep_frozen_eval(self.model, self.frozen)
        return metrics

    def _val_cached(self, transform) -> Any:
        """The validation split as the frozen prefix's cached features (``train.cache_features``;
        with ``train.eval_flip`` their mirrors too), or None where no prefix is frozen."""
        frozen = self._cacheable_prefix()
        if not frozen:
            return None
        t0 = time.perf_counter()
        cache = FeatureCache.reuse_or_build(self.model, self.val_raw, frozen, self.device, transform,
                                            mirror=self.cfg.train.eval_flip)
        if not getattr(self, "_said_val_cache", False):
            self._said_val_cache = True
            self._say(f"scoring from cached {'/'.join(cache.taps)} features of {len(self.val_raw)} validation "
                      f"images{' and their mirrors' if cache.mirrors is not None else ''} "
                      f"({cache.nbytes / 2**20:.1f} MiB, {time.perf_counter() - t0:.1f}s)")
        return cache.scoring_items(self.val_raw)

    def _after_eval(self, metrics: dict | None) -> None:
        if metrics is None:
            return
        self.metrics = metrics
        miu = _mean_iu(metrics)
        self._say(f"iteration {self.iteration}: val mean IU {miu:.4f}" if miu is not None
                  else f"iteration {self.iteration}: evaluated")
        if self.main:
            row = {"iter": self.iteration, **{k: v for k, v in _flat(metrics).items()}}
            self._eval_rows.append(row)
            self._write_eval_csv()
            self.tb.scalars(self.iteration, {f"val/{k}": v for k, v in _flat(metrics).items()})
        if miu is not None and (self.best is None or miu > self.best):
            self.best = miu
            self._save("best.pt")

    def _write_eval_csv(self) -> None:
        keys = list(dict.fromkeys(k for r in self._eval_rows for k in r))
        write_csv(self.out / "eval.csv", self._eval_rows, keys)

    def _load_eval_rows(self) -> list[dict]:
        import csv

        p = self.out / "eval.csv"
        if self.resume_path is None or not p.is_file():
            return []
        try:
            with p.open(newline="", encoding="utf-8") as f:
                return [r for r in csv.DictReader(f) if float(r.get("iter") or "inf") <= self.iteration]
        except (OSError, UnicodeDecodeError, csv.Error, ValueError) as e:
            raise FcnsegError(f"cannot resume the evaluation log {p}: {first_line(e)} "
                              "(move it away to start a new one)") from None

    # --- the loop -----------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg, t = self.cfg, self.cfg.train
        self.t_start = time.perf_counter()
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            write_text(self.out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        self.log = CsvLog(self.out / "log.csv", resume_iter=self.iteration if self.resume_path else None) \
            if self.main else None
        self.tb = TensorBoard(self.out / "tb", t.tensorboard and self.main)
        self._eval_rows = self._load_eval_rows() if self.main else []
        start = self.iteration
        if start >= self.total:
            self._say(f"nothing to do: the run is already at iteration {start}/{self.total}")
        interrupted, skipped, consecutive = False, 0, 0
        window_loss, window_n, last_loss = 0.0, 0, float("nan")
        bar = None
        if self.main and t.progress:
            from tqdm import tqdm

            bar = tqdm(total=self.total, initial=start, desc="train", dynamic_ncols=True, file=sys.stderr)
        self.bar = bar
        self.net.train()
        keep_frozen_eval(self.model, self.frozen)
        tick = time.perf_counter()
        window_start_iter = start
        try:
            with StopRequest() as stop:
                batches = self._batches()
                while self.iteration < self.total:
                    micro = next(batches)
                    acc = self._step(micro)
                    local_bad = 0.0 if torch.isfinite(acc) else 1.0
                    flags = torch.tensor([acc.item() if not local_bad else 0.0, local_bad,
                                          1.0 if stop.requested else 0.0], dtype=torch.float64)
                    D.all_reduce_sum(flags)
                    loss, bad, stop_now = float(flags[0]), flags[1] > 0, flags[2] > 0
                    if bad:
                        self.optimizer.zero_grad(set_to_none=True)
                        msg = f"non-finite loss at iteration {self.iteration + 1}"
                        if t.nonfinite == "stop":
                            raise FcnsegError(f"{msg}; stopped without saving (last good checkpoint: "
                                              f"{self.last_good or 'none'}); lower train.lr or set "
                                              "train.nonfinite=skip")
                        skipped += 1
                        consecutive += 1
                        if self.main:
                            warnings.warn(f"{msg}: step skipped", stacklevel=1)
                        if consecutive >= _MAX_CONSECUTIVE_SKIPS:
                            raise FcnsegError(f"{consecutive} consecutive non-finite losses up to iteration "
                                              f"{self.iteration + 1}; giving up (last good checkpoint: "
                                              f"{self.last_good or 'none'})")
                    else:
                        consecutive = 0
                        self.scaler.step(self.optimizer)
                        self.scaler.update()
                        window_loss += loss
                        window_n += 1
                    self.scheduler.step()
                    self.iteration += 1
                    if bar is not None:
                        bar.update(1)
                    if self.iteration % t.log_every == 0 or self.iteration == self.total or stop_now:
                        now = time.perf_counter()
                        imgs = (self.iteration - window_start_iter) * self.batch
                        last_loss = window_loss / window_n if window_n else float("nan")
                        row = {"iter": self.iteration, "epoch": round(self.iteration / self.steps_per_epoch, 4),
                               "loss": last_loss, "lr": t.lr * self.scheduler.lr_lambdas[0](self.iteration - 1),
                               "img_per_s": imgs / max(now - tick, 1e-9),
                               "elapsed": round(self.elapsed0 + now - self.t_start, 3)}
                        if self.main:
                            self.log.write(row)
                            self.tb.scalars(self.iteration, {"train/loss": row["loss"], "train/lr": row["lr"],
                                                             "train/img_per_s": row["img_per_s"]})
                        if bar is not None:
                            bar.set_postfix(loss=f"{last_loss:.4g}", img_s=f"{row['img_per_s']:.1f}")
                        window_loss, window_n, tick, window_start_iter = 0.0, 0, now, self.iteration
                    if stop_now:
                        interrupted = True
                        path = self._save("last.pt")
                        self._say(f"stopped at iteration {self.iteration}/{self.total} "
                                  f"({stop.signal_name or 'signal'} received); checkpoint saved to {path}; "
                                  "continue with train.resume=auto")
                        break
                    final = self.iteration == self.total
                    paused = time.perf_counter()
                    if final or (t.eval_every and self.iteration % t.eval_every == 0):
                        self._after_eval(self._evaluate())
                    if final or self.iteration % t.checkpoint_every == 0:
                        self._save("last.pt")
                    tick += time.perf_counter() - paused  # img/s counts training time only
        finally:
            if "batches" in locals():
                batches.close()
            if bar is not None:
                bar.close()
            self.bar = None
            self.tb.close()
        return {"iterations": self.iteration, "total_iterations": self.total,
                "epochs": self.iteration / self.steps_per_epoch, "loss": last_loss,
                "last_checkpoint": str(self.out / "last.pt"),
                "best_checkpoint": str(self.out / "best.pt") if self.best is not None else None,
                "best_mean_iu": self.best, "metrics": self.metrics, "interrupted": interrupted,
                "skipped_steps": skipped, "log": str(self.out / "log.csv"), "out": str(self.out),
                "world_size": self.world, "rank": self.ctx.rank,
                "elapsed": self.elapsed0 + time.perf_counter() - self.t_start}


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


def _mean_iu(metrics: dict) -> float | None:
    if isinstance(metrics.get("mean_iu"), (int, float)):
        return float(metrics["mean_iu"])
    per_head = [v["mean_iu"] for v in metrics.values() if isinstance(v, dict) and isinstance(v.get("mean_iu"), float)]
    return sum(per_head) / len(per_head) if per_head else None


def _flat(metrics: dict, prefix: str = "") -> dict[str, float]:
    """Scalar metrics only (per-class lists and timings left out)."""
    out = {}
    for k, v in metrics.items():
        if k == "timing":
            continue
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[f"{prefix}{k}"] = float(v)
    return out
