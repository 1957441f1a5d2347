"""State dicts in torchvision's layout (keys and shapes as torchvision writes them), at reduced widths."""
import torch

from fcnseg.models.backbones.base import scaled

W = 1 / 16
TINY = dict(width=W, fc_channels=1024)  # fc layers 64 wide


def tv_vgg16_state(fc=64, classes=10) -> dict:
    """A torchvision vgg16 state_dict (keys and shapes as torchvision writes them), reduced widths."""
    torch.manual_seed(1)
    sd, c_in, idx = {}, 3, 0
    for n_convs, c in ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512)):
        c = scaled(c, W)
        for _ in range(n_convs):
            sd[f"features.{idx}.weight"] = torch.randn(c, c_in, 3, 3)
            sd[f"features.{idx}.bias"] = torch.randn(c)
            c_in, idx = c, idx + 2
        idx += 1  # the pool
    for i, (o, k) in zip((0, 3, 6), ((fc, c_in * 49), (fc, fc), (classes, fc))):
        sd[f"classifier.{i}.weight"], sd[f"classifier.{i}.bias"] = torch.randn(o, k), torch.randn(o)
    return sd


def tv_alexnet_state(fc=64) -> dict:
    torch.manual_seed(2)
    sd, c_in = {}, 3
    for i, c, k in ((0, 64, 11), (3, 192, 5), (6, 384, 3), (8, 256, 3), (10, 256, 3)):
        c = scaled(c, W)
        sd[f"features.{i}.weight"], sd[f"features.{i}.bias"] = torch.randn(c, c_in, k, k), torch.randn(c)
        c_in = c
    for i, (o, k) in zip((1, 4, 6), ((fc, c_in * 36), (fc, fc), (1000, fc))):
        sd[f"classifier.{i}.weight"], sd[f"classifier.{i}.bias"] = torch.randn(o, k), torch.randn(o)
    return sd
