"""Pretrained weights: a registry of named sets and ``load_weights`` for names and files.

``load_weights(model, spec)`` takes a registered name (``"hed-vgg16"``) or a path:
``.caffemodel`` (Caffe), ``.pth``/``.pt`` (``torch.save``, read with ``weights_only=True``) or
``.safetensors`` holding a torchvision-layout state_dict, an fcnseg state_dict, or an fcnseg
checkpoint (``{"model": ..., "config": ...}``). The format is detected from the content.
Released models (``"voc-fcn8s"``, ``"imagenet"`` …, see :mod:`.hub`) are downloaded and cached.
The named sets are listed in :mod:`.named`; files are read and loaded by :mod:`.files`.
"""
from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from fcnseg.models.base import SegmentationModel
from fcnseg.models.weights import hub
from fcnseg.models.weights.common import WeightsError, backbone_name, set_preprocessing
from fcnseg.models.weights.files import detect_format, load_weights_file, record_weights
from fcnseg.models.weights.named import LOADERS, WEIGHTS, WeightsInfo

__all__ = ["WeightsInfo", "WEIGHTS", "WeightsError", "WeightsNotFoundError", "detect_format", "load_weights"]


class WeightsNotFoundError(FileNotFoundError):
    """``weights=`` is neither a registered name nor an existing file."""


def load_weights(model: nn.Module, spec: str | os.PathLike) -> list[str]:
    """Load ``spec`` (registered name or file) into ``model``; returns the file's unused keys/layers.

    Sets ``model.preprocessing`` to what the weights expect and records ``weights`` in ``model.spec``'s options.
    """
    release = hub.resolve(spec, model.spec.backbone if isinstance(model, SegmentationModel) else None)
    if release is not None:
        unused = hub.load_release(model, release)
    elif isinstance(spec, str) and spec in WEIGHTS:
        info = WEIGHTS[spec]
        if backbone_name(model) != info.backbone:
            raise WeightsError(f"weights {spec!r} are for backbone {info.backbone}, "
                               f"the model has {backbone_name(model)}")
        unused = LOADERS[spec](model)
        set_preprocessing(model, info.preprocessing)
    else:
        path = Path(spec)
        if not path.is_file():
            names = sorted(WEIGHTS) + ["imagenet"] + sorted(n for n, r in hub.RELEASES.items() if r.model)
            raise WeightsNotFoundError(f"weights {str(spec)!r}: neither a registered name "
                                       f"({', '.join(names)}) nor an existing file")
        unused = load_weights_file(model, path)
    record_weights(model, spec)
    return unused
