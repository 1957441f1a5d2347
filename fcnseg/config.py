"""Run configuration: nested dataclasses read from YAML plus ``section.key=value`` overrides.

A field left at ``None`` marked *preset* below is filled by the chosen ``train.preset``
(``caffe``: the reference solvers; ``modern``: batch, mean loss, poly, augmentation; ``none``:
plain defaults). Values set explicitly (in the file or an override) always win.
"""
from __future__ import annotations

import dataclasses
import math
import reprlib
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from .errors import ConfigError

__all__ = ["ModelConfig", "DataConfig", "TrainConfig", "RunConfig", "load_config", "apply_preset",
           "PRESETS", "CAFFE_LR", "CAFFE_LR_BY_DATASET"]

PRESETS = ("caffe", "modern", "none")


@dataclass
class ModelConfig:
    name: str = "fcn32s"                      # fcn32s|fcn16s|fcn8s|fcn8s-atonce|... (or name@backbone)
    backbone: str = "vgg16"
    num_classes: Union[int, dict, None] = None  # None: from the dataset (dict of heads for SIFT Flow)
    weights: Union[str, None] = None          # registered name or file (see create_model)
    alignment: str = "caffe"                  # caffe (pad 100) | same
    learn_upsampling: bool = False
    fc_channels: Union[int, None] = None      # None: the backbone's (4096)
    width: Union[float, None] = None          # None: 1.0 (reduced nets for tests/demos)
    dropout: Union[float, None] = None        # None: keep the backbone's dropout p
    init_from: Union[str, dict, None] = None  # checkpoint whose matching tensors initialise the net
    #                                           (late fusion: also a dict stream name -> checkpoint)
    in_channels: Union[int, None] = None      # None: 3; 4 = early fusion (RGB-D)
    depth_init: Union[str, None] = None       # early fusion: extra conv1_1 filters from 3-channel weights:
    #                                           mean (None; of the RGB filters, the reference's surgery) | zero
    streams: Union[dict, None] = None         # late fusion: stream name -> input channels, e.g. {color: 3, hha: 3}
    fusion: Union[str, None] = None           # late fusion: average (None; the reference's 0.5/0.5) | sum
    preprocessing: Union[dict, None] = None   # override the weights' input preprocessing after they load:
    #   {bgr, scale, mean, std, name} (keys left out keep the weights' values); late fusion: the same
    #   dict for every stream, or a dict per stream name


@dataclass
class DataConfig:
    dataset: str = "voc"
    root: Union[str, None] = None
    train_split: str = "train"
    val_split: Union[str, None] = "val"       # None: no validation
    val_dataset: Union[str, None] = None      # score on another dataset (SBD train → VOC seg11valid)
    val_root: Union[str, None] = None
    options: dict = field(default_factory=dict)  # extra build_dataset options (e.g. task: semantic)
    resize: Union[float, None] = None         # downscale factor: 2 halves each side (train and val)
    scale_range: Union[list, None] = None     # preset; [lo, hi] random rescale
    crop: Union[int, list, None] = None       # preset; random crop size (0: none)
    flip: Union[bool, None] = None            # preset; random horizontal flip
    jitter: Union[float, None] = None         # preset; colour jitter strength (0: none)
    batch_size: Union[int, None] = None       # preset; GLOBAL images per optimizer step
    workers: int = 0
    skip_bad: bool = False
    max_items: Union[int, None] = None        # use the first N items of each split


@dataclass
class TrainConfig:
    preset: str = "none"                      # caffe|modern|none
    optimizer: Union[str, None] = None        # preset; sgd|adamw
    lr: Union[float, None] = None             # preset
    momentum: Union[float, None] = None       # preset
    weight_decay: Union[float, None] = None   # preset
    bias_lr_mult: Union[float, None] = None   # preset; the reference's 2x bias learning rate
    backbone_lr_mult: float = 1.0             # lr multiplier of the (pretrained) trunk
    backbone_bias_lr_mult: Union[float, None] = None  # preset; trunk biases' lr mult (None: bias_lr_mult)
    backbone_bias_decay_mult: Union[float, None] = None  # preset; trunk biases' decay mult (0: none; 1: Caffe default)
    schedule: Union[str, None] = None         # preset; constant|step|poly
    step_size: Union[int, None] = None        # step schedule: iterations per decay
    gamma: float = 0.1
    poly_power: float = 0.9
    warmup_iters: int = 0                     # linear warm-up iterations
    iterations: Union[int, None] = None       # preset; total optimizer steps (or give epochs)
    epochs: Union[int, None] = None
    accumulate: Union[int, None] = None       # preset; micro-batches per step (Caffe iter_size)
    loss_reduction: Union[str, None] = None   # preset; sum (per image, Caffe normalize:false) | mean |
    #                                           image-mean (each image's per-pixel mean, averaged: normalize:true)
    class_weights: Union[str, list, None] = None  # None | "median-frequency" | list of floats
    patch_p: float = 1.0                      # keep each stride-32 loss cell with probability p
    amp: Union[str, bool] = "auto"            # auto (CUDA: bf16 if supported else fp16) | bf16 | fp16 | off
    channels_last: bool = False
    seed: int = 1337
    deterministic: bool = False
    device: str = "auto"                      # auto|cpu|cuda|cuda:N
    checkpoint_every: int = 4000
    eval_every: int = 4000                    # 0: only at the end
    eval_batch_size: int = 1
    eval_flip: bool = False                   # score with test-time flip averaging
    log_every: int = 20
    freeze_backbone: bool = False
    cache_features: bool = False
    sync_bn: bool = False
    nonfinite: str = "stop"                   # stop|skip
    tensorboard: bool = False
    progress: bool = True
    resume: Union[str, None] = None           # checkpoint path, or "auto" (out/last.pt if present)


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out: str = "runs/fcn"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "<dict>") -> "RunConfig":
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
    if cfg.train.preset not in PRESETS:
        raise ConfigError(f"train.preset must be one of {PRESETS}, got {cfg.train.preset!r}")
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


