"""Model names → (backbone, head spec); ``create_model`` builds any of them."""
from __future__ import annotations

import inspect
import os
import warnings
from pathlib import Path
from typing import Any

from fcnseg.config import ModelConfig, Rule, field_rules, whole
from fcnseg.models.backbones import BACKBONES
from fcnseg.models.base import ModelSpec, SegmentationModel
from fcnseg.models.fcn import FCN, HeadSpec
from fcnseg.models.fusion import LateFusion
from fcnseg.models.surgery import widening
from fcnseg.models.weights import WEIGHTS, detect_format, load_weights
from fcnseg.models.weights.hub import release_arguments, resolve

__all__ = ["create_model", "list_models", "MODELS"]

MODELS: dict[str, HeadSpec] = {
    "fcn32s": HeadSpec(taps=(32,)),
    "fcn16s": HeadSpec(taps=(32, 16)),
    "fcn8s": HeadSpec(taps=(32, 16, 8)),
    "fcn8s-atonce": HeadSpec(taps=(32, 16, 8), tap_scales={16: 0.01, 8: 1e-4}),
    # PAMI ablations: only the final score layer learns; single streams from one layer.
    "fcn32s-fixed": HeadSpec(taps=(32,), train_only_final_score=True),
    "pool5-only": HeadSpec(taps=("pool5",)),
    "pool4-only": HeadSpec(taps=("pool4",)),
    "pool3-only": HeadSpec(taps=("pool3",)),
}

# Which (model, backbone) pairs are offered: the paper's and a few modern ones.
_OFFERED: dict[str, tuple[str, ...]] = {
    "vgg16": tuple(MODELS),
    "alexnet": ("fcn32s", "fcn32s-fixed"),
    "googlenet": ("fcn32s", "fcn16s", "fcn8s"),
    "resnet50": ("fcn32s", "fcn16s", "fcn8s"),
    "resnet101": ("fcn32s", "fcn16s", "fcn8s"),
}

_PAD = whole(0, 1024)
_REQUIRED = ("num_classes", "width", "in_channels")  # None in a config means "the default"; here it is no value
_EXTRA_RULES: dict[str, tuple[Rule, bool]] = {"input_pad": (_PAD, True), "fc6_pad": (_PAD, True)}


def _check_arguments(args: dict[str, Any], hint: str = "") -> None:
    """Check create_model's arguments with the ModelConfig rules of the same names (TypeError/ValueError)."""
    rules = {**field_rules(ModelConfig), **_EXTRA_RULES}
    for arg, value in args.items():
        if arg not in rules:
            continue
        rule, nullable = rules[arg]
        bad = rule.error(arg, value, nullable and arg not in _REQUIRED)
        if bad is not None:
            raise (TypeError if bad.kind == "type" else ValueError)(str(bad) + hint)


def _check_backbone_kwargs(backbone: str, kwargs: dict[str, Any]) -> None:
    accepted = [n for n, p in inspect.signature(BACKBONES[backbone]).parameters.items()
                if p.kind is p.KEYWORD_ONLY and n != "alignment"]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise TypeError(f"{', '.join(unknown)}: not an argument of the {backbone} backbone "
                        f"(it takes {', '.join(accepted)})")


def list_models() -> list[str]:
    """``name`` or ``name@backbone`` for every offered combination (vgg16 is the default)."""
    return [m if b == "vgg16" else f"{m}@{b}" for b, ms in _OFFERED.items() for m in ms]


