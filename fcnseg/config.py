"""Run configuration: nested dataclasses read from YAML plus ``section.key=value`` overrides.

A field left at ``None`` marked *preset* below is filled by the chosen ``train.preset``
(``caffe``: the reference solvers; ``modern``: batch, mean loss, poly, augmentation; ``none``:
plain defaults). Values set explicitly (in the file or an override) always win.

The schema: every field's metadata holds a :class:`Rule` (type and range); :func:`validate` checks them
all at load, before any work, and ``create_model`` checks its arguments with the same ModelConfig rules.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import reprlib
import types
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from fcnseg.errors import ConfigError

__all__ = ["ModelConfig", "DataConfig", "TrainConfig", "RunConfig", "load_config", "apply_preset", "validate",
           "PRESETS", "CAFFE_LR", "CAFFE_LR_BY_DATASET", "ALIGNMENTS", "CLASSES", "MAX_CLASSES", "Rule", "Bad",
           "field_rules"]

PRESETS = ("caffe", "modern", "none")


# --- the schema: one rule per field ---------------------------------------------------------------
# Every config field carries a Rule in its dataclass metadata; ``validate`` walks them all, and
# ``create_model`` checks its arguments with the ModelConfig rules of the same names.
MAX_CLASSES = 1000   # per head: 3000 classes would already mean a 147 GB score layer at full width
ALIGNMENTS = ("caffe", "same")
_NO_EXAMPLE = object()


class Bad(Exception):
    """A value a rule rejects; ``kind`` is ``"type"`` (wrong kind of value) or ``"value"`` (out of range)."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


@dataclass(frozen=True)
class Rule:
    """What a field accepts: ``check(value)`` raises :class:`Bad`; the examples feed the generated tests."""

    check: Callable[[Any], None]
    bad_type: Any = "?"                 # a value of the wrong type
    bad_value: Any = _NO_EXAMPLE        # a value of the right type out of range (none for flags, free text)

    @property
    def examples(self) -> list[tuple[str, Any]]:
        """``(kind, value)`` pairs this rule must reject: a wrong type, and an out-of-range value if there is one."""
        return [("type", self.bad_type)] + ([("value", self.bad_value)] if self.bad_value is not _NO_EXAMPLE else [])

    def error(self, key: str, value: Any, nullable: bool = False) -> Bad | None:
        """The :class:`Bad` for ``value`` with the reason prefixed by ``key`` (None: accepted)."""
        if value is None and nullable:
            return None
        try:
            self.check(value)
        except Bad as e:
            return Bad(e.kind, f"{key}: {e}, got {reprlib.repr(value)}")
        return None


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)  # numpy ints too; a bool is no count


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _bounds(lo: Any, hi: Any, lo_open: bool, hi_open: bool) -> str:
    parts = ([f"{'>' if lo_open else '>='} {lo}"] if lo is not None else []) + \
            ([f"{'<' if hi_open else '<='} {hi}"] if hi is not None else [])
    return " and ".join(parts)


def _in_range(v: Any, lo: Any, hi: Any, lo_open: bool, hi_open: bool) -> bool:
    return ((lo is None or (v > lo if lo_open else v >= lo)) and
            (hi is None or (v < hi if hi_open else v <= hi)))


def whole(lo: int | None = None, hi: int | None = None, *, hi_open: bool = False, note: str = "",
          what: str = "") -> Rule:
    """An int (not a bool) in ``[lo, hi]`` (``hi`` excluded with ``hi_open``); ``what`` replaces the reason."""
    what = what or f"must be a whole number {_bounds(lo, hi, False, hi_open)}".rstrip() + note

    def check(v: Any) -> None:
        if not _is_int(v):
            raise Bad("type", what)
        if not _in_range(v, lo, hi, False, hi_open):
            raise Bad("value", what)
    out = (lo - 1) if lo is not None else (hi if hi_open else hi + 1) if hi is not None else _NO_EXAMPLE
    return Rule(check, "x", out)


