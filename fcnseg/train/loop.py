"""The training loop: ``train(cfg)``, used by ``fcnseg train``, and ``score(cfg)``.

Iteration-based (epochs are seeded permutations of the training set); checkpoints
(:mod:`fcnseg.train.state`) hold everything a resume needs, so train K + resume K == train 2K bit
for bit on CPU. SIGINT/SIGTERM finish the step, save and return; SIGKILL loses at most the steps
since the last checkpoint (files are written atomically). Under ``torchrun`` the global batch is
split over ranks (DDP); only rank 0 writes.
"""
from __future__ import annotations

import copy
import gc
import os
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from fcnseg import distributed as D
from fcnseg.atomic import remove_stale_temporaries, write_text
from fcnseg.config import RunConfig, TrainConfig, apply_preset
from fcnseg.errors import ConfigError, FcnsegError
from fcnseg.evaluate.scoring import evaluate
from fcnseg.models.base import SegmentationModel
from fcnseg.provenance import native_bf16
from fcnseg.train.cache import FeatureCache, FeatureStore, cacheable_prefix, training_cache
from fcnseg.train.data import (
    GlobalBatchSampler,
    Shard,
    Transformed,
    build_datasets,
    build_transform,
    class_weights,
    loader_steps,
)
from fcnseg.train.losses import IGNORE_INDEX, check_labels, loss_denominator, loss_numerator
from fcnseg.train.model import Resumable, dataset_classes, keep_frozen_eval, prepare_model, stepped_net
from fcnseg.train.optim import build_optimizer, build_scheduler
from fcnseg.train.runlog import CsvLog, EvalLog, Progress, StopRequest, TensorBoard, flat_metrics, mean_iu, say
from fcnseg.train.state import Checkpoints, RunLock, RunState, resume_path, seed_all

__all__ = ["train", "score", "validate"]

_MAX_CONSECUTIVE_SKIPS = 100


def train(cfg: RunConfig, *, train_set: Any = None, val_set: Any = None, overwrite: bool = False,
          store: FeatureStore | None = None) -> dict[str, Any]:
    """Train as ``cfg`` says; return a summary (iterations, loss, checkpoint paths, metrics...).

    ``train_set``/``val_set`` replace the datasets named in ``cfg.data`` (items as from
    ``fcnseg.data.build_dataset``; the config's transforms still apply). The run folder is locked
    while training; a fresh run over a folder holding a run is refused unless ``overwrite``.
    ``store`` shares cached frozen-trunk features with other runs (``train.cache_features``).
    """
    cfg = apply_preset(copy.deepcopy(cfg))
    ctx = D.setup(cfg.train.device)
    ok = False
    saved_flags = (torch.are_deterministic_algorithms_enabled(),
                   torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark)
    lock = RunLock(cfg.out) if ctx.is_main else nullcontext()
    try:
        with lock:
            result = _train_locked(cfg, ctx, train_set, val_set, overwrite, store or FeatureStore())
        ok = True
        return result
    finally:
        torch.use_deterministic_algorithms(saved_flags[0], warn_only=saved_flags[1])
        torch.backends.cudnn.benchmark = saved_flags[2]
        D.cleanup(ctx, ok)


def _train_locked(cfg: RunConfig, ctx: D.DistContext, train_set: Any, val_set: Any, overwrite: bool,
                  store: FeatureStore) -> dict:
    if ctx.is_main:
        stale = remove_stale_temporaries(cfg.out)
        if stale:
            say(f"removed {len(stale)} temporary file(s) a killed write left in {cfg.out}")
    run = _Run(cfg, ctx, train_set, val_set, overwrite, store)
    result = run.run()
    if ctx.world_size > 1:  # free the DDP reducer now, while all ranks are in step
        del run
        gc.collect()
        D.barrier()
    return result