def create_model(name: str, num_classes: int | dict[str, int] | None = None, *, backbone: str | None = None,
                 weights: str | None = None, alignment: str = "caffe", learn_upsampling: bool = False,
                 streams: dict[str, int] | None = None, fusion: str = "average", depth_init: str = "mean",
                 **backbone_kwargs) -> SegmentationModel:
    """Build an FCN, e.g. ``create_model("fcn8s", 21, weights="hed-vgg16")``.

    ``weights``: None (random trunk), a registered name (``"hed-vgg16"``) or a file path
    (torchvision state_dict ``.pth``/``.safetensors``, Caffe ``.caffemodel``, fcnseg checkpoint).
    Layers or tensors of the file the model does not use are named in a ``UserWarning``.
    ``num_classes`` may be a dict of head name → classes for multi-task nets (SIFT Flow).
    ``streams`` (name → input channels, e.g. ``{"color": 3, "hha": 3}``) builds a late-fusion net:
    one such FCN per stream, scores averaged (``fusion="average"``, the reference's 0.5/0.5) or
    summed (``"sum"``); ``weights`` initialises every stream, or, for a late-fusion caffemodel
    (``conv1_1color``...), each stream from its own layers.
    ``depth_init``: how weights for 3 input channels widen to ``in_channels`` > 3 (early fusion):
    ``"mean"`` (each extra filter the mean of the RGB filters, the reference's surgery) or ``"zero"``.
    A released model (``weights="voc-fcn8s"``, ``"siftflow-fcn16s"``, ``"imagenet"`` …; see
    ``fcnseg.models.weights.hub.RELEASES``) is downloaded on first use and fills in ``num_classes``,
    ``streams`` and the backbone; arguments that contradict it are a ValueError, ``backbone_kwargs``
    (e.g. ``width``) override the release's net arguments.
    Bad arguments raise ``TypeError`` / ``ValueError`` naming the argument.
    """
    if not isinstance(name, str):
        raise TypeError(f"name: must be a model name string, got {type(name).__name__}; choose from {list_models()}")
    if isinstance(weights, os.PathLike):
        weights = os.fspath(weights)
    release = resolve(weights, backbone or (name.split("@", 1)[1] if "@" in name else None))
    if release is not None:
        name, num_classes, backbone, streams, backbone_kwargs = release_arguments(
            release, name, num_classes, backbone, streams, backbone_kwargs)
        weights = release.name
    backbone = backbone or "vgg16"
    if num_classes is None:  # the one argument a released model can fill in
        _check_arguments({"num_classes": None}, hint=" (or give weights= naming a released model)")
    _check_arguments({"num_classes": num_classes, "backbone": backbone, "weights": weights, "alignment": alignment,
                      "learn_upsampling": learn_upsampling, "streams": streams, "fusion": fusion,
                      "depth_init": depth_init, **backbone_kwargs})
    # numpy counts pass the checks; the config saved in checkpoints holds plain Python numbers
    num_classes = {k: int(v) for k, v in num_classes.items()} if isinstance(num_classes, dict) else int(num_classes)
    if "width" in backbone_kwargs:
        backbone_kwargs["width"] = float(backbone_kwargs["width"])
    if streams:
        spec = ModelSpec(name, num_classes, backbone, alignment, learn_upsampling, dict(streams),
                         {"fusion": fusion, **backbone_kwargs})
        kwargs = {k: v for k, v in backbone_kwargs.items() if k != "in_channels"}
        fused_file = weights is not None and (_is_caffemodel(weights)
                                              or (release is not None and release.streams is not None))
        fused = LateFusion({s: create_model(name, num_classes, backbone=backbone, alignment=alignment,
                                            weights=None if fused_file else weights, depth_init=depth_init,
                                            learn_upsampling=learn_upsampling, in_channels=c, **kwargs)
                            for s, c in streams.items()}, fusion=fusion, spec=spec)
        if fused_file:  # one file holds every stream (a late-fusion caffemodel or release)
            with widening(depth_init):
                load_weights(fused, weights)  # warns about unused layers itself; records weights in the spec
        return fused
    if "@" in name:
        name, backbone = name.split("@", 1)
    if name not in MODELS:
        raise ValueError(f"name: unknown model {name!r}; choose from {list_models()}")
    if backbone not in BACKBONES:
        raise ValueError(f"backbone: unknown backbone {backbone!r}; choose from {sorted(BACKBONES)}")
    if name not in _OFFERED[backbone]:
        raise ValueError(f"name: {name} is not offered on {backbone}; offered: {_OFFERED[backbone]}")
    _check_backbone_kwargs(backbone, backbone_kwargs)
    trunk = BACKBONES[backbone](alignment=alignment, **backbone_kwargs)
    spec = ModelSpec(name, num_classes, backbone, alignment, learn_upsampling, options=dict(backbone_kwargs))
    model = FCN(trunk, num_classes, MODELS[name], learn_upsampling=learn_upsampling, spec=spec)
    if weights is not None:
        with widening(depth_init):
            unused = load_weights(model, weights)
        if unused and not _is_caffemodel(weights):  # the Caffe loader warns itself
            warnings.warn(f"weights {weights}: {len(unused)} tensor(s) of the file were not loaded: "
                          f"{', '.join(map(str, unused[:8]))}{', ...' if len(unused) > 8 else ''}", stacklevel=2)
    return model


def _is_caffemodel(weights: str | os.PathLike) -> bool:
    return not (isinstance(weights, str) and weights in WEIGHTS) and Path(weights).is_file() \
        and detect_format(weights) == "caffe"
