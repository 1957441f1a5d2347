"""One training step, timed phase by phase: the rows of the training-step bench.

A row is named ``<engine>[:<stage>]``: an engine name (:class:`fcnseg.infer.spec.EngineSpec`) of the
peer or of our PyTorch net (``-fp32``/``-bf16``, ``-cl``, ``-trim``, ``@same``), and for partial
fine-tuning the deepest frozen backbone stage, whose prefix's outputs are cached as
``train.freeze_backbone`` + ``train.cache_features`` cache them (``torch-fp32:pool4``: forward from the
cached pool3/pool4 maps, backward and step of what is left). Our rows step as ``fcnseg train`` does with
``train.fused_optimizer``, ``train.trim_border`` (``-trim``), ``train.channels_last`` (``-cl``) and
``train.amp=bf16`` (``-bf16``): the reference's parameter groups, SGD momentum 0.99, weight decay 5e-4.
The peer steps as its users run it: eager fp32 NCHW, ``torch.optim.SGD`` over all its parameters.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fcnseg.bench.measure import stats
from fcnseg.errors import ConfigError
from fcnseg.infer.spec import EngineSpec
from fcnseg.models.preprocessing import Preprocessing
from fcnseg.train.cache import FeatureCache
from fcnseg.train.model import Resumable, freeze_backbone, keep_frozen_eval, stepped_net
from fcnseg.train.optim import build_optimizer

__all__ = ["TrainRow", "TrainStep", "PHASES", "DEFAULT_TRAIN_ROWS", "summarize"]

PHASES = ("data", "forward", "backward", "optimizer")
# the peer; our default step and our fastest exact one; bf16 (where the CPU has it natively); partial fine-tuning
DEFAULT_TRAIN_ROWS = ("peer", "torch-fp32", "torch-fp32-trim", "torch-bf16", "torch-bf16-trim", "torch-fp32:pool4",
                      "torch-fp32:pool3")
LR, MOMENTUM, WEIGHT_DECAY = 1e-10, 0.99, 5e-4  # the reference solver's (the step costs the same at any lr)


@dataclass(frozen=True)
class TrainRow:
    """A training-step row: the engine it steps like and the frozen stage (None: the whole net)."""

    engine: EngineSpec
    frozen: str | None = None

    @property
    def name(self) -> str:
        return self.engine.name + (f":{self.frozen}" if self.frozen else "")

    @property
    def exact(self) -> bool:
        return self.engine.dtype == "fp32"

    @classmethod
    def parse(cls, name: str, argument: str = "--train-rows") -> TrainRow:
        """``"torch-fp32-trim"``, ``"torch-bf16:pool4"`` … → a row; a bad name → one-line ConfigError."""
        engine_name, _, frozen = name.strip().partition(":")
        engine = EngineSpec.parse(engine_name, argument)
        if engine.runtime not in ("peer", "torch") or engine.dtype not in ("fp32", "bf16") or engine.compile \
                or engine.cuda_graphs:
            raise ConfigError(f"{argument}: a training-step row is peer or torch-fp32/-bf16 [-cl] [-trim] "
                              f"[@same] [:STAGE]: {name!r}")
        if frozen and engine.runtime == "peer":
            raise ConfigError(f"{argument}: the peer has no cached-prefix fine-tuning: {name!r}")
        if frozen and engine.trim:
            raise ConfigError(f"{argument}: a partial step resumes after the cached prefix, -trim does not apply: "
                              f"{name!r}")
        if ":" in name and not frozen:
            raise ConfigError(f"{argument}: name the deepest frozen stage after ':' (e.g. torch-fp32:pool4): {name!r}")
        return cls(engine, frozen or None)


class TrainStep:
    """``row``'s training step of ``model`` (ours, weights loaded, or the peer's module) on images ``x``
    (RGB 0–255) with seeded random labels; each call runs one step and returns its phase seconds.

    Phases: ``data`` (preprocessing and layout of the batch; for a partial row the cached features to the
    device), ``forward`` (forward and loss), ``backward``, ``optimizer`` (``zero_grad`` and ``step``).
    """

    def __init__(self, row: TrainRow, model: nn.Module, preprocessing: Preprocessing, x: torch.Tensor,
                 classes: int, sync: Callable[[], None] | None = None) -> None:
        self.row, self.pre, self.sync = row, preprocessing, sync or (lambda: None)
        self.device = next(model.parameters()).device
        self.x = x.to(self.device)
        g = torch.Generator().manual_seed(1)
        self.labels = torch.randint(0, classes, (x.shape[0], *x.shape[-2:]), generator=g).to(self.device)
        self.cl = row.engine.channels_last
        self.amp = row.engine.dtype == "bf16"
        model.train()
        if row.engine.runtime == "peer":
            self.net = model
            self.opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR, momentum=MOMENTUM,
                                       weight_decay=WEIGHT_DECAY)
            self.features = None
            return
        frozen = freeze_backbone(model, row.frozen) if row.frozen else []
        keep_frozen_eval(model, frozen)
        if self.cl:
            model.to(memory_format=torch.channels_last)
        self.opt = build_optimizer(model, "sgd", LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, fused=True)
        self.net = Resumable(stepped_net(model, row.engine.trim))
        self.features = None
        if frozen:  # the prefix's outputs, as the feature cache holds them (computed once, not timed)
            with torch.no_grad():
                self.features = {k: v.cpu() for k, v in model.backbone(self._batch(),
                                                                       set(FeatureCache.needed_taps(model, frozen))
                                                                       ).items()}

    def _batch(self) -> torch.Tensor:
        xp = self.pre(self.x)
        return xp.contiguous(memory_format=torch.channels_last) if self.cl else xp

    def __call__(self) -> dict[str, float]:
        clock = time.perf_counter
        t0 = clock()
        if self.features is None:
            batch, feats = self._batch(), None
        else:
            batch, feats = None, {k: v.to(self.device) for k, v in self.features.items()}
        self.sync()
        t1 = clock()
        with torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp else nullcontext():
            if feats is not None:
                out = self.net(features=feats, size=tuple(self.labels.shape[-2:]))
            else:
                out = self.net(batch)
        out = out if isinstance(out, torch.Tensor) else next(iter(out.values()))
        loss = F.cross_entropy(out.float(), self.labels, ignore_index=255)
        self.sync()
        t2 = clock()
        loss.backward()
        self.sync()
        t3 = clock()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.sync()
        t4 = clock()
        return {"data": t1 - t0, "forward": t2 - t1, "backward": t3 - t2, "optimizer": t4 - t3, "total": t4 - t0}


def summarize(samples: list[dict[str, float]]) -> dict:
    """Statistics of a row's timed steps: the whole step (``seconds``) and each phase (``breakdown``)."""
    return {"seconds": stats([s["total"] for s in samples]), "samples": [s["total"] for s in samples],
            "breakdown": {p: stats([s[p] for s in samples]) for p in PHASES}}