def score(cfg: RunConfig, *, store: FeatureStore | None = None,
          adapt: Callable[[SegmentationModel], SegmentationModel] | None = None) -> dict[str, Any] | None:
    """Score the net ``cfg`` builds (an earlier run's weights via ``model.init_from``) on its
    validation split with its evaluation settings (``train.eval_flip``, ...), without training;
    ``None`` when it has no validation split. ``adapt`` turns the built net into the one scored
    (e.g. densified); cached features (``train.cache_features``) are those of the built net's trunk."""
    cfg = apply_preset(copy.deepcopy(cfg))
    ctx = D.setup(cfg.train.device)
    ok = False
    try:
        seed_all(cfg.train.seed)
        train_raw, val_raw = build_datasets(cfg)
        if val_raw is None:
            ok = True
            return None
        classes = cfg.model.num_classes if cfg.model.num_classes is not None else dataset_classes(train_raw)
        progress = Progress(ctx.is_main)
        model, frozen = prepare_model(cfg, classes, ctx.device, progress.say)
        store = store or FeatureStore()
        if adapt is not None:
            _validation_items(cfg, ctx.device, model, val_raw, frozen, store)  # the unchanged trunk's taps
            model = adapt(model)
        metrics = validate(cfg, ctx, model, val_raw, frozen, store)
        ok = True
        return metrics
    finally:
        D.cleanup(ctx, ok)


def validate(cfg: RunConfig, ctx: D.DistContext, model: SegmentationModel, val_raw: Any, frozen: list[str],
             store: FeatureStore, said: Callable[[FeatureCache, float], None] | None = None) -> dict:
    """``evaluate`` on the validation split with the run's settings, sharded over ranks; from cached
    frozen-trunk features where ``train.cache_features`` allows (``said`` hears of a cache used).
    The training RNG is left as it was."""
    t = cfg.train
    devices = [ctx.device.index or 0] if ctx.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):  # evaluation must not shift the training RNG
        items = _validation_items(cfg, ctx.device, model, val_raw, frozen, store, said)
        shard = Shard(len(items), ctx.rank, ctx.world_size) if ctx.world_size > 1 else None
        return evaluate(model, items, device=ctx.device, batch_size=t.eval_batch_size, sampler=shard,
                        reducer=D.all_reduce_sum if ctx.world_size > 1 else None, progress=False,
                        exclude=getattr(val_raw, "exclude_from_means", None), flip=t.eval_flip)


def _validation_items(cfg: RunConfig, device: torch.device, model: SegmentationModel, val_raw: Any,
                      frozen: list[str], store: FeatureStore,
                      said: Callable[[FeatureCache, float], None] | None = None) -> Any:
    """The validation split as ``evaluate`` reads it: the frozen prefix's cached features (with
    ``train.eval_flip`` their mirrors too) where ``train.cache_features`` and no prefix is frozen, else
    the transformed images."""
    t = cfg.train
    tf = build_transform(cfg.data, model.preprocessing, train=False)
    prefix = cacheable_prefix(model, frozen) if t.cache_features and t.eval_batch_size == 1 else []
    if not prefix:
        return val_raw if tf is None else Transformed(val_raw, tf)
    t0 = time.perf_counter()
    cache = store.get(model, val_raw, prefix, device, tf, mirror=t.eval_flip)
    if said is not None:
        said(cache, time.perf_counter() - t0)
    return cache.scoring_items(val_raw)