_CHOICES = {("train", "optimizer"): ("sgd", "adamw"), ("train", "schedule"): ("constant", "step", "poly"),
            ("train", "loss_reduction"): ("sum", "mean", "image-mean"), ("train", "nonfinite"): ("stop", "skip"),
            ("model", "alignment"): ("caffe", "same"), ("model", "depth_init"): ("mean", "zero", None),
            ("model", "fusion"): ("average", "sum", None)}


def validate(cfg: RunConfig) -> None:
    """Check value ranges and choices once presets are applied (one-line ConfigError)."""
    for (sec, key), choices in _CHOICES.items():
        v = getattr(getattr(cfg, sec), key)
        if v not in choices:
            raise ConfigError(f"{sec}.{key} must be one of {choices}, got {v!r}")
    t, d = cfg.train, cfg.data
    amp = {True: "auto", False: "off"}.get(t.amp, t.amp) if isinstance(t.amp, bool) else t.amp
    if amp not in ("auto", "bf16", "fp16", "off"):
        raise ConfigError(f"train.amp must be auto, bf16, fp16 or off, got {t.amp!r}")
    t.amp = amp
    positive = [("data.batch_size", d.batch_size), ("train.accumulate", t.accumulate),
                ("train.iterations", t.iterations), ("train.epochs", t.epochs), ("train.lr", t.lr),
                ("train.step_size", t.step_size), ("data.resize", d.resize), ("data.max_items", d.max_items),
                ("train.checkpoint_every", t.checkpoint_every), ("train.log_every", t.log_every),
                ("train.eval_batch_size", t.eval_batch_size)]
    m = cfg.model
    positive += [("model.width", m.width), ("model.fc_channels", m.fc_channels)]
    if isinstance(m.num_classes, int):
        positive.append(("model.num_classes", m.num_classes))
    for key, v in positive:
        if v is not None and not (v > 0 and math.isfinite(v)):
            raise ConfigError(f"{key} must be a finite number > 0, got {v}")
    for key, v in [("train.eval_every", t.eval_every), ("data.workers", d.workers),
                   ("train.warmup_iters", t.warmup_iters), ("train.weight_decay", t.weight_decay),
                   ("train.momentum", t.momentum), ("data.jitter", d.jitter)]:
        if v is not None and v < 0:
            raise ConfigError(f"{key} must be >= 0, got {v}")
    if t.iterations is None and t.epochs is None:
        raise ConfigError("set train.iterations or train.epochs")
    if t.iterations is not None and t.epochs is not None:
        raise ConfigError("set only one of train.iterations and train.epochs")
    if not 0 < t.patch_p <= 1:
        raise ConfigError(f"train.patch_p must be in (0, 1], got {t.patch_p}")
    if t.schedule == "step" and t.step_size is None:
        raise ConfigError("train.schedule=step needs train.step_size")
    if d.resize is not None and d.resize < 1:
        raise ConfigError(f"data.resize is a downscale factor >= 1 (2 halves each side), got {d.resize}")
    if d.scale_range is not None and (len(d.scale_range) != 2 or not 0 < d.scale_range[0] <= d.scale_range[1]):
        raise ConfigError(f"data.scale_range must be [lo, hi] with 0 < lo <= hi, got {d.scale_range}")
    if isinstance(d.crop, list) and (len(d.crop) != 2 or min(d.crop) <= 0):
        raise ConfigError(f"data.crop must be a size or [height, width], got {d.crop}")
    if isinstance(t.class_weights, str) and t.class_weights != "median-frequency":
        raise ConfigError(f"train.class_weights must be null, 'median-frequency' or a list, got {t.class_weights!r}")
    if d.batch_size is not None and t.accumulate and d.batch_size % t.accumulate:
        raise ConfigError(f"data.batch_size {d.batch_size} is not divisible by train.accumulate {t.accumulate}")
    _check_model(cfg.model)


_PRE_KEYS = ("bgr", "scale", "mean", "std", "name")


def _check_model(m: ModelConfig) -> None:
    """Fusion fields and the preprocessing override (shape only; values are used by build_model)."""
    if m.in_channels is not None and m.in_channels < 1:
        raise ConfigError(f"model.in_channels must be >= 1, got {m.in_channels}")
    if m.streams is not None:
        if not m.streams or not all(isinstance(c, int) and not isinstance(c, bool) and c > 0
                                    for c in m.streams.values()):
            raise ConfigError(f"model.streams must map stream names to input channels, got {m.streams}")
        if m.in_channels is not None:
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


def _accepts(hint: Any, t: type) -> bool:
    args = typing.get_args(hint) if typing.get_origin(hint) is Union else (hint,)
    return any(a is t or typing.get_origin(a) is t for a in args)


def _coerce(value: Any, hint: Any, path: str, source: str) -> Any:
    options = typing.get_args(hint) if typing.get_origin(hint) is Union else (hint,)
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
