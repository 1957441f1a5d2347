"""Argument checks of the public API: a wrong type is a ``TypeError``, a wrong value a ``ValueError``,
each naming the argument (never an AttributeError from deep inside)."""
from __future__ import annotations

import numbers
import os
from pathlib import Path
from typing import Any

from torch import nn

__all__ = ["path_arg", "module_arg", "whole_number", "size_arg"]


def path_arg(value: Any, name: str) -> Path:
    """``value`` as a Path; a str or os.PathLike is required."""
    if isinstance(value, (str, os.PathLike)) and str(value):
        return Path(value)
    raise TypeError(f"{name} must be a path (str or os.PathLike), got {type(value).__name__} {value!r:.60}")


def module_arg(value: Any, name: str = "model"):
    """``value`` must be a torch ``nn.Module``."""
    if not isinstance(value, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(value).__name__}")
    return value


def whole_number(value: Any, name: str, low: int | None = None) -> int:
    """An int (not a bool) >= ``low``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r:.60}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


def size_arg(value: Any, name: str) -> tuple[int, int]:
    """An (H, W) pair of ints >= 1."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name} must be an (H, W) pair of ints, got {value!r:.60}")
    return whole_number(value[0], f"{name}[0]", 1), whole_number(value[1], f"{name}[1]", 1)
