#!/usr/bin/env python
"""The API path of ``scripts/bench_commands.py``: a checkpoint through ``choose_engine(model, "cpu")``, each
image's labels saved as a PNG (what a user of the Python API writes in place of ``fcnseg predict``).

    python scripts/api_predict.py --checkpoint C --out DIR IMAGE_OR_FOLDER ...
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

from fcnseg.infer.engines import choose_engine
from fcnseg.infer.predict import iter_image_paths, predict_labels, read_rgb_uint8
from fcnseg.models.checkpoint import model_from_checkpoint


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+")
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    model, _ = model_from_checkpoint(args.checkpoint)
    engine = choose_engine(model, "cpu")
    del model  # the engine holds what it runs
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path in iter_image_paths(args.inputs):
        Image.fromarray(predict_labels(engine, read_rgb_uint8(path))).save(out / f"{path.stem}_label.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
