"""Net surgery: a convolutionalised classifier computes the classifier; bilinear Upsample geometry."""
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fcnseg.models.backbones import vgg16
from fcnseg.models.backbones.base import scaled
from fcnseg.models.backbones.vgg import VGG16_BLOCKS
from fcnseg.models.surgery import convolutionalize, fit_tensor
from fcnseg.models.upsample import Upsample
from fcnseg.models.weights.torchvision import load_torchvision

WIDTH, FC = 1 / 16, 1024  # trunk channels 4…32, fc 64


def tv_vgg16_classifier(width: float, fc: int, classes: int = 10) -> nn.Module:
    """A torchvision-layout VGG16 classifier (features.N / avgpool / classifier.N)."""
    features, c_in = [], 3
    for _, convs, c in VGG16_BLOCKS:
        c = scaled(c, width)
        for _ in convs:
            features += [nn.Conv2d(c_in, c, 3, padding=1), nn.ReLU(inplace=True)]
            c_in = c
        features.append(nn.MaxPool2d(2, 2))
    classifier = nn.Sequential(nn.Linear(c_in * 49, fc), nn.ReLU(True), nn.Dropout(), nn.Linear(fc, fc),
                               nn.ReLU(True), nn.Dropout(), nn.Linear(fc, classes))
    return nn.Sequential(OrderedDict(features=nn.Sequential(*features), avgpool=nn.AdaptiveAvgPool2d(7),
                                     flatten=nn.Flatten(), classifier=classifier))


def test_convolutionalize_matches_linear():
    torch.manual_seed(0)
    lin = nn.Linear(2 * 3 * 3, 5)
    conv = convolutionalize(lin, 2, 3)
    x = torch.randn(4, 2, 3, 3)
    torch.testing.assert_close(conv(x).flatten(1), lin(x.flatten(1)))
    assert conv.padding == (0, 0)
    with pytest.raises(ValueError, match="in_features"):
        convolutionalize(lin, 3, 3)


def test_fit_tensor_rules():
    assert fit_tensor(torch.zeros(1, 1, 1, 8), (8,)).shape == (8,)            # legacy Caffe bias
    assert fit_tensor(torch.zeros(1, 1, 6, 2 * 49), (6, 2, 7, 7)).shape == (6, 2, 7, 7)  # legacy fc6
    assert fit_tensor(torch.zeros(6, 12), (6, 12, 1, 1)).shape == (6, 12, 1, 1)        # fc7
    with pytest.raises(ValueError, match="conv9"):
        fit_tensor(torch.zeros(6, 12), (6, 3, 2, 1), "conv9")
    with pytest.raises(ValueError):
        fit_tensor(torch.zeros(4, 3, 3, 3), (4, 3, 1, 9))


def test_convolutionalized_vgg16_computes_the_classifier(tmp_path):
    torch.manual_seed(0)
    clf = tv_vgg16_classifier(WIDTH, scaled(FC, WIDTH)).eval()
    path = tmp_path / "vgg16_tv.pth"
    torch.save(clf.state_dict(), path)
    trunk = vgg16(alignment="same", fc6_pad=0, width=WIDTH, fc_channels=FC)
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert load_torchvision(trunk, state, backbone="vgg16") == ["classifier.6.weight", "classifier.6.bias"]
    trunk.eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ref = clf.classifier[:5](clf.flatten(clf.avgpool(clf.features(x))))   # fc7 after ReLU
        tap = trunk(x, {"fc7"})["fc7"]
        assert tap.shape[-2:] == (1, 1)
        torch.testing.assert_close(tap[:, :, 0, 0], ref, rtol=1e-4, atol=1e-4)
        assert trunk(torch.randn(1, 3, 448, 448), {"fc7"})["fc7"].shape[-2:] == (8, 8)


@pytest.mark.parametrize("factor", [2, 4, 8, 32])
def test_upsample_is_bilinear_interpolation(factor):
    """A stride-f, 2f-kernel transposed conv output, cropped by f/2, is align_corners=False bilinear
    interpolation away from the borders (where interpolate clamps instead)."""
    torch.manual_seed(0)
    n, c = 5, 3
    x = torch.randn(1, c, n, n)
    up = Upsample(c, factor, 2 * factor, learnable=False)
    with torch.no_grad():
        y = up(x)
    ref = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    assert y.shape[-1] == (n + 1) * factor
    inner = slice(factor // 2, n * factor - factor // 2)

    def cropped(crop):
        return y[..., crop:crop + n * factor, crop:crop + n * factor][..., inner, inner]

    torch.testing.assert_close(cropped(factor // 2), ref[..., inner, inner], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(cropped(factor // 2 + 1), ref[..., inner, inner], atol=1e-3)
