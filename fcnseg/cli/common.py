"""Pieces the sub-commands share: config lookup, device choice, dataset from a checkpoint."""
from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

import torch

from fcnseg.config import Bad, Rule
from fcnseg.data import Resize, build_dataset
from fcnseg.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def resolve_config(name: str) -> Path:
    """A config path, or a bare name of a config shipped in ``fcnseg/configs`` (``camvid-fcn8s``)."""
    p = Path(name)
    if p.is_file():
        return p
    for cand in (CONFIG_DIR / name, CONFIG_DIR / f"{name}.yaml"):
        if cand.is_file():
            return cand
    shipped = sorted(c.stem for c in CONFIG_DIR.glob("*.yaml"))
    raise ConfigError(f"config not found: {name} (shipped configs: {', '.join(shipped)})")


ENGINE_HELP = ("auto (default): the fastest exact engine for the device: on CPU, Caffe-aligned VGG nets run in "
               "PyTorch border-trimmed and channels_last (nothing exported); other nets run in ONNX Runtime on "
               "one cached dynamic-size export when onnxruntime is installed and enough images are scored to "
               "pay for the export (or it is cached already); see docs/PERFORMANCE.md. torch: the PyTorch "
               "model as trained")


def printable(text: str) -> str:
    """``text`` safe to print on any UTF-8 stream: undecodable file-name bytes become U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _at_least(low: int):
    def check(text: str) -> int:
        value = _whole(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    return check


def int_argument(r: Rule) -> Callable[[str], int]:
    """An argparse ``type`` reading a whole number checked by ``r`` (the option is named by argparse)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        try:
            r.check(value)
        except Bad as e:
            raise argparse.ArgumentTypeError(f"{e}, got {value}") from None
        return value
    parse.__name__ = "whole number"
    return parse


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    return _at_least(1)(text)


def non_negative_int(text: str) -> int:
    """argparse type: a whole number >= 0 (0 usually skips the step)."""
    return _at_least(0)(text)


def int_range(low: int, high: int, what: str = "value"):
    """argparse type factory: a whole number in ``[low, high]``."""
    def check(text: str) -> int:
        value = _whole(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what} must be in {low}..{high}, got {value}")
        return value
    return check


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def probability(text: str) -> float:
    """argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def add_size(p: argparse.ArgumentParser, default: tuple[int, int], help_text: str) -> None:
    """``--size H W``: two whole numbers >= 1."""
    p.add_argument("--size", type=positive_int, nargs=2, metavar=("H", "W"), default=default, help=help_text)


def tile_size(text: str) -> int:
    """argparse type of ``--tile``: a whole number of at least 32 pixels."""
    value = _whole(text)
    if value < 32:
        raise argparse.ArgumentTypeError(f"must be at least 32 pixels, got {value}")
    return value


def downscale(text: str) -> float:
    """argparse type of ``--resize``: a finite downscale factor >= 1 (2 halves each side)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 1:
        raise argparse.ArgumentTypeError(f"must be a finite downscale factor >= 1, got {text}")
    return value


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device: unknown device {name!r}") from None


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")


def dataset_from_checkpoint(ckpt: dict, dataset: str | None, root: str | None, split: str | None,
                            skip_bad: bool = False, resize: float | None = None):
    """Build the split to score: explicit arguments win over the checkpoint's own run config."""
    run = ckpt.get("run_config") or {}
    data = run.get("data", {})
    # the run's validation data (SBD-trained VOC nets score on VOC seg11valid)
    name = dataset or data.get("val_dataset") or data.get("dataset")
    root = root or (data.get("val_root") if name == data.get("val_dataset") else None) or data.get("root")
    split = split or data.get("val_split") or "val"
    resize = resize if resize is not None else data.get("resize")
    if not name or not root:
        raise ConfigError("say which data to use: --dataset NAME --root DIR (the checkpoint does not record it)")
    opts = dict(data.get("options") or {}) if name == data.get("dataset") else {}
    transform = Resize(scale=1 / resize) if resize and resize != 1 else None
    try:
        return build_dataset(name, root, split, transform=transform, skip_bad=skip_bad, **opts)
    except TypeError as e:  # options recorded in the checkpoint that this dataset does not take
        raise ConfigError(f"dataset {name}: bad options {opts} ({e})") from None
