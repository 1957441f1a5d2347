"""Parameter groups as in the reference solvers, optimizers and per-iteration lr schedules."""
from __future__ import annotations

import math

import torch
from torch import nn

from fcnseg.errors import ConfigError

__all__ = ["param_groups", "build_optimizer", "build_scheduler", "lr_factor"]


def param_groups(model: nn.Module, lr: float, weight_decay: float, *, bias_lr_mult: float = 2.0,
                 backbone_lr_mult: float = 1.0, backbone_bias_lr_mult: float | None = None,
                 backbone_bias_decay_mult: float = 0.0) -> list[dict]:
    """Groups like the reference's ``param { lr_mult decay_mult }``.

    Weights: lr × 1 with weight decay; biases: lr × ``bias_lr_mult`` (2) without decay; other 1-D
    parameters (norm scales): lr × 1 without decay. Trunk biases may differ:
    ``backbone_bias_lr_mult`` (None: ``bias_lr_mult``) and ``backbone_bias_decay_mult`` (voc-fcn-alexnet
    leaves its trunk at Caffe's defaults, 1 and 1). Parameters under ``backbone.`` get a further
    ``backbone_lr_mult``. Parameters with ``requires_grad=False`` (fixed bilinear upsampling, frozen
    layers) are left out. Each group carries ``name`` and ``lr_mult``.
    """
    buckets: dict[tuple[str, str], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = "backbone" if name.startswith("backbone.") or ".backbone." in name else "head"
        kind = "bias" if name.endswith("bias") else ("norm" if p.ndim <= 1 else "weight")
        buckets.setdefault((part, kind), []).append(p)
    groups = []
    for (part, kind), params in sorted(buckets.items()):
        trunk_bias = part == "backbone" and kind == "bias"
        b_mult = backbone_bias_lr_mult if trunk_bias and backbone_bias_lr_mult is not None else bias_lr_mult
        mult = (backbone_lr_mult if part == "backbone" else 1.0) * (b_mult if kind == "bias" else 1.0)
        decay = weight_decay if kind == "weight" else weight_decay * backbone_bias_decay_mult if trunk_bias else 0.0
        groups.append({"params": params, "name": f"{part}.{kind}", "lr_mult": mult, "lr": lr * mult,
                       "weight_decay": decay})
    if not groups:
        raise ConfigError("the model has no trainable parameters")
    return groups


def build_optimizer(model: nn.Module, name: str, lr: float, *, momentum: float = 0.9, weight_decay: float = 0.0,
                    bias_lr_mult: float = 2.0, backbone_lr_mult: float = 1.0,
                    backbone_bias_lr_mult: float | None = None,
                    backbone_bias_decay_mult: float = 0.0) -> torch.optim.Optimizer:
    """SGD (with momentum, Caffe-style L2 decay) or AdamW (decoupled decay) over :func:`param_groups`."""
    groups = param_groups(model, lr, weight_decay, bias_lr_mult=bias_lr_mult, backbone_lr_mult=backbone_lr_mult,
                          backbone_bias_lr_mult=backbone_bias_lr_mult,
                          backbone_bias_decay_mult=backbone_bias_decay_mult)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    raise ConfigError(f"train.optimizer must be sgd or adamw, got {name!r}")


def lr_factor(it: int, schedule: str, total: int, *, step_size: int | None = None, gamma: float = 0.1,
              poly_power: float = 0.9, warmup_iters: int = 0) -> float:
    """Multiplier of the base lr for the step taken at iteration ``it`` (0-based)."""
    if schedule == "constant":
        f = 1.0
    elif schedule == "step":
        if not step_size:
            raise ConfigError("schedule 'step' needs train.step_size")
        f = gamma ** (it // step_size)
    elif schedule == "poly":
        f = max(0.0, 1.0 - it / max(1, total)) ** poly_power
    else:
        raise ConfigError(f"train.schedule must be constant, step or poly, got {schedule!r}")
    if warmup_iters and it < warmup_iters:
        f *= (it + 1) / warmup_iters
    return f if math.isfinite(f) else 0.0


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: str, total_iters: int, *,
                    step_size: int | None = None, gamma: float = 0.1, poly_power: float = 0.9,
                    warmup_iters: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration schedule (call ``.step()`` after every optimizer step)."""
    lr_factor(0, schedule, total_iters, step_size=step_size)  # validate now

    def fn(it: int) -> float:
        return lr_factor(it, schedule, total_iters, step_size=step_size, gamma=gamma, poly_power=poly_power,
                         warmup_iters=warmup_iters)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