def number(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False, hi_open: bool = False,
           note: str = "") -> Rule:
    """A finite int or float (not a bool) between ``lo`` and ``hi``."""
    what = f"must be a finite number {_bounds(lo, hi, lo_open, hi_open)}".rstrip() + note

    def check(v: Any) -> None:
        if not _is_number(v):
            raise Bad("type", what)
        if not (math.isfinite(v) and _in_range(v, lo, hi, lo_open, hi_open)):
            raise Bad("value", what)
    out = (lo if lo_open else lo - 1) if lo is not None else (hi if hi_open else hi + 1) if hi is not None \
        else float("inf")
    return Rule(check, "x", out)


def flag() -> Rule:
    def check(v: Any) -> None:
        if not isinstance(v, bool):
            raise Bad("type", "must be true or false")
    return Rule(check, 1)


def text(choices: tuple[str, ...] | None = None) -> Rule:
    """A non-empty string (one of ``choices`` when given)."""
    what = f"must be one of {', '.join(choices)}" if choices else "must be a non-empty string"

    def check(v: Any) -> None:
        if not isinstance(v, str):
            raise Bad("type", what)
        if (choices and v not in choices) or not v.strip():
            raise Bad("value", what)
    return Rule(check, 5, "nosuch" if choices else "")


def mapping(values: Rule | None = None, nonempty: bool = False) -> Rule:
    """A dict with string keys (non-empty, each value passing ``values``, when asked)."""
    what = "must be a " + ("non-empty " if nonempty else "") + "mapping of names"

    def check(v: Any) -> None:
        if not isinstance(v, dict) or not all(isinstance(k, str) and k for k in v):
            raise Bad("type", what + " (keys: non-empty strings)")
        if nonempty and not v:
            raise Bad("value", what)
        for k, x in v.items():
            if values is not None:
                try:
                    values.check(x)
                except Bad as e:
                    raise Bad(e.kind, f"{k!r}: {e}") from None
    bad = {"a": values.bad_value} if values is not None and values.bad_value is not _NO_EXAMPLE else \
        ({} if nonempty else _NO_EXAMPLE)
    return Rule(check, 5, bad)


def either(*rules: Rule, what: str) -> Rule:
    """Accepted when any of ``rules`` accepts; a type error only when none had the right type."""
    def check(v: Any) -> None:
        kinds = []
        for r in rules:
            try:
                r.check(v)
                return
            except Bad as e:
                kinds.append(e.kind)
        raise Bad("value" if "value" in kinds else "type", what)
    bad_value = next((r.bad_value for r in rules if r.bad_value is not _NO_EXAMPLE), _NO_EXAMPLE)
    return Rule(check, rules[0].bad_type if rules[0].bad_type is not None else 5.5, bad_value)


def number_list(length: int | None = None, lo: float = 0.0, *, lo_open: bool = False, ordered: bool = False) -> Rule:
    """A non-empty list of finite numbers (``length`` of them; each above ``lo``; ascending when ``ordered``)."""
    what = (f"must be a list of {length}" if length else "must be a non-empty list of") + " finite numbers " + \
        _bounds(lo, None, lo_open, False) + (" with lo <= hi" if ordered else "")

    def check(v: Any) -> None:
        if not isinstance(v, list) or not all(_is_number(x) for x in v):
            raise Bad("type", what)
        if not v or (length and len(v) != length) or not all(math.isfinite(x) for x in v) \
                or not all(_in_range(x, lo, None, lo_open, False) for x in v) or (ordered and v != sorted(v)):
            raise Bad("value", what)
    bad = [2.0, 1.0] if ordered else [lo - 1.0] * (length or 1)
    return Rule(check, ["a", "b"], bad)


def size_pair() -> Rule:
    """``[height, width]`` of whole numbers >= 1."""
    what = "must be [height, width] of whole numbers >= 1"

    def check(v: Any) -> None:
        if not isinstance(v, list) or not all(_is_int(x) for x in v):
            raise Bad("type", what)
        if len(v) != 2 or min(v) < 1:
            raise Bad("value", what)
    return Rule(check, ["a", "b"], [0, 5])


CLASS_COUNT = whole(2, MAX_CLASSES, what=f"must be a whole number from 2 to {MAX_CLASSES} (one class would label "
                                          "every pixel the same)")