def _determinism(t: TrainConfig, device: torch.device) -> None:
    if t.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``train.amp`` on ``device`` (None: float32). On the CPU ``auto`` stays
    float32 and ``bf16`` needs native bf16 (AVX512-BF16/AMX: else float32, with a warning)."""
    if device.type != "cuda":
        if amp == "bf16" and device.type == "cpu" and native_bf16():
            return torch.bfloat16
        if amp == "bf16":
            warnings.warn(f"train.amp=bf16: no native bf16 on this {device.type} (AVX512-BF16/AMX); "
                          "training in float32", stacklevel=4)
        elif amp == "fp16":
            warnings.warn(f"train.amp=fp16 is for CUDA only; training in float32 on {device}", stacklevel=4)
        return None
    if amp == "off":
        return None
    if amp == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


def _schedule(cfg: RunConfig, items: int, world: int) -> tuple[int, int, int]:
    """(global batch, steps per epoch, total steps)."""
    t, b = cfg.train, cfg.data.batch_size
    if items < b:
        raise ConfigError(f"data.batch_size {b} is larger than the training set ({items} items)")
    if b % (world * t.accumulate):
        raise ConfigError(f"data.batch_size {b} is the global batch: it must be divisible by world size "
                          f"{world} × train.accumulate {t.accumulate}")
    steps = items // b
    return b, steps, t.iterations if t.iterations is not None else t.epochs * steps


@dataclass
class _Window:
    """The training steps since the last log row (img/s counts training time only)."""

    tick: float
    start_iter: int
    loss: float = 0.0
    n: int = 0

    def add(self, loss: float) -> None:
        self.loss += loss
        self.n += 1

    def mean(self) -> float:
        return self.loss / self.n if self.n else float("nan")


class _Stepper:
    """Forward and backward of one step's micro-batches: the loss per head, normalised by the global
    batch, under autocast and the grad scaler; DDP gradient sync only on the last micro-batch."""

    def __init__(self, cfg: RunConfig, ctx: D.DistContext, model: SegmentationModel, classes: int | dict,
                 class_weights: torch.Tensor | None, batch: int, amp_dtype: torch.dtype | None,
                 scaler: torch.amp.GradScaler) -> None:
        self.cfg, self.device, self.world, self.classes, self.batch = cfg, ctx.device, ctx.world_size, classes, batch
        self.heads = sorted(model.heads)
        self.pre = model.preprocessing
        self.class_weights = class_weights
        self.cw_cpu = None if class_weights is None else class_weights.cpu()
        self.amp_dtype = amp_dtype
        self.scaler = scaler
        self.ddp = self.world > 1
        self.net = D.wrap_model(Resumable(stepped_net(model, cfg.train.trim_border)), ctx, cfg.train.sync_bn)

    def _by_head(self, labels: Any) -> dict[str, Any]:
        """Labels per head: a single-head dataset's label map belongs to the model's one head."""
        return labels if isinstance(labels, dict) else {self.heads[0]: labels}

    def _denominators(self, micro: list) -> dict[str, float]:
        if self.cfg.train.loss_reduction in ("sum", "image-mean"):
            return {h: float(self.batch) for h in self.heads}
        local = torch.zeros(len(self.heads), dtype=torch.float64)
        for _, _, labels, _ in micro:
            lab = self._by_head(labels)
            for i, h in enumerate(self.heads):
                local[i] += loss_denominator(lab[h], "mean", self.cw_cpu)
        D.all_reduce_sum(local)
        return {h: float(local[i]) if local[i] > 0 else 1.0 for i, h in enumerate(self.heads)}

    def _autocast(self):
        return nullcontext() if self.amp_dtype is None else torch.autocast(self.device.type, dtype=self.amp_dtype)

    def step(self, micro: list, optimizer: torch.optim.Optimizer, iteration: int) -> torch.Tensor:
        """Forward/backward of every micro-batch (no optimizer step); returns this rank's loss share."""
        den = self._denominators(micro)
        optimizer.zero_grad(set_to_none=True)
        acc = torch.zeros((), dtype=torch.float64, device=self.device)
        where = f"training batch at iteration {iteration + 1}"
        for m, (x, feats, labels, size) in enumerate(micro):
            check_labels(labels, self.classes, IGNORE_INDEX, where=where)
            if feats is None:
                x = self.pre(x.to(self.device, non_blocking=True))
                if self.cfg.train.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
            else:
                feats = {k: v.to(self.device, non_blocking=True) for k, v in feats.items()}
            lab = {h: v.to(self.device, non_blocking=True) for h, v in self._by_head(labels).items()}
            with self.net.no_sync() if self.ddp and m < len(micro) - 1 else nullcontext():
                with self._autocast():
                    out = self.net(x) if feats is None else self.net(features=feats, size=size)
                loss = sum(loss_numerator(out[h], lab[h], self.cfg.train.loss_reduction, self.class_weights)
                           / den[h] for h in self.heads)
                # DDP averages gradients over ranks; losses are normalised by the global batch already
                self.scaler.scale(loss * self.world).backward()
            acc += loss.detach().double()
        return acc


