"""Coordinate maps: where a feature-map pixel lands in input coordinates.

Every layer maps its output index ``o`` to input coordinates ``x = scale * o + offset``
(the centre of its receptive field). Composing these maps along a net gives each tap's
map, and two maps with the same scale differ by a pure translation: the crop offset.
This is the computation Caffe's ``coord_map.py`` performs, done on PyTorch modules.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from torch import nn

__all__ = ["CoordMap", "coord_map", "crop_offset"]

_PASS_THROUGH = (
    nn.ReLU, nn.Dropout, nn.Dropout2d, nn.BatchNorm2d, nn.SyncBatchNorm, nn.Identity,
    nn.LocalResponseNorm, nn.GroupNorm,
)


@dataclass(frozen=True)
class CoordMap:
    """``x_input = scale * index + offset`` (exact rationals)."""

    scale: Fraction = Fraction(1)
    offset: Fraction = Fraction(0)

    def then(self, inner: CoordMap) -> CoordMap:
        """Compose: ``self`` maps layer-k indices to input; ``inner`` maps layer-(k+1) to layer-k."""
        return CoordMap(self.scale * inner.scale, self.scale * inner.offset + self.offset)


def _single(v) -> int:
    if isinstance(v, (tuple, list)):
        if len(set(v)) != 1:
            raise ValueError(f"coordinate maps need square kernels/strides/pads, got {v}")
        return int(v[0])
    return int(v)


def layer_map(module: nn.Module) -> CoordMap:
    """The map of one layer (conv, pool, transposed conv or pass-through)."""
    if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        k, s = _single(module.kernel_size), _single(module.stride or module.kernel_size)
        p, d = _single(module.padding), _single(getattr(module, "dilation", 1))
        k_eff = (k - 1) * d + 1
        return CoordMap(Fraction(s), Fraction(k_eff - 1, 2) - p)
    if isinstance(module, nn.ConvTranspose2d):
        k, s, p = (_single(getattr(module, a)) for a in ("kernel_size", "stride", "padding"))
        centre = Fraction(k - 1, 2) - p
        return CoordMap(Fraction(1, s), -centre / s)
    if isinstance(module, _PASS_THROUGH) or not any(True for _ in module.children()) and not any(
        True for _ in module.parameters(recurse=False)
    ):
        return CoordMap()
    return coord_map(module)


def coord_map(module: nn.Module) -> CoordMap:
    """Compose the maps of a module's main path.

    Containers are walked in registration order. A block with parallel branches (inception,
    residual) declares ``coord_path()`` returning the modules of one branch, all branches
    being aligned by construction.
    """
    path = module.coord_path() if hasattr(module, "coord_path") else list(module.children())
    if not path:
        raise TypeError(f"no coordinate map for layer {type(module).__name__}")
    result = CoordMap()
    for child in path:
        result = result.then(layer_map(child))
    return result


def crop_offset(a: CoordMap, b: CoordMap) -> int:
    """Index shift ``d`` with ``a[i + d] ~ b[i]``, i.e. how far ``a`` must be cropped to align on ``b``."""
    if a.scale != b.scale:
        raise ValueError(f"maps of different scale cannot be aligned: {a.scale} vs {b.scale}")
    d = (b.offset - a.offset) / a.scale
    if d.denominator != 1:
        raise ValueError(f"maps are misaligned by a fractional offset {d}")
    return int(d)
