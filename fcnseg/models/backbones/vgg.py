"""VGG16 with fc6/fc7 as convolutions (the FCN paper's main backbone)."""
from __future__ import annotations

from collections import OrderedDict

from torch import nn

from fcnseg.models.backbones.base import Backbone, Tap, alignment_pads, scaled
from fcnseg.models.preprocessing import CAFFE_VGG, Preprocessing

__all__ = ["vgg16", "VGG16_BLOCKS"]

# (stage/tap name, conv layer names, output channels)
VGG16_BLOCKS = (
    ("pool1", ("conv1_1", "conv1_2"), 64),
    ("pool2", ("conv2_1", "conv2_2"), 128),
    ("pool3", ("conv3_1", "conv3_2", "conv3_3"), 256),
    ("pool4", ("conv4_1", "conv4_2", "conv4_3"), 512),
    ("pool5", ("conv5_1", "conv5_2", "conv5_3"), 512),
)


def vgg16(*, alignment: str = "caffe", fc_channels: int = 4096, width: float = 1.0, in_channels: int = 3,
          preprocessing: Preprocessing = CAFFE_VGG, input_pad: int | None = None,
          fc6_pad: int | None = None) -> Backbone:
    """VGG16 trunk, taps pool1–pool5 and fc7 (fc6: 7×7 conv, fc7: 1×1 conv, both with dropout).

    ``alignment="caffe"`` pads conv1_1 by 100 and leaves fc6 unpadded (the reference);
    ``"same"`` pads conv1_1 by 1 and fc6 by 3 so maps keep ceil(H/stride).
    ``input_pad``/``fc6_pad`` override either.
    """
    input_pad, fc6_pad = alignment_pads(alignment, input_pad, fc6_pad, natural=(1, 3))
    taps, stages, c_in = [], [], in_channels
    for stride_exp, (tap, convs, c) in enumerate(VGG16_BLOCKS, start=1):
        c = scaled(c, width)
        layers = OrderedDict()
        for conv in convs:
            pad = input_pad if conv == "conv1_1" else 1
            layers[conv] = nn.Conv2d(c_in, c, 3, padding=pad)
            layers["relu" + conv[4:]] = nn.ReLU(inplace=True)
            c_in = c
        layers[tap] = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        taps.append(Tap(tap, 2**stride_exp, c))
        stages.append(nn.Sequential(layers))
    fc = scaled(fc_channels, width)
    stages.append(nn.Sequential(OrderedDict(
        fc6=nn.Conv2d(c_in, fc, 7, padding=fc6_pad), relu6=nn.ReLU(inplace=True), drop6=nn.Dropout(0.5),
        fc7=nn.Conv2d(fc, fc, 1), relu7=nn.ReLU(inplace=True), drop7=nn.Dropout(0.5),
    )))
    taps.append(Tap("fc7", 32, fc))
    return Backbone(taps, stages, preprocessing, in_channels, classifier_tap="fc7")

# torchvision ``vgg16`` module prefixes → ours (fc6/fc7 are Linear there: reshaped on import).
_TV_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
TORCHVISION_NAMES: dict[str, str] = {
    **{f"features.{i}": f"stages.{tap}.{conv}" for i, (tap, conv) in
       zip(_TV_CONV_INDICES, [(t, c) for t, convs, _ in VGG16_BLOCKS for c in convs])},
    "classifier.0": "stages.fc7.fc6",
    "classifier.3": "stages.fc7.fc7",
}
