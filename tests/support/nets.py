"""Tiny FCNs with varied weights, random RGB batches, and reference scores."""
import torch

import fcnseg
from fcnseg.models.base import single


def tiny_fcn(alignment="caffe", classes=5, name="fcn8s"):
    torch.manual_seed(0)
    m = fcnseg.create_model(name, classes, width=1 / 16, fc_channels=64, alignment=alignment).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.1)
        for mod in m.modules():  # positive biases: a non-zero background, as trained nets have
            if isinstance(mod, torch.nn.Conv2d) and mod.bias is not None:
                mod.bias.uniform_(0, 0.5)
    return m


def reference_scores(m, x):
    with torch.no_grad():
        return single(m(m.preprocessing(x)))


def random_images(n, h, w, seed=0):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 255
