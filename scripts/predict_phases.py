#!/usr/bin/env python
"""Where a one-image ``fcnseg predict`` spends its seconds, for ``scripts/bench_commands.py``: the steps the
command takes, each timed, in one fresh process; prints one JSON object.

    python scripts/predict_phases.py --checkpoint C --image IMG --out DIR

``torch_import_s`` and ``fcnseg_import_s`` (what ``fcnseg predict`` imports besides torch), ``checkpoint_s``
(``model_from_checkpoint``: the file mapped, every field and the weights' SHA-256 checked, the net built on
the meta device and given the tensors), ``checksum_s`` (that SHA-256 alone, timed again with the file's pages
in memory: part of ``checkpoint_s``), ``engine_s`` (``choose_engine``), ``read_s``, ``first_forward_s`` (the
first image: the trimmed net's plan and zero-image skeleton for its size included), ``forward_s`` (the same
image again), ``write_s`` (label and overlay PNGs, as ``predict`` writes them).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

t_start = time.perf_counter()
import torch  # noqa: E402

t_torch = time.perf_counter()
import fcnseg.cli.predict_cmd  # noqa: E402, F401  (what the command imports)
from fcnseg.data.palette import palette_or_default  # noqa: E402
from fcnseg.infer.engines import choose_engine  # noqa: E402
from fcnseg.infer.predict import make_output_dir, predict_labels, read_rgb_uint8  # noqa: E402
from fcnseg.models.checkpoint import model_from_checkpoint, state_checksum  # noqa: E402
from fcnseg.paths import cache_dir  # noqa: E402
from fcnseg.visualize import colorize, overlay, save_image  # noqa: E402

t_fcnseg = time.perf_counter()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    out = {"torch_import_s": t_torch - t_start, "fcnseg_import_s": t_fcnseg - t_torch}

    def timed(key, fn):
        t0 = time.perf_counter()
        value = fn()
        out[key] = time.perf_counter() - t0
        return value

    model, ckpt = timed("checkpoint_s", lambda: model_from_checkpoint(args.checkpoint, map_location="cpu"))
    timed("checksum_s", lambda: state_checksum(ckpt["model"]))
    palette = palette_or_default(ckpt.get("palette"), "checkpoint", max(model.heads.values()))
    engine = timed("engine_s", lambda: choose_engine(model.eval(), "cpu", images=1, cache_dir=cache_dir("engines"),
                                                      checksum=ckpt["checksum"]))
    rgb = timed("read_s", lambda: read_rgb_uint8(args.image, pad=engine.input_padding))
    with torch.inference_mode():
        labels = timed("first_forward_s", lambda: predict_labels(engine, rgb))
        timed("forward_s", lambda: predict_labels(engine, rgb))
    folder = make_output_dir(args.out)
    timed("write_s", lambda: (save_image(colorize(labels, palette), folder / "img_label.png"),
                              save_image(overlay(rgb, labels, palette, 0.5), folder / "img_overlay.png")))
    out["engine"] = engine.name
    out["total_s"] = time.perf_counter() - t_start
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
