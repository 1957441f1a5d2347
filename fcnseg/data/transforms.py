"""Joint transforms on ``(image, label)``.

``image``: float tensor (C, H, W), RGB 0–255 (extra channels ride along); ``label``: int64 (H, W) or a
dict of such (SIFT Flow). Random transforms draw from ``generator`` when given, else from torch's
global RNG (``torch.manual_seed``), so results are reproducible either way.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from fcnseg.data.base import IGNORE_INDEX

__all__ = ["Compose", "RandomScale", "RandomCrop", "RandomHorizontalFlip", "ColorJitter", "Resize",
           "resize_pair"]

Pair = tuple[torch.Tensor, Any]


def _map_label(label: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(label, dict):
        return {k: fn(v) for k, v in label.items()}
    return fn(label)


def _uniform(lo: float, hi: float, generator: torch.Generator | None) -> float:
    return lo + (hi - lo) * torch.rand((), generator=generator).item()


def _randint(n: int, generator: torch.Generator | None) -> int:
    """Uniform integer in [0, n)."""
    return int(torch.randint(n, (), generator=generator).item())


def resize_pair(image: torch.Tensor, label: Any, size: tuple[int, int], antialias: bool = False) -> Pair:
    """Resize to ``size`` (H, W): image bilinear, label nearest."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image, label
    img = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False,
                        antialias=antialias)[0]

    def lab_fn(lab: torch.Tensor) -> torch.Tensor:
        return F.interpolate(lab[None, None].float(), size=size, mode="nearest-exact")[0, 0].to(lab.dtype)

    return img, _map_label(label, lab_fn)


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Callable[[torch.Tensor, Any], Pair]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: torch.Tensor, label: Any) -> Pair:
        for t in self.transforms:
            image, label = t(image, label)
        return image, label

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class RandomScale:
    """Rescale both sides by ``s ~ U(min_scale, max_scale)``; bilinear image, nearest label."""

    def __init__(self, min_scale: float = 0.5, max_scale: float = 2.0,
                 generator: torch.Generator | None = None) -> None:
        if not 0 < min_scale <= max_scale:
            raise ValueError("RandomScale: need 0 < min_scale <= max_scale")
        self.min_scale, self.max_scale, self.generator = min_scale, max_scale, generator

    def __call__(self, image: torch.Tensor, label: Any) -> Pair:
        s = _uniform(self.min_scale, self.max_scale, self.generator)
        h, w = image.shape[-2:]
        return resize_pair(image, label, (max(1, round(h * s)), max(1, round(w * s))))


class RandomCrop:
    """Crop ``size`` (H, W) at a random place; smaller inputs are first padded bottom/right.

    Padding: image with ``fill`` (a number, or per-channel values such as a mean, so the padded area
    becomes 0 after mean subtraction), label with ``ignore_index`` (255).
    """

    def __init__(self, size: int | tuple[int, int], fill: float | Sequence[float] = 0.0,
                 ignore_index: int = IGNORE_INDEX, generator: torch.Generator | None = None) -> None:
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.fill, self.ignore_index, self.generator = fill, ignore_index, generator

    def __call__(self, image: torch.Tensor, label: Any) -> Pair:
        th, tw = self.size
        h, w = image.shape[-2:]
        ph, pw = max(0, th - h), max(0, tw - w)
        if ph or pw:
            fill = torch.as_tensor(self.fill, dtype=image.dtype).reshape(-1, 1, 1)
            if fill.numel() not in (1, image.shape[0]):
                raise ValueError(f"RandomCrop: fill has {fill.numel()} values for {image.shape[0]} channels")
            padded = fill.expand(image.shape[0], h + ph, w + pw).clone()
            padded[:, :h, :w] = image
            image = padded
            label = _map_label(label, lambda t: F.pad(t, (0, pw, 0, ph), value=self.ignore_index))
            h, w = h + ph, w + pw
        y, x = _randint(h - th + 1, self.generator), _randint(w - tw + 1, self.generator)
        return image[:, y:y + th, x:x + tw], _map_label(label, lambda t: t[y:y + th, x:x + tw])


class RandomHorizontalFlip:
    """Mirror left-right with probability ``p``."""

    def __init__(self, p: float = 0.5, generator: torch.Generator | None = None) -> None:
        self.p, self.generator = p, generator

    def __call__(self, image: torch.Tensor, label: Any) -> Pair:
        if torch.rand((), generator=self.generator).item() < self.p:
            return image.flip(-1), _map_label(label, lambda t: t.flip(-1))
        return image, label


class ColorJitter:
    """Random brightness, contrast, saturation on the first 3 (RGB) channels; label untouched.

    Each factor ~ U(max(0, 1 - v), 1 + v); applied in that order; result clamped to 0–255.
    """

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0,
                 generator: torch.Generator | None = None) -> None:
        self.brightness, self.contrast, self.saturation = brightness, contrast, saturation
        self.generator = generator

    def _factor(self, v: float) -> float:
        return _uniform(max(0.0, 1 - v), 1 + v, self.generator) if v > 0 else 1.0

    def __call__(self, image: torch.Tensor, label: Any) -> Pair:
        b, c, s = self._factor(self.brightness), self._factor(self.contrast), self._factor(self.saturation)
        if image.shape[0] < 3:  # no colour channels (e.g. depth only)
            return image, label
        rgb = image[:3].float()
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=rgb.dtype).view(3, 1, 1)
        rgb = rgb * b
        if c != 1.0:
            mean = (rgb * weights).sum(0).mean()
            rgb = (rgb - mean) * c + mean
        if s != 1.0:
            gray = (rgb * weights).sum(0, keepdim=True)
            rgb = (rgb - gray) * s + gray
        rgb = rgb.clamp(0, 255).to(image.dtype)
        return torch.cat([rgb, image[3:]], 0), label


class Resize:
    """Deterministic resize by ``scale`` (float) or to ``size`` (H, W); antialiased image, nearest label."""

    def __init__(self, scale: float | None = None, size: tuple[int, int] | None = None) -> None:
        if (scale is None) == (size is None):
            raise ValueError("Resize: give exactly one of scale or size")
        self.scale, self.size = scale, size

    def __repr__(self) -> str:
        return f"Resize(scale={self.scale!r}, size={self.size!r})"

    def __call__(self, image: torch.Tensor, label: Any) -> Pair:
        h, w = image.shape[-2:]
        size = tuple(self.size) if self.size is not None else (max(1, round(h * self.scale)),
                                                               max(1, round(w * self.scale)))
        return resize_pair(image, label, size, antialias=True)