CLASSES = either(CLASS_COUNT, mapping(CLASS_COUNT, nonempty=True),
                 what=f"must be a whole number from 2 to {MAX_CLASSES} or a non-empty mapping of head names "
                      f"to such numbers (one class would label every pixel the same)")


def rule(default: Any, r: Rule, *, factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field whose metadata carries its :class:`Rule`."""
    if factory is not None:
        return field(default_factory=factory, metadata={"rule": r})
    return field(default=default, metadata={"rule": r})


def field_rules(cls: type) -> dict[str, tuple[Rule, bool]]:
    """Field name -> (rule, may be null) of a config dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: (f.metadata["rule"], _accepts(hints[f.name], type(None)))
            for f in dataclasses.fields(cls) if "rule" in f.metadata}


_NAME, _OPT_NAME = text(), text()  # free names (checked against the registries when used)


@dataclass
class ModelConfig:
    name: str = rule("fcn32s", _NAME)         # fcn32s|fcn16s|fcn8s|fcn8s-atonce|... (or name@backbone)
    backbone: str = rule("vgg16", _NAME)
    num_classes: int | dict | None = rule(None, CLASSES)  # None: from the dataset (dict of heads for SIFT Flow)
    weights: str | None = rule(None, _OPT_NAME)  # registered name or file (see create_model)
    alignment: str = rule("caffe", text(ALIGNMENTS))  # caffe (pad 100) | same
    learn_upsampling: bool = rule(False, flag())
    fc_channels: int | None = rule(None, whole(1, 16384))  # None: the backbone's (4096)
    width: float | None = rule(None, number(0, 4, lo_open=True))  # None: 1.0 (reduced nets for tests/demos)
    dropout: float | None = rule(None, number(0, 1, hi_open=True))  # None: keep the backbone's dropout p
    init_from: str | dict | None = rule(None, either(text(), mapping(text(), nonempty=True),
                                                          what="must be a checkpoint path or a mapping of "
                                                               "stream names to checkpoint paths"))
    #                                           checkpoint whose matching tensors initialise the net
    #                                           (late fusion: also a dict stream name -> checkpoint)
    in_channels: int | None = rule(None, whole(1, 64))  # None: 3; 4 = early fusion (RGB-D)
    depth_init: str | None = rule(None, text(("mean", "zero")))  # early fusion: extra conv1_1 filters from
    #                                           3-channel weights: mean (None; of the RGB filters, the reference's
    #                                           surgery) | zero
    streams: dict | None = rule(None, mapping(whole(1, 64), nonempty=True))  # late fusion: stream name ->
    #                                           input channels, e.g. {color: 3, hha: 3}
    fusion: str | None = rule(None, text(("average", "sum")))  # late fusion: average (None; the
    #                                           reference's 0.5/0.5) | sum
    preprocessing: dict | None = rule(None, mapping())  # override the weights' input preprocessing after they
    #   load: {bgr, scale, mean, std, name} (keys left out keep the weights' values); late fusion: the same
    #   dict for every stream, or a dict per stream name


@dataclass
class DataConfig:
    dataset: str = rule("voc", _NAME)
    root: str | None = rule(None, _OPT_NAME)
    train_split: str = rule("train", _NAME)
    val_split: str | None = rule("val", _OPT_NAME)  # None: no validation
    val_dataset: str | None = rule(None, _OPT_NAME)  # score on another dataset (SBD train → VOC seg11valid)
    val_root: str | None = rule(None, _OPT_NAME)
    options: dict = rule(None, mapping(), factory=dict)  # extra build_dataset options (e.g. task: semantic)
    resize: float | None = rule(None, number(1, note=" (a downscale factor: 2 halves each side)"))
    #                                           downscale factor: 2 halves each side (train and val)
    scale_range: list | None = rule(None, number_list(2, 0, lo_open=True, ordered=True))  # preset; [lo, hi]
    #                                           random rescale
    crop: int | list | None = rule(None, either(whole(0), size_pair(), what="must be a whole number >= 0 "
                                                     "(0: no crop) or [height, width] of whole numbers >= 1"))
    #                                           preset; random crop size (0: none)
    flip: bool | None = rule(None, flag())  # preset; random horizontal flip
    jitter: float | None = rule(None, number(0, 1))  # preset; colour jitter strength (0: none)
    batch_size: int | None = rule(None, whole(1, 65536))  # preset; GLOBAL images per optimizer step
    workers: int = rule(0, whole(0, 1024))
    skip_bad: bool = rule(False, flag())
    max_items: int | None = rule(None, whole(1))  # use the first N items of each split


