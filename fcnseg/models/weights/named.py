"""Named weight sets (``weights="hed-vgg16"``): their metadata and loaders, by name."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from fcnseg.models.preprocessing import CAFFE_HED, Preprocessing
from fcnseg.models.weights.hed import HED_SHA256, HED_SOURCE, load_hed

__all__ = ["WeightsInfo", "WEIGHTS", "LOADERS"]


@dataclass(frozen=True)
class WeightsInfo:
    """Metadata of a named weight set (in the spirit of torchvision's ``Weights``)."""

    backbone: str
    source: str
    sha256: str
    license: str
    preprocessing: Preprocessing
    notes: str = ""


WEIGHTS: dict[str, WeightsInfo] = {
    "hed-vgg16": WeightsInfo(
        backbone="vgg16", source=HED_SOURCE, sha256=HED_SHA256, license="MIT", preprocessing=CAFFE_HED,
        notes="VGG16 conv1_1-conv5_3 from HED (ImageNet VGG16 fine-tuned on BSDS500 edges); "
              "the file has no fc6/fc7, which keep their random initialisation.",
    ),
}
# name → loader: ``loader(model)`` writes the set into ``model`` and returns the file's unused keys
LOADERS: dict[str, Callable[[nn.Module], list[str]]] = {"hed-vgg16": load_hed}
