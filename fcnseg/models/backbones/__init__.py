"""Backbones: each is a chain of stages declaring its taps (name, stride, channels)."""
from __future__ import annotations

from collections.abc import Callable

from fcnseg.models.backbones.alexnet import alexnet
from fcnseg.models.backbones.base import ALIGNMENTS, Backbone, Tap
from fcnseg.models.backbones.vgg import vgg16

BACKBONES: dict[str, Callable[..., Backbone]] = {"vgg16": vgg16, "alexnet": alexnet}

try:  # written in parallel; registered when present
    from fcnseg.models.backbones.googlenet import googlenet
    from fcnseg.models.backbones.resnet import resnet50, resnet101
    BACKBONES.update(googlenet=googlenet, resnet50=resnet50, resnet101=resnet101)
except ImportError:  # pragma: no cover
    pass

__all__ = ["ALIGNMENTS", "BACKBONES", "Backbone", "Tap", "alexnet", "vgg16"]
