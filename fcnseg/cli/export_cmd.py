"""``fcnseg export``: a checkpoint (or a model built by name) to ONNX with dynamic N/H/W, to torch.export,
and optionally an int8 copy (the work is :mod:`fcnseg.infer.export`)."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from fcnseg.cli.common import add_size, int_range, positive_int
from fcnseg.config import ALIGNMENTS
from fcnseg.errors import ConfigError, FcnsegError
from fcnseg.infer.export import export_onnx, export_torch, quantize_onnx, supported_opsets
from fcnseg.infer.predict import iter_image_paths, load_image
from fcnseg.models import create_model
from fcnseg.models.backbones import BACKBONES
from fcnseg.models.base import SegmentationModel
from fcnseg.models.checkpoint import model_from_checkpoint
from fcnseg.models.registry import MODELS

__all__ = ["add_arguments", "run", "model_from_args"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``fcnseg export``."""
    src = p.add_argument_group("model (a checkpoint, or a model built by name)")
    src.add_argument("--checkpoint", help="a checkpoint written by fcnseg train")
    src.add_argument("--model", default="fcn8s", choices=sorted(MODELS),
                     help="model name when no --checkpoint (default fcn8s)")
    src.add_argument("--backbone", default="vgg16", choices=sorted(BACKBONES))
    src.add_argument("--num-classes", type=positive_int, default=21)
    src.add_argument("--alignment", choices=ALIGNMENTS, default="caffe")
    src.add_argument("--weights", help="trunk weights (registered name or file) when no --checkpoint")
    p.add_argument("--output", "-o", required=True, help="output file: .onnx, or .pt2 for torch.export")
    p.add_argument("--opset", type=_opset,
                   help="ONNX opset (default 17, or the newest the installed torch and onnx write if older)")
    p.add_argument("--static", action="store_true", help="fixed input size (--size) instead of dynamic N/H/W")
    add_size(p, (96, 112), "example input size used for tracing (default 96 112)")
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime vs PyTorch check")
    p.add_argument("--int8", choices=("static", "dynamic"),
                   help="also write an int8 copy (<output>.int8.onnx); static calibrates on --calibration")
    p.add_argument("--calibration", help="folder of images for --int8 static calibration (a few are enough)")
    p.add_argument("--calibration-count", type=positive_int, default=8, help="images used for calibration (default 8)")
    p.add_argument("--calibrate", choices=("percentile", "minmax", "entropy"), default="percentile",
                   help="activation range estimate for --int8 static (default percentile)")


def _opset(text: str) -> int:
    """argparse type of ``--opset``: within what the installed torch and onnx write (imported only when the
    option is given: importing onnx costs most of a second, which no other command should pay)."""
    return int_range(*supported_opsets(), "opset")(text)


def model_from_args(args: argparse.Namespace) -> SegmentationModel:
    """The model an ``fcnseg export``/``bench`` command names: a checkpoint or a fresh ``create_model``."""
    if args.checkpoint:
        return model_from_checkpoint(args.checkpoint, map_location="cpu")[0]
    try:
        return create_model(args.model, args.num_classes, backbone=args.backbone, alignment=args.alignment,
                            weights=args.weights)
    except (ValueError, TypeError) as e:
        if isinstance(e, FcnsegError):
            raise
        raise ConfigError(f"--model {args.model} --backbone {args.backbone}: {e}") from None


def _labels(args: argparse.Namespace) -> tuple[SegmentationModel, dict]:
    """The model, and the class names and palette of its checkpoint (carried in an ONNX export's
    metadata so that ``fcnseg serve model.onnx`` names and colours the classes as the checkpoint does)."""
    if not args.checkpoint:
        return model_from_args(args), {}
    model, ckpt = model_from_checkpoint(args.checkpoint, map_location="cpu")
    return model, {k: ckpt[k] for k in ("classes", "palette") if ckpt.get(k) is not None}


def _calibration_images(folder: str, count: int) -> list[torch.Tensor]:
    paths = list(iter_image_paths([folder]))[:count]
    if not paths:
        raise FileNotFoundError(f"--calibration {folder}: no images found")
    return [load_image(p) for p in paths]


def run(args: argparse.Namespace) -> int:
    """Run ``fcnseg export``; prints what was written."""
    out = Path(args.output)
    if out.suffix.lower() not in (".onnx", ".pt2"):
        raise ConfigError(f"--output {out}: must end in .onnx (ONNX) or .pt2 (torch.export)")
    if out.is_dir():
        raise ConfigError(f"--output {out}: is a folder, not a file")
    if args.int8 == "static" and not args.calibration:
        raise ConfigError("--int8 static needs --calibration FOLDER (or use --int8 dynamic)")
    if args.int8 and out.suffix.lower() != ".onnx":
        raise ConfigError(f"--int8: quantizes ONNX only, not {out}")
    model, labels = _labels(args)
    if out.suffix.lower() == ".pt2":
        export_torch(model, out, dynamic=not args.static, example_size=tuple(args.size))
        print(f"wrote {out} (torch.export, {'static' if args.static else 'dynamic'} shapes)")
        return 0
    opset = args.opset or min(17, supported_opsets()[1])
    export_onnx(model, out, opset=opset, dynamic=not args.static, example_size=tuple(args.size),
                verify=not args.no_verify, metadata=labels)
    print(f"wrote {out} (ONNX opset {opset}, {'static' if args.static else 'dynamic N/H/W'}"
          f"{'' if args.no_verify else ', verified against PyTorch on 3 sizes'})")
    if args.int8:
        calib = _calibration_images(args.calibration, args.calibration_count) if args.int8 == "static" else None
        q = quantize_onnx(out, out.with_suffix(".int8.onnx"), calib, mode=args.int8, calibrate=args.calibrate)
        print(f"wrote {q} (int8 {args.int8}; lossy: check mean IU with scripts/bench_quant_miou.py)")
    return 0
