"""The peer implementation, ``torchfcn==1.9.7`` (PyPI), loaded for side-by-side timing.

Only its model classes are used. ``torchfcn/__init__`` pulls in its trainer and datasets (``fcn``,
``skimage``, ``pytz`` …) and its model module imports ``fcn`` and ``torchvision``; we load the
``torchfcn.models`` subpackage alone, with those two modules stubbed in ``sys.modules`` for the
duration of the import. Nothing is patched in torchfcn's model code.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fcnseg.errors import FcnsegError
from fcnseg.models.base import HEAD, ModelSpec, SegmentationModel
from fcnseg.models.preprocessing import TORCHVISION

__all__ = ["PeerUnavailable", "load_peer_models", "peer_fcn8s", "peer_state_dict", "torchvision_fcn_resnet50",
           "PEER", "LAYER_MAP"]

PEER = "torchfcn==1.9.7"

# torchfcn FCN8s layer → our parameter prefix (caffe alignment, single head "out").
LAYER_MAP: dict[str, str] = {
    **{f"conv{b}_{i}": f"backbone.stages.pool{b}.conv{b}_{i}"
       for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)) for i in range(1, n + 1)},
    "fc6": "backbone.stages.fc7.fc6", "fc7": "backbone.stages.fc7.fc7",
    "score_fr": "score.out.fc7", "score_pool4": "score.out.pool4", "score_pool3": "score.out.pool3",
    "upscore2": "upsample.out.0", "upscore_pool4": "upsample.out.1", "upscore8": "upsample.out.2",
}


class PeerUnavailable(FcnsegError, ImportError):
    """torchfcn is not installed."""


def load_peer_models() -> types.ModuleType:
    """Import ``torchfcn.models`` without ``torchfcn/__init__`` and with ``fcn``/``torchvision`` stubbed."""
    if "torchfcn.models" in sys.modules:
        return sys.modules["torchfcn.models"]
    spec = importlib.util.find_spec("torchfcn")
    if spec is None or not spec.submodule_search_locations:
        raise PeerUnavailable(f"the peer {PEER} is not installed: pip install --no-deps {PEER}")
    stubs = {name: types.ModuleType(name) for name in ("fcn", "torchvision") if name not in sys.modules}
    package = types.ModuleType("torchfcn")
    package.__path__ = list(spec.submodule_search_locations)
    package.__file__ = str(Path(package.__path__[0]) / "__init__.py")
    installed_pkg = "torchfcn" not in sys.modules
    sys.modules.update(stubs)
    if installed_pkg:
        sys.modules["torchfcn"] = package
    try:
        return importlib.import_module("torchfcn.models")
    finally:
        for name in stubs:
            sys.modules.pop(name, None)


def peer_state_dict(ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our fcn8s (caffe alignment) state_dict → torchfcn FCN8s parameter names."""
    out = {}
    for theirs, prefix in LAYER_MAP.items():
        for p in ("weight", "bias"):
            key = f"{prefix}.{p}"
            if key in ours:
                out[f"{theirs}.{p}"] = ours[key]
    return out


def peer_fcn8s(num_classes: int, state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """torchfcn's ``FCN8s(n_class)``, holding our weights when ``state`` (our state_dict) is given."""
    model = load_peer_models().FCN8s(n_class=num_classes)
    if state is not None:
        mapped = peer_state_dict(state)
        missing = set(model.state_dict()) - set(mapped)
        if missing:
            raise FcnsegError(f"weights for the peer lack {sorted(missing)[:3]}: is the model fcn8s@vgg16?")
        model.load_state_dict(mapped, strict=True)
    return model.eval()


class _TorchvisionFCN(SegmentationModel):
    """torchvision's ``fcn_resnet50`` (no auxiliary head) under our model contract: its trunk's
    stride-8 features, its classifier and bilinear upsampling; ImageNet preprocessing (RGB, 0–1, mean/std)."""

    output_stride = 8
    in_channels = 3

    def __init__(self, net: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.net, self.heads, self.preprocessing = net, {HEAD: int(num_classes)}, TORCHVISION
        self.spec = ModelSpec("fcn_resnet50", int(num_classes), "torchvision-resnet50")

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.net.backbone(x)["out"]}

    def forward_features(self, features: dict[str, torch.Tensor], size: tuple[int, int]
                         ) -> dict[str, torch.Tensor]:
        scores = self.net.classifier(features["out"])
        return {"out": F.interpolate(scores, size=tuple(size), mode="bilinear", align_corners=False)}


def torchvision_fcn_resnet50(num_classes: int, seed: int = 0) -> nn.Module:
    """torchvision's FCN-ResNet50 with seeded random weights: a speed reference on the GPU (another
    architecture, so its scores are not compared). torchvision is needed (absent on CPU-only torch here)."""
    try:
        from torchvision.models.segmentation import fcn_resnet50  # noqa: PLC0415 (optional: torchvision is not a dependency)
    except ImportError as e:
        raise PeerUnavailable(f"torchvision is not installed ({e}): the tvfcn engines need it") from None
    torch.manual_seed(seed)
    net = fcn_resnet50(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False)
    return _TorchvisionFCN(net, num_classes).eval()
