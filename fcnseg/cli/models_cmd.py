"""``fcnseg models``: the model table."""
from __future__ import annotations

import argparse

import torch

from fcnseg.cli.common import int_argument
from fcnseg.config import CLASS_COUNT
from fcnseg.models import create_model, list_models
from fcnseg.models.weights.hub import describe_releases


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--classes", type=int_argument(CLASS_COUNT), default=21,
                   help="classes for the parameter count (default 21)")
    p.add_argument("--weights", action="store_true",
                   help="list the released models (weights=NAME: downloaded on first use) instead")


def run(args: argparse.Namespace) -> int:
    if args.weights:
        print(describe_releases())
        return 0
    print(f"{'model':28s} {'output stride':>13s} {'params (M)':>11s}")
    for name in list_models():
        with torch.device("meta"):
            m = create_model(name, args.classes)
        stride = m.backbone.tap(m.tap_names[-1]).stride
        print(f"{name:28s} {stride:>13d} {sum(p.numel() for p in m.parameters()) / 1e6:>11.1f}")
    return 0