_STEPS = whole(1)


@dataclass
class TrainConfig:
    preset: str = rule("none", text(PRESETS))  # caffe|modern|none
    optimizer: str | None = rule(None, text(("sgd", "adamw")))  # preset; sgd|adamw
    lr: float | None = rule(None, number(0, lo_open=True))  # preset
    momentum: float | None = rule(None, number(0, 1, hi_open=True))  # preset
    weight_decay: float | None = rule(None, number(0))  # preset
    bias_lr_mult: float | None = rule(None, number(0))  # preset; the reference's 2x bias learning rate
    backbone_lr_mult: float | dict = rule(1.0, either(number(0), mapping(number(0), nonempty=True),
                                                       what="must be a finite number >= 0 or a mapping of "
                                                            "backbone stage names to such numbers"))
    #                                           lr multiplier of the (pretrained) trunk: one number for every
    #                                           stage, or per stage {pool5: 0.1, fc7: 1} (stages left out: 1)
    backbone_bias_lr_mult: float | None = rule(None, number(0))  # preset; trunk biases' lr mult (None:
    #                                           bias_lr_mult)
    backbone_bias_decay_mult: float | None = rule(None, number(0))  # preset; trunk biases' decay mult (0:
    #                                           none; 1: Caffe default)
    schedule: str | None = rule(None, text(("constant", "step", "poly")))  # preset; constant|step|poly
    step_size: int | None = rule(None, _STEPS)  # step schedule: iterations per decay
    gamma: float = rule(0.1, number(0, 1, lo_open=True))  # step schedule: lr factor per decay
    poly_power: float = rule(0.9, number(0, lo_open=True))  # poly schedule: (1 - it/total) ** power
    warmup_iters: int = rule(0, whole(0))  # linear warm-up iterations
    iterations: int | None = rule(None, _STEPS)  # preset; total optimizer steps (or give epochs)
    epochs: int | None = rule(None, _STEPS)
    time_limit: float | None = rule(None, number(0, lo_open=True))  # seconds: past them (after a step) the run
    #                                           ends as at its last iteration — evaluated, saved — with fewer
    #                                           steps (the schedule not run out); counted from this process's start
    accumulate: int | None = rule(None, whole(1, 4096))  # preset; micro-batches per step (Caffe iter_size)
    loss_reduction: str | None = rule(None, text(("sum", "mean", "image-mean")))  # preset; sum (per image,
    #                                           Caffe normalize:false) | mean | image-mean (each image's per-pixel
    #                                           mean, averaged: normalize:true)
    class_weights: str | list | None = rule(None, either(text(("median-frequency",)), number_list(),
                                                              what="must be null, 'median-frequency' or a list "
                                                                   "of finite numbers >= 0 (one per class)"))
    patch_p: float = rule(1.0, number(0, 1, lo_open=True))  # keep each stride-32 loss cell with probability p
    amp: str | bool = rule("auto", either(text(("auto", "bf16", "fp16", "off")), flag(),
                                                what="must be auto, bf16, fp16 or off"))
    #                                           auto (CUDA: bf16 if supported else fp16; CPU: fp32) | bf16 (CPU:
    #                                           where native, AVX512-BF16/AMX, else fp32 with a warning) | fp16 | off
    channels_last: bool = rule(False, flag())
    trim_border: bool = rule(False, flag())  # train through the border-trimmed net (Caffe-aligned VGG-style
    #                                           FCNs: the pad-100 border's image-independent part is not
    #                                           recomputed; same loss and gradients to fp32 rounding, faster)
    fused_optimizer: bool = rule(False, flag())  # PyTorch's fused SGD/AdamW kernel: one pass per step (about
    #                                           2x faster on the CPU), the same update up to float rounding
    seed: int = rule(1337, whole(0, 2**63, hi_open=True,
                                          what="must be a whole number from 0 to 2**63 - 1 (what the RNGs take)"))
    deterministic: bool = rule(False, flag())
    device: str = rule("auto", _NAME)         # auto|cpu|cuda|cuda:N
    checkpoint_every: int = rule(4000, _STEPS)
    eval_every: int = rule(4000, whole(0))  # 0: only at the end
    eval_batch_size: int = rule(1, whole(1, 65536))
    eval_flip: bool = rule(False, flag())   # score with test-time flip averaging
    log_every: int = rule(20, _STEPS)
    freeze_backbone: bool | str = rule(False, either(flag(), text(), what="must be true, false or the name of "
                                                                         "the deepest frozen backbone stage"))
    #                                           the deepest frozen trunk stage: true (all but the classifier stage,
    #                                           fc6/fc7) | false | a stage name: pool4 (conv5 and fc6/fc7 learn),
    #                                           pool3 (conv4 up), fc7 (the whole trunk: only score layers learn)
    cache_features: bool = rule(False, flag())
    sync_bn: bool = rule(False, flag())
    nonfinite: str = rule("stop", text(("stop", "skip")))  # stop|skip
    tensorboard: bool = rule(False, flag())
    progress: bool = rule(True, flag())
    resume: str | None = rule(None, _OPT_NAME)  # checkpoint path, or "auto" (out/last.pt if present)


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out: str = rule("runs/fcn", text())  # the run folder ("" would train into the current folder)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "<dict>") -> RunConfig:
        """Build from a (possibly partial) nested dict, checking keys and types."""
        cfg = cls()
        _merge(cfg, d, source, "")
        return cfg


_SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}

# --- presets -------------------------------------------------------------------------------------
# Reference solvers (shelhamer/fcn.berkeleyvision.org, */solver.prototxt): lr_policy fixed, momentum
# 0.99, weight_decay 5e-4, iter_size 1, unnormalised loss; base_lr per net below. max_iter 100000
# (voc-fcn32s/16s/8s), 300000 (voc-fcn8s-atonce). FCN-AlexNet (voc-fcn-alexnet): lr 1e-4,
# momentum 0.9, iter_size 20 of batches of one, SoftmaxWithLoss normalize: true (the step is the mean of
# 20 per-image per-pixel means: loss_reduction image-mean), trunk layers without param {} (Caffe's default
# lr_mult 1 / decay_mult 1 for biases too), score_fr biases 2x / no decay. Models without a reference
# solver use the fcn32s value.
CAFFE_LR = {"fcn32s": 1e-10, "fcn16s": 1e-12, "fcn8s": 1e-14, "fcn8s-atonce": 1e-10, "fcn32s-fixed": 1e-10,
            "pool5-only": 1e-10, "pool4-only": 1e-10, "pool3-only": 1e-10}
# Datasets whose solver departs from the model's VOC value (siftflow-fcn8s/solver.prototxt: base_lr 1e-12).
CAFFE_LR_BY_DATASET = {("siftflow", "fcn8s"): 1e-12}

_BASE = {"data": dict(scale_range=None, crop=0, flip=False, jitter=0.0, batch_size=1),
         "train": dict(optimizer="sgd", momentum=0.9, weight_decay=5e-4, bias_lr_mult=2.0, schedule="constant",
                       accumulate=1, loss_reduction="mean", backbone_bias_decay_mult=0.0)}


def _caffe_lr(name: str, dataset: str) -> float:
    return CAFFE_LR_BY_DATASET.get((dataset, name), CAFFE_LR.get(name, 1e-10))


