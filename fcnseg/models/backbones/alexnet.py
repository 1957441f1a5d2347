"""AlexNet in the CaffeNet layout of the FCN reference (grouped convs, LRN after pooling),
or in torchvision's single-tower layout for torchvision weight files."""
from __future__ import annotations

from collections import OrderedDict

from torch import nn

from fcnseg.models.backbones.base import Backbone, Tap, alignment_pads, scaled
from fcnseg.models.preprocessing import CAFFE_VGG, TORCHVISION, Preprocessing

__all__ = ["alexnet"]

# name: (out channels, kernel, stride, pad, groups) for each layout
_LAYOUTS = {
    "caffenet": (("conv1", 96, 11, 4, 0, 1), ("conv2", 256, 5, 1, 2, 2), ("conv3", 384, 3, 1, 1, 1),
                 ("conv4", 384, 3, 1, 1, 2), ("conv5", 256, 3, 1, 1, 2)),
    "torchvision": (("conv1", 64, 11, 4, 2, 1), ("conv2", 192, 5, 1, 2, 1), ("conv3", 384, 3, 1, 1, 1),
                    ("conv4", 256, 3, 1, 1, 1), ("conv5", 256, 3, 1, 1, 1)),
}


def alexnet(*, alignment: str = "caffe", fc_channels: int = 4096, width: float = 1.0, layout: str = "caffenet",
            in_channels: int = 3, preprocessing: Preprocessing | None = None, input_pad: int | None = None,
            fc6_pad: int | None = None) -> Backbone:
    """AlexNet trunk with taps pool5 (stride 32) and fc7 (fc6 as a 6×6 conv).

    ``layout="caffenet"`` is the reference's (pool then LRN, two-group convs);
    ``"torchvision"`` matches ``torchvision.models.alexnet`` for its weight files.
    """
    if layout not in _LAYOUTS:
        raise ValueError(f"alexnet layout must be one of {sorted(_LAYOUTS)}, got {layout!r}")
    caffe = layout == "caffenet"
    input_pad, fc6_pad = alignment_pads(alignment, input_pad, fc6_pad, natural=(5, 3))
    pool_pad = 0 if alignment == "caffe" else 1  # 3×3 pools must not shrink a 1-pixel map
    layers, c_in = OrderedDict(), in_channels
    for name, c, k, s, p, g in _LAYOUTS[layout]:
        c = scaled(c, width)
        c = c - c % g
        layers[name] = nn.Conv2d(c_in, c, k, stride=s, padding=input_pad if name == "conv1" else p, groups=g)
        layers["relu" + name[4:]] = nn.ReLU(inplace=True)
        if name in ("conv1", "conv2", "conv5"):
            layers["pool" + name[4:]] = nn.MaxPool2d(3, stride=2, padding=pool_pad, ceil_mode=True)
            if caffe and name != "conv5":
                layers["norm" + name[4:]] = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75)
        c_in = c
    fc = scaled(fc_channels, width)
    fc_stage = nn.Sequential(OrderedDict(
        fc6=nn.Conv2d(c_in, fc, 6, padding=fc6_pad), relu6=nn.ReLU(inplace=True), drop6=nn.Dropout(0.5),
        fc7=nn.Conv2d(fc, fc, 1), relu7=nn.ReLU(inplace=True), drop7=nn.Dropout(0.5),
    ))
    pre = preprocessing or (CAFFE_VGG if caffe else TORCHVISION)
    return Backbone([Tap("pool5", 32, c_in), Tap("fc7", 32, fc)], [nn.Sequential(layers), fc_stage], pre, in_channels,
                    classifier_tap="fc7")

# torchvision ``alexnet`` module prefixes → ours (build with layout="torchvision").
TORCHVISION_NAMES: dict[str, str] = {
    "features.0": "stages.pool5.conv1", "features.3": "stages.pool5.conv2", "features.6": "stages.pool5.conv3",
    "features.8": "stages.pool5.conv4", "features.10": "stages.pool5.conv5",
    "classifier.1": "stages.fc7.fc6", "classifier.4": "stages.fc7.fc7",
}
