#!/usr/bin/env python
"""The peer's prediction as its users write it, for ``scripts/bench_commands.py``: torchfcn 1.9.7 ``FCN8s``,
``load_state_dict(torch.load(...))``, each image read, preprocessed as torchfcn's datasets do (RGB → BGR,
float, the VGG mean subtracted), one forward under ``no_grad``, argmax, the labels saved as a PNG.

    python scripts/peer_predict.py --weights peer.pth --out DIR IMAGE_OR_FOLDER ...

Nothing of fcnseg is imported, so the process pays only what a torchfcn user's would. torchfcn's package
``__init__`` imports its trainer and datasets (``fcn``, ``skimage`` …, not installed here) and its model
module imports ``fcn``; as in ``fcnseg.bench.peer.load_peer_models`` (which this script cannot import without
importing fcnseg), ``torchfcn.models`` is loaded alone, ``fcn`` and ``torchvision`` stubbed while it imports.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image

MEAN_BGR = np.array([104.00698793, 116.66876762, 122.67891434])  # torchfcn.datasets.voc.VOCClassSegBase


def fcn8s_class() -> type:
    spec = importlib.util.find_spec("torchfcn")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("peer_predict: torchfcn is not installed: pip install --no-deps torchfcn==1.9.7")
    package = types.ModuleType("torchfcn")
    package.__path__ = list(spec.submodule_search_locations)
    stubs = {n: types.ModuleType(n) for n in ("fcn", "torchvision") if n not in sys.modules}
    sys.modules.update(stubs, torchfcn=package)
    try:
        return importlib.import_module("torchfcn.models").FCN8s
    finally:
        for n in stubs:
            del sys.modules[n]


def images(inputs: list[str]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, inputs):
        out += sorted(q for q in p.iterdir() if q.suffix.lower() in (".png", ".jpg", ".jpeg")) if p.is_dir() else [p]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+")
    ap.add_argument("--weights", required=True, help="a torchfcn FCN8s state_dict (torch.save)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--classes", type=int, default=21)
    args = ap.parse_args()
    model = fcn8s_class()(n_class=args.classes)
    model.load_state_dict(torch.load(args.weights))
    model.eval()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path in images(args.inputs):
        rgb = np.array(Image.open(path).convert("RGB"))
        bgr = rgb[:, :, ::-1].astype(np.float64) - MEAN_BGR
        x = torch.from_numpy(bgr.transpose(2, 0, 1).copy()).float()[None]
        with torch.no_grad():
            labels = model(x)[0].argmax(0).numpy().astype(np.uint8)
        Image.fromarray(labels).save(out / f"{path.stem}_label.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
