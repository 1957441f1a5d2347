"""In-network upsampling: transposed convolution initialised to bilinear interpolation."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["bilinear_kernel", "Upsample"]


def bilinear_kernel(size: int) -> torch.Tensor:
    """2-D bilinear interpolation filter of ``size``×``size`` (odd or even), as Caffe's filler."""
    factor = (size + 1) // 2
    centre = factor - 1 if size % 2 == 1 else factor - 0.5
    og = torch.arange(size, dtype=torch.float64)
    k1 = 1 - (og - centre).abs() / factor
    return (k1[:, None] * k1[None, :]).float()


class Upsample(nn.ConvTranspose2d):
    """``factor``× upsampling of a C-channel score map, C×C kernel (as the reference),
    bilinear on the diagonal, no bias; ``learnable=False`` freezes it."""

    def __init__(self, channels: int, factor: int, kernel_size: int, learnable: bool) -> None:
        super().__init__(channels, channels, kernel_size, stride=factor, bias=False)
        self.factor = factor
        with torch.no_grad():
            self.weight.zero_()
            k = bilinear_kernel(kernel_size)
            for c in range(channels):
                self.weight[c, c] = k
        self.weight.requires_grad_(learnable)
