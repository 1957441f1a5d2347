"""ResNet-50/101 (torchvision's v1.5 layout: stride on the 3×3 conv) as FCN backbones."""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from fcnseg.models.backbones.base import Backbone, Tap, alignment_pads, scaled
from fcnseg.models.preprocessing import TORCHVISION, Preprocessing

__all__ = ["Bottleneck", "resnet50", "resnet101", "TORCHVISION_NAMES"]

_EXPANSION = 4
_LAYERS = ("layer1", "layer2", "layer3", "layer4")
_DEPTHS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}


class Bottleneck(nn.Module):
    """1×1 → 3×3 (stride) → 1×1 residual block; ``downsample`` projects the shortcut when needed."""

    def __init__(self, c_in: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        c_out = planes * _EXPANSION
        self.conv1 = nn.Conv2d(c_in, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        return self.relu(self.bn3(self.conv3(y)) + identity)

    def branches(self) -> list[list[nn.Module]]:
        """Main path, then the shortcut (both land on the same output grid)."""
        main = [self.conv1, self.bn1, self.relu, self.conv2, self.bn2, self.relu, self.conv3, self.bn3]
        return [main, [self.downsample if self.downsample is not None else nn.Identity()]]

    def coord_path(self) -> list[nn.Module]:
        return self.branches()[0]


def _resnet(depths: tuple[int, ...], alignment: str, width: float, in_channels: int,
            preprocessing: Preprocessing, input_pad: int | None) -> Backbone:
    input_pad, _ = alignment_pads(alignment, input_pad, None, natural=(3, 0))
    stem = scaled(64, width)
    c_in = stem
    taps, stages = [], []
    for i, (name, depth) in enumerate(zip(_LAYERS, depths)):
        planes, stride = scaled(64 * 2**i, width), (1 if i == 0 else 2)
        blocks = []
        for j in range(depth):
            blocks.append(Bottleneck(c_in, planes, stride if j == 0 else 1))
            c_in = planes * _EXPANSION
        layers = OrderedDict()
        if i == 0:
            layers.update(conv1=nn.Conv2d(in_channels, stem, 7, stride=2, padding=input_pad, bias=False),
                          bn1=nn.BatchNorm2d(stem), relu=nn.ReLU(inplace=True),
                          maxpool=nn.MaxPool2d(3, stride=2, padding=1))
        layers["blocks"] = nn.Sequential(*blocks)
        stages.append(nn.Sequential(layers))
        taps.append(Tap(name, 4 * 2**i, c_in))
    backbone = Backbone(taps, stages, preprocessing, in_channels)
    for m in backbone.modules():  # torchvision's initialisation (no values to draw on the meta device)
        if isinstance(m, nn.Conv2d) and not m.weight.is_meta:
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return backbone


def resnet50(*, alignment: str = "caffe", width: float = 1.0, in_channels: int = 3,
             preprocessing: Preprocessing = TORCHVISION, input_pad: int | None = None,
             fc_channels: int | None = None, fc6_pad: int | None = None) -> Backbone:
    """ResNet-50 trunk, taps layer1–layer4 (strides 4–32, 256–2048 channels).

    The stem (conv1/bn1/relu/maxpool) opens stage ``layer1``. ``alignment="caffe"`` pads
    conv1 by 100, ``"same"`` by its natural 3; ``input_pad`` overrides. ``fc_channels`` and
    ``fc6_pad`` are accepted for a uniform ``create_model`` and ignored (no fc layers here).
    """
    return _resnet(_DEPTHS["resnet50"], alignment, width, in_channels, preprocessing, input_pad)


def resnet101(*, alignment: str = "caffe", width: float = 1.0, in_channels: int = 3,
              preprocessing: Preprocessing = TORCHVISION, input_pad: int | None = None,
              fc_channels: int | None = None, fc6_pad: int | None = None) -> Backbone:
    """ResNet-101 trunk (23 blocks in layer3); otherwise as :func:`resnet50`."""
    return _resnet(_DEPTHS["resnet101"], alignment, width, in_channels, preprocessing, input_pad)


# torchvision ``resnet50``/``resnet101`` module prefixes → ours (``fc`` is dropped).
TORCHVISION_NAMES: dict[str, str] = {
    "conv1": "stages.layer1.conv1",
    "bn1": "stages.layer1.bn1",
    **{name: f"stages.{name}.blocks" for name in _LAYERS},
}