def _preset_values(cfg: RunConfig) -> dict[str, dict[str, Any]]:
    preset = cfg.train.preset
    name, backbone = (cfg.model.name.split("@", 1) + [cfg.model.backbone])[:2]
    if preset == "caffe":
        alex = backbone == "alexnet"
        return {"data": dict(scale_range=None, crop=0, flip=False, jitter=0.0, batch_size=20 if alex else 1),
                "train": dict(optimizer="sgd", lr=1e-4 if alex else _caffe_lr(name, cfg.data.dataset),
                              momentum=0.9 if alex else 0.99, weight_decay=5e-4, bias_lr_mult=2.0,
                              backbone_bias_lr_mult=1.0 if alex else None,
                              backbone_bias_decay_mult=1.0 if alex else 0.0,
                              schedule="constant", loss_reduction="image-mean" if alex else "sum",
                              accumulate=20 if alex else 1,
                              iterations=300000 if name == "fcn8s-atonce" else 100000)}
    if preset == "modern":
        adamw = (cfg.train.optimizer or "sgd") == "adamw"
        return {"data": dict(scale_range=[0.5, 2.0], crop=320, flip=True, jitter=0.0, batch_size=8),
                "train": dict(optimizer="sgd", lr=1e-4 if adamw else 1e-3, momentum=0.9,
                              weight_decay=1e-2 if adamw else 5e-4, bias_lr_mult=1.0, schedule="poly",
                              loss_reduction="mean", accumulate=1, epochs=50)}
    return {"data": dict(_BASE["data"]), "train": dict(_BASE["train"], lr=1e-4, iterations=1000)}


def apply_preset(cfg: RunConfig) -> RunConfig:
    """Fill every ``None`` preset field from ``cfg.train.preset`` (in place; returns ``cfg``)."""
    _check_all_fields(cfg)  # types first: the preset tables read model.name and train.optimizer
    values = _preset_values(cfg)
    explicit_length = cfg.train.iterations is not None or cfg.train.epochs is not None
    for section, vals in values.items():
        obj = getattr(cfg, section)
        for k, v in vals.items():
            if k in ("iterations", "epochs") and explicit_length:
                continue
            if getattr(obj, k) is None:
                setattr(obj, k, v)
    for k, v in _BASE["train"].items():  # fields a preset may leave open
        if getattr(cfg.train, k) is None:
            setattr(cfg.train, k, v)
    validate(cfg)
    return cfg


def check_fields(obj: Any, prefix: str = "") -> None:
    """Check every field of a config dataclass against its :class:`Rule` (one-line ConfigError naming the key)."""
    for name, (r, nullable) in field_rules(type(obj)).items():
        bad = r.error(f"{prefix}{name}", getattr(obj, name), nullable)
        if bad is not None:
            raise ConfigError(str(bad))


def _check_all_fields(cfg: RunConfig) -> None:
    for section in _SECTIONS:
        check_fields(getattr(cfg, section), f"{section}.")
    check_fields(cfg)


def validate(cfg: RunConfig) -> None:
    """Check every field's type and range, then the rules between fields, once presets are applied."""
    _check_all_fields(cfg)
    t, d = cfg.train, cfg.data
    if isinstance(t.amp, bool):
        t.amp = "auto" if t.amp else "off"
    if t.iterations is None and t.epochs is None:
        raise ConfigError("set train.iterations or train.epochs")
    if t.iterations is not None and t.epochs is not None:
        raise ConfigError("set only one of train.iterations and train.epochs")
    if t.schedule == "step" and t.step_size is None:
        raise ConfigError("train.schedule=step needs train.step_size")
    if d.batch_size is not None and t.accumulate and d.batch_size % t.accumulate:
        raise ConfigError(f"data.batch_size {d.batch_size} is not divisible by train.accumulate {t.accumulate}")
    _check_model(cfg.model)


_PRE_KEYS = ("bgr", "scale", "mean", "std", "name")


def _check_model(m: ModelConfig) -> None:
    """Fusion fields and the preprocessing override (shape only; values are used by build_model)."""
    if m.streams is not None and m.in_channels is not None:
        raise ConfigError("set model.streams (late fusion) or model.in_channels (early fusion), not both")
    if isinstance(m.init_from, dict):
        unknown = sorted(set(m.init_from) - set(m.streams or {}))
        if unknown:
            raise ConfigError(f"model.init_from names streams {unknown} that model.streams "
                              f"({sorted(m.streams or {})}) does not have")
    pre = m.preprocessing
    if pre is None:
        return
    if m.streams and pre and all(isinstance(v, dict) for v in pre.values()):
        unknown = sorted(set(pre) - set(m.streams))
        if unknown:
            raise ConfigError(f"model.preprocessing names streams {unknown}; model.streams: {sorted(m.streams)}")
        for name, p in pre.items():
            _check_pre(p, f"model.preprocessing.{name}")
    else:
        _check_pre(pre, "model.preprocessing")


