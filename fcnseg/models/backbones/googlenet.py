"""GoogLeNet (Inception v1) in torchvision's layout (BatchNorm, no input transform) as an FCN backbone."""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from fcnseg.models.backbones.base import Backbone, Tap, alignment_pads, scaled
from fcnseg.models.preprocessing import Preprocessing

__all__ = ["BasicConv2d", "Inception", "googlenet", "TORCHVISION_GOOGLENET", "TORCHVISION_NAMES",
           "TORCHVISION_PREPROCESSING"]

# torchvision's pretrained googlenet runs with transform_input=True, i.e. it sees (x/255 - 0.5) / 0.5
# whatever ImageNet normalisation the caller applied; without that transform this is the preprocessing.
TORCHVISION_GOOGLENET = Preprocessing(bgr=False, scale=1 / 255, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                                      name="torchvision-googlenet")
TORCHVISION_PREPROCESSING = TORCHVISION_GOOGLENET  # what the torchvision weights importer sets

# name: (1×1, 3×3 reduce, 3×3, "5×5" reduce, "5×5" (a 3×3 in torchvision), pool projection)
_INCEPTIONS = {
    "inception3a": (64, 96, 128, 16, 32, 32), "inception3b": (128, 128, 192, 32, 96, 64),
    "inception4a": (192, 96, 208, 16, 48, 64), "inception4b": (160, 112, 224, 24, 64, 64),
    "inception4c": (128, 128, 256, 24, 64, 64), "inception4d": (112, 144, 288, 32, 64, 64),
    "inception4e": (256, 160, 320, 32, 128, 128),
    "inception5a": (256, 160, 320, 32, 128, 128), "inception5b": (384, 192, 384, 48, 128, 128),
}


class BasicConv2d(nn.Module):
    """Conv (no bias) → BatchNorm (eps 1e-3) → ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class Inception(nn.Module):
    """Four parallel branches concatenated; every branch keeps the input grid."""

    def __init__(self, c_in: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, cp: int) -> None:
        super().__init__()
        self.out_channels = c1 + c3 + c5 + cp
        self.branch1 = BasicConv2d(c_in, c1, 1)
        self.branch2 = nn.Sequential(BasicConv2d(c_in, c3r, 1), BasicConv2d(c3r, c3, 3, padding=1))
        # torchvision's "5×5" branch is a 3×3 conv (a known deviation kept for its weights)
        self.branch3 = nn.Sequential(BasicConv2d(c_in, c5r, 1), BasicConv2d(c5r, c5, 3, padding=1))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True),
                                     BasicConv2d(c_in, cp, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)

    def branches(self) -> list[list[nn.Module]]:
        return [[self.branch1], [self.branch2], [self.branch3], [self.branch4]]

    def coord_path(self) -> list[nn.Module]:
        return self.branches()[1]


def googlenet(*, alignment: str = "caffe", width: float = 1.0, in_channels: int = 3,
              preprocessing: Preprocessing = TORCHVISION_GOOGLENET, input_pad: int | None = None,
              fc_channels: int | None = None, fc6_pad: int | None = None) -> Backbone:
    """GoogLeNet trunk, taps inception3b (stride 8), inception4e (16), inception5b (32).

    ``alignment="caffe"`` pads conv1 by 100 and keeps torchvision's unpadded ceil-mode pools;
    ``"same"`` pads conv1 by its natural 3 and the 3×3 pools by 1 so tiny inputs still pass.
    The aux classifiers and fc are not built. ``fc_channels``/``fc6_pad`` are accepted and ignored.
    """
    input_pad, _ = alignment_pads(alignment, input_pad, None, natural=(3, 0))
    pool_pad = 0 if alignment == "caffe" else 1

    def pool(k: int) -> nn.MaxPool2d:
        return nn.MaxPool2d(k, stride=2, padding=pool_pad if k == 3 else 0, ceil_mode=True)

    def inception(name: str, c_in: int) -> Inception:
        return Inception(c_in, *(scaled(c, width) for c in _INCEPTIONS[name]))

    c64, c192 = scaled(64, width), scaled(192, width)
    layers = OrderedDict(conv1=BasicConv2d(in_channels, c64, 7, stride=2, padding=input_pad), maxpool1=pool(3),
                         conv2=BasicConv2d(c64, c64, 1), conv3=BasicConv2d(c64, c192, 3, padding=1),
                         maxpool2=pool(3))
    groups = (("inception3b", None, ("3a", "3b")), ("inception4e", ("maxpool3", 3), ("4a", "4b", "4c", "4d", "4e")),
              ("inception5b", ("maxpool4", 2), ("5a", "5b")))
    taps, stages, c_in = [], [], c192
    for stride, (tap, pooling, blocks) in zip((8, 16, 32), groups):
        if pooling is not None:
            layers = OrderedDict({pooling[0]: pool(pooling[1])})
        for b in blocks:
            layers["inception" + b] = inception("inception" + b, c_in)
            c_in = layers["inception" + b].out_channels
        stages.append(nn.Sequential(layers))
        taps.append(Tap(tap, stride, c_in))
    backbone = Backbone(taps, stages, preprocessing, in_channels)
    for m in backbone.modules():  # torchvision's initialisation
        if isinstance(m, nn.Conv2d):
            nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
    return backbone


# torchvision ``googlenet`` module prefixes → ours (``aux1``, ``aux2``, ``fc`` are dropped).
TORCHVISION_NAMES: dict[str, str] = {
    **{n: f"stages.inception3b.{n}" for n in ("conv1", "conv2", "conv3", "inception3a", "inception3b")},
    **{n: f"stages.inception4e.{n}" for n in ("inception4a", "inception4b", "inception4c", "inception4d",
                                                "inception4e")},
    **{n: f"stages.inception5b.{n}" for n in ("inception5a", "inception5b")},
}