class _Run:
    """One training run: its data, net, optimizer, state and logs, and the step loop."""

    def __init__(self, cfg: RunConfig, ctx: D.DistContext, train_set: Any, val_set: Any, overwrite: bool,
                 store: FeatureStore) -> None:
        self.cfg, self.ctx, self.store = cfg, ctx, store
        t = cfg.train
        self.main, self.device, self.world, self.out = ctx.is_main, ctx.device, ctx.world_size, Path(cfg.out)
        self.progress = Progress(self.main)
        _determinism(t, self.device)
        seed_all(t.seed)
        self.resume_path = resume_path(cfg, overwrite, self.progress.say)  # before any work: refusals come at once

        self.train_raw, self.val_raw = build_datasets(cfg, train_set, val_set)
        names = getattr(self.train_raw, "classes", None)   # recorded so predict can name and colour classes
        palette = getattr(self.train_raw, "palette", None)
        facts = {"classes": list(names) if names is not None else None,
                 "palette": palette.tolist() if hasattr(palette, "tolist") else palette}
        self.classes = cfg.model.num_classes if cfg.model.num_classes is not None else dataset_classes(self.train_raw)
        self.model, self.frozen = prepare_model(cfg, self.classes, self.device, self.progress.say,
                                                init=self.resume_path is None)
        self.pre = self.model.preprocessing
        cw = class_weights(cfg, self.train_raw, self.classes, self.progress.say)
        cw = None if cw is None else cw.to(self.device, torch.float32)
        self.batch, self.steps_per_epoch, self.total = _schedule(cfg, len(self.train_raw), self.world)
        self.optimizer = build_optimizer(self.model, t.optimizer, t.lr, momentum=t.momentum,
                                         weight_decay=t.weight_decay, bias_lr_mult=t.bias_lr_mult,
                                         backbone_lr_mult=t.backbone_lr_mult,
                                         backbone_bias_lr_mult=t.backbone_bias_lr_mult,
                                         backbone_bias_decay_mult=t.backbone_bias_decay_mult,
                                         fused=t.fused_optimizer)
        self.scheduler = build_scheduler(self.optimizer, t.schedule, self.total, step_size=t.step_size,
                                         gamma=t.gamma, poly_power=t.poly_power, warmup_iters=t.warmup_iters)
        amp_dtype = _amp_dtype(t.amp, self.device)
        self.precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp_dtype == torch.float16)
        self.checkpoints = Checkpoints(cfg, ctx, self.model, {"optimizer": self.optimizer, "scheduler": self.scheduler,
                                                              "scaler": self.scaler},
                                       self.batch, self.steps_per_epoch, len(self.train_raw), facts)
        if self.resume_path is not None:
            self.state = self.checkpoints.resume(self.resume_path, self.progress.say)
        else:
            self.state = RunState()
            torch.manual_seed(t.seed + ctx.rank)  # per-rank dropout stream (rank 0: as one process)
        self.stepper = _Stepper(cfg, ctx, self.model, self.classes, cw, self.batch, amp_dtype, self.scaler)
        # opened by run()
        self.log: CsvLog | None = None
        self.eval_log: EvalLog | None = None
        self.tb = TensorBoard(self.out / "tb", False)
        self.window = _Window(time.perf_counter(), self.state.iteration)
        self.skipped = self.consecutive = 0
        self.last_loss = float("nan")   # the last log row's loss
        self.time_limited = False       # ended by train.time_limit before the last iteration
        self.late = False               # train.time_limit passed (on any rank) at the last step

    # --- batches ------------------------------------------------------------------------------------
    def _batches(self) -> Iterator[list]:
        """Per step a list of ``accumulate`` micro-batches (images|None, features|None, labels, H×W) on CPU."""
        t = self.cfg.train
        sampler = GlobalBatchSampler(len(self.train_raw), self.batch, t.seed, start_step=self.state.iteration,
                                     total_steps=self.total, rank=self.ctx.rank, world_size=self.world,
                                     accumulate=t.accumulate)
        cache = training_cache(self.cfg, self.model, self.frozen, self.train_raw, self.device, self.store,
                               sampler.micro, self.progress.say) if t.cache_features else None
        if cache is None:
            yield from loader_steps(self.cfg, self.train_raw, self.pre, sampler, self.device.type == "cuda")
            return
        for step in range(self.state.iteration, self.total):
            yield [cache.batch(mb, t.patch_p) for mb in sampler.step_micro_batches(step)]

    def _train_step(self, micro: list, stop: StopRequest) -> bool:
        """One optimizer step (skipped on a non-finite loss as ``train.nonfinite`` says); whether any
        rank was asked to stop."""
        acc = self.stepper.step(micro, self.optimizer, self.state.iteration)
        local_bad = 0.0 if torch.isfinite(acc) else 1.0
        limit = self.cfg.train.time_limit
        late = limit is not None and time.perf_counter() - self.state.t_start >= limit
        flags = torch.tensor([acc.item() if not local_bad else 0.0, local_bad, 1.0 if stop.requested else 0.0,
                              1.0 if late else 0.0], dtype=torch.float64)
        D.all_reduce_sum(flags)
        self.late = bool(flags[3] > 0)   # every rank ends on the same step
        if flags[1] > 0:
            self._nonfinite()
        else:
            self.consecutive = 0
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.window.add(float(flags[0]))
        self.scheduler.step()
        self.state.iteration += 1
        self.progress.update()
        return bool(flags[2] > 0)

    def _nonfinite(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        msg, last = f"non-finite loss at iteration {self.state.iteration + 1}", self.state.last_good or "none"
        if self.cfg.train.nonfinite == "stop":
            raise FcnsegError(f"{msg}; stopped without saving (last good checkpoint: {last}); lower train.lr "
                              "or set train.nonfinite=skip")
        self.skipped += 1
        self.consecutive += 1
        if self.main:
            warnings.warn(f"{msg}: step skipped", stacklevel=1)
        if self.consecutive >= _MAX_CONSECUTIVE_SKIPS:
            raise FcnsegError(f"{self.consecutive} consecutive non-finite losses up to iteration "
                              f"{self.state.iteration + 1}; giving up (last good checkpoint: {last})")

    # --- evaluation and logs ------------------------------------------------------------------------
    def _evaluate(self) -> dict | None:
        if self.val_raw is None:
            return None
        metrics = validate(self.cfg, self.ctx, self.model, self.val_raw, self.frozen, self.store, self._said_cache)
        self.model.train()
        keep_frozen_eval(self.model, self.frozen)
        return metrics

    def _said_cache(self, cache: FeatureCache, seconds: float) -> None:
        self.progress.once("val-cache", f"scoring from cached {'/'.join(cache.taps)} features of {len(cache.items)} "
                           f"validation images{' and their mirrors' if cache.mirrors is not None else ''} "
                           f"({cache.nbytes / 2**20:.1f} MiB, {seconds:.1f}s)")

    def _after_eval(self, metrics: dict | None) -> None:
        if metrics is None:
            return
        self.state.metrics = metrics
        miu, it = mean_iu(metrics), self.state.iteration
        self.progress.say(f"iteration {it}: val mean IU {miu:.4f}" if miu is not None else f"iteration {it}: evaluated")
        if self.main:
            self.eval_log.write(it, metrics)
            self.tb.scalars(it, {f"val/{k}": v for k, v in flat_metrics(metrics).items()})
        if miu is not None and (self.state.best is None or miu > self.state.best):
            self.state.best = miu
            self.checkpoints.save("best.pt", self.state)

    def _log_window(self) -> None:
        t, it, w = self.cfg.train, self.state.iteration, self.window
        now = time.perf_counter()
        row = {"iter": it, "epoch": round(it / self.steps_per_epoch, 4), "loss": w.mean(),
               "lr": t.lr * self.scheduler.lr_lambdas[0](it - 1),
               "img_per_s": (it - w.start_iter) * self.batch / max(now - w.tick, 1e-9),
               "elapsed": round(self.state.elapsed(), 3)}
        if self.main:
            self.log.write(row)
            self.tb.scalars(it, {"train/loss": row["loss"], "train/lr": row["lr"], "train/img_per_s": row["img_per_s"]})
        self.progress.update(row["loss"], row["img_per_s"])
        self.last_loss = row["loss"]
        self.window = _Window(now, it)

    def _open_logs(self) -> None:
        resumed = self.state.iteration if self.resume_path else None
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            write_text(self.out / "config.yaml", yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
            self.log = CsvLog(self.out / "log.csv", resume_iter=resumed)
            self.eval_log = EvalLog(self.out / "eval.csv", resumed)
        self.tb = TensorBoard(self.out / "tb", self.cfg.train.tensorboard and self.main)

    # --- the loop -----------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.state.t_start = time.perf_counter()
        self._open_logs()
        start = self.state.iteration
        if start >= self.total:
            self.progress.say(f"nothing to do: the run is already at iteration {start}/{self.total}")
        self.progress.open(self.total, start, self.cfg.train.progress)
        self.stepper.net.train()
        keep_frozen_eval(self.model, self.frozen)
        self.window = _Window(time.perf_counter(), start)
        batches = self._batches()
        try:
            with StopRequest() as stop:
                interrupted = self._loop(batches, stop)
        finally:
            batches.close()
            self.progress.close()
            self.tb.close()
        return self._summary(interrupted)

    def _loop(self, batches: Iterator[list], stop: StopRequest) -> bool:
        """Steps until the end (False) or a stop request (True); logs, evaluates, saves on the way."""
        t = self.cfg.train
        while self.state.iteration < self.total:
            stop_now = self._train_step(next(batches), stop)
            it = self.state.iteration
            out_of_time = self.late and it < self.total and not stop_now
            if it % t.log_every == 0 or it == self.total or stop_now or out_of_time:
                self._log_window()
            if stop_now:
                path = self.checkpoints.save("last.pt", self.state)
                self.progress.say(f"stopped at iteration {it}/{self.total} ({stop.signal_name or 'signal'} "
                                  f"received); checkpoint saved to {path}; continue with train.resume=auto")
                return True
            final, paused = it == self.total or out_of_time, time.perf_counter()
            if out_of_time:
                self.time_limited = True
                self.progress.say(f"train.time_limit: {t.time_limit:g} s reached at iteration {it}/{self.total}; "
                                  "evaluating and saving as at the end")
            if final or (t.eval_every and it % t.eval_every == 0):
                self._after_eval(self._evaluate())
            if final or it % t.checkpoint_every == 0:
                self.checkpoints.save("last.pt", self.state)
            if out_of_time:
                return False
            self.window.tick += time.perf_counter() - paused  # img/s counts training time only
        return False

    def _summary(self, interrupted: bool) -> dict[str, Any]:
        s = self.state
        return {"iterations": s.iteration, "total_iterations": self.total, "epochs": s.iteration / self.steps_per_epoch,
                "loss": self.last_loss, "last_checkpoint": str(self.out / "last.pt"),
                "best_checkpoint": str(self.out / "best.pt") if s.best is not None else None,
                "best_mean_iu": s.best, "metrics": s.metrics, "interrupted": interrupted,
                "time_limited": self.time_limited,
                "skipped_steps": self.skipped, "precision": self.precision, "log": str(self.out / "log.csv"),
                "out": str(self.out),
                "world_size": self.world, "rank": self.ctx.rank, "elapsed": s.elapsed()}
