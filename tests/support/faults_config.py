"""Fault-corpus cases of one area (config); collected by :func:`fault_corpus.all_cases`.

Config values of the wrong type or range, refused at load (before any training) with the key and
the reason; the demo's and ``models``' options likewise.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

from support.fault_corpus import Case, Ctx, Plan, _train

# (case name, overrides, strings the error must name, words of the reason)
_OVERRIDES: list[tuple[str, list[str], list[str], list[str]]] = [
    ("scale-range-strings", ["data.scale_range=[a,b]"], ["data.scale_range"], ["finite numbers"]),
    ("scale-range-one", ["data.scale_range=[1.5]"], ["data.scale_range"], ["list of 2"]),
    ("crop-negative", ["data.crop=-5"], ["data.crop"], [">= 0", "-5"]),
    ("seed-2-70", [f"train.seed={2**70}"], ["train.seed"], ["2**63"]),
    ("seed-negative", ["train.seed=-3"], ["train.seed"], ["from 0"]),
    ("num-classes-empty-dict", ["model.num_classes={}"], ["model.num_classes"], ["non-empty mapping"]),
    ("num-classes-one", ["model.num_classes=1"], ["model.num_classes"], ["every pixel the same"]),
    ("num-classes-3000", ["model.num_classes=3000"], ["model.num_classes"], ["from 2 to 1000"]),
    ("num-classes-head-zero", ["model.num_classes={sem: 11, geo: 0}"], ["model.num_classes"], ["from 2"]),
    ("num-classes-head-text", ["model.num_classes={sem: many}"], ["model.num_classes"], ["whole number"]),
    ("poly-power-negative", ["train.schedule=poly", "train.poly_power=-1"], ["train.poly_power"], ["> 0"]),
    ("poly-power-zero", ["train.schedule=poly", "train.poly_power=0"], ["train.poly_power"], ["> 0"]),
    ("gamma-zero", ["train.schedule=step", "train.step_size=1", "train.gamma=0"], ["train.gamma"], ["> 0"]),
    ("gamma-above-1", ["train.gamma=10"], ["train.gamma"], ["<= 1"]),
    ("step-size-zero", ["train.schedule=step", "train.step_size=0"], ["train.step_size"], [">= 1"]),
    ("warmup-negative", ["train.warmup_iters=-1"], ["train.warmup_iters"], [">= 0"]),
    ("momentum-one", ["train.momentum=1"], ["train.momentum"], ["< 1"]),
    ("weight-decay-negative", ["train.weight_decay=-0.1"], ["train.weight_decay"], [">= 0"]),
    ("weight-decay-inf", ["train.weight_decay=.inf"], ["train.weight_decay"], ["finite"]),
    ("bias-lr-mult-negative", ["train.bias_lr_mult=-2"], ["train.bias_lr_mult"], [">= 0"]),
    ("epochs-zero", ["train.iterations=null", "train.epochs=0"], ["train.epochs"], [">= 1"]),
    ("accumulate-zero", ["train.accumulate=0"], ["train.accumulate"], [">= 1"]),
    ("workers-negative", ["data.workers=-2"], ["data.workers"], [">= 0"]),
    ("patch-p-above-1", ["train.patch_p=1.5"], ["train.patch_p"], ["<= 1"]),
    ("jitter-negative", ["data.jitter=-1"], ["data.jitter"], [">= 0"]),
    ("eval-every-negative", ["train.eval_every=-1"], ["train.eval_every"], [">= 0"]),
    ("log-every-zero", ["train.log_every=0"], ["train.log_every"], [">= 1"]),
    ("checkpoint-every-zero", ["train.checkpoint_every=0"], ["train.checkpoint_every"], [">= 1"]),
    ("class-weights-negative", ["train.class_weights=[1, -1]"], ["train.class_weights"], [">= 0"]),
    ("in-channels-zero", ["model.in_channels=0"], ["model.in_channels"], [">= 1"]),
    ("streams-zero-channels", ["model.streams={color: 0}"], ["model.streams"], [">= 1"]),
    ("fc-channels-huge", ["model.fc_channels=1000000"], ["model.fc_channels"], ["<= 16384"]),
    ("dropout-one", ["model.dropout=1"], ["model.dropout"], ["< 1"]),
    ("alignment-number", ["model.alignment=5"], ["model.alignment"], ["str"]),
    ("out-empty", ['out=""'], ["out"], ["non-empty"]),
    ("dataset-empty", ['data.dataset=""'], ["data.dataset"], ["non-empty"]),
    ("resume-empty", ['train.resume=""'], ["train.resume"], ["non-empty"]),
]


def _over(overrides: list[str], names: list[str], cause: list[str]) -> Callable[[Ctx], Plan]:
    return lambda ctx: Plan(_train(ctx, *overrides), names, cause)


def _demo(*argv: str, names: list[str], cause: list[str]) -> Callable[[Ctx], Plan]:
    def run(ctx: Ctx) -> Plan:
        args = list(argv) if "--out" in argv else ["--out", ctx.out(), *argv]
        return Plan(["demo", *args], names, cause)
    return run


def cases() -> Iterator[Case]:
    for name, overrides, names, cause in _OVERRIDES:
        yield Case(f"train-config-{name}", "train/config-key", "error", _over(overrides, names, cause))
    yield Case("demo-predict-negative", "demo/option", "error",
               _demo("--predict", "-5", names=["--predict"], cause=[">= 0", "-5"]))
    yield Case("demo-val-split-null", "demo/config-key", "error",
               _demo("data.val_split=null", names=["data.val_split"], cause=["cannot be null"]))
    yield Case("demo-out-empty", "demo/option", "error", _demo("--out", "", names=["out"], cause=["non-empty"]))
    yield Case("demo-num-classes-one", "demo/config-key", "error",
               _demo("model.num_classes=1", names=["model.num_classes"], cause=["every pixel the same"]))
    for value in ("0", "1", "-3", "3000"):
        yield Case(f"models-classes-{value}", "models/option", "error",
                   lambda ctx, v=value: Plan(["models", "--classes", v], ["--classes", v], ["from 2 to 1000"]))