def _check_pre(p: dict, where: str) -> None:
    unknown = sorted(set(p) - set(_PRE_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown} (known: {', '.join(_PRE_KEYS)})")
    number = (int, float)
    if "bgr" in p and not isinstance(p["bgr"], bool):
        raise ConfigError(f"{where}.bgr must be true or false, got {p['bgr']!r}")
    if "scale" in p and (isinstance(p["scale"], bool) or not isinstance(p["scale"], number) or not p["scale"] > 0):
        raise ConfigError(f"{where}.scale must be a number > 0, got {p['scale']!r}")
    for key in ("mean", "std"):
        v = p.get(key)
        if v is not None and (not isinstance(v, list) or not v
                              or any(isinstance(x, bool) or not isinstance(x, number) for x in v)):
            raise ConfigError(f"{where}.{key} must be a list of numbers (one per channel), got {v!r}")
    if any(x == 0 for x in p.get("std") or ()):
        raise ConfigError(f"{where}.std must not contain 0, got {p['std']}")


# --- loading -------------------------------------------------------------------------------------
def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML run config (or defaults when ``path`` is None), apply overrides, then the preset.

    ``overrides``: ``["train.lr=1e-4", "data.batch_size=2"]``, values parsed as YAML scalars/lists.
    Unknown keys, wrong types and malformed YAML raise a one-line :class:`ConfigError`.
    """
    cfg = RunConfig()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{p}: malformed YAML{where}: {getattr(e, 'problem', None) or e}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read config {p}: {e}") from None
        if data is not None:
            if not isinstance(data, dict):
                raise ConfigError(f"{p}: top level must be a mapping of sections (model, data, train, out)")
            _merge(cfg, data, str(p), "")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} must look like section.key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        nested: Any = value
        for part in reversed(key.strip().split(".")):
            nested = {part: nested}
        _merge(cfg, nested, f"override {item!r}", "")
    return apply_preset(cfg)


def _merge(obj: Any, data: dict, source: str, prefix: str) -> None:
    fields = {f.name: f for f in dataclasses.fields(obj)}
    hints = typing.get_type_hints(type(obj))
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"{source}: unknown key '{path}' (known: {', '.join(fields)})")
        if key in _SECTIONS and not prefix:
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{path}' must be a mapping, got {reprlib.repr(value)}")
            _merge(getattr(obj, key), value, source, f"{path}.")
            continue
        hint = hints[key]
        if _accepts(hint, dict) and isinstance(value, dict) and isinstance(getattr(obj, key), dict):
            merged = dict(getattr(obj, key))
            merged.update(value)
            value = merged
        setattr(obj, key, _coerce(value, hint, path, source))


_UNIONS = (Union, types.UnionType)  # Optional[X] and X | None


def _accepts(hint: Any, t: type) -> bool:
    args = typing.get_args(hint) if typing.get_origin(hint) in _UNIONS else (hint,)
    return any(a is t or typing.get_origin(a) is t for a in args)


def _coerce(value: Any, hint: Any, path: str, source: str) -> Any:
    options = typing.get_args(hint) if typing.get_origin(hint) in _UNIONS else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise ConfigError(f"{source}: '{path}' may not be null")
    for t in options:
        if t is bool and isinstance(value, bool):
            return value
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if t is str and isinstance(value, str):
            return value
        if t in (list, dict) and isinstance(value, t):
            return value
    if float in options and isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
        try:
            return float(value)
        except ValueError:
            pass
    names = " or ".join(getattr(t, "__name__", str(t)) for t in options if t is not type(None))
    raise ConfigError(f"{source}: '{path}' expects {names}, got {reprlib.repr(value)}")
