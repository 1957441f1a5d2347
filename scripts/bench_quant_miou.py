#!/usr/bin/env python
"""Mean-IU cost of the lossy fast paths, measured on a trained checkpoint.

    python -m scripts.bench_quant_miou --checkpoint runs/demo/checkpoint.pt \
        [--dataset camvid --root fcnseg/data/sample/camvid --split val] [--out docs/bench/quant_miou.json]

Scores the checkpoint's exact fp32 model and each lossy engine (int8 static QDQ and int8 dynamic
through ONNX Runtime, full and border-trimmed; bf16 autocast) with ``fcnseg.evaluate.scoring.evaluate``
on the same split, and reports per engine: mean IU, its difference from fp32 in points, the label
agreement with fp32 and the max |Δ| of the scores. Int8 static calibrates on ``--calib-count`` images
of the checkpoint's *train* split (never the scored split). Defaults: the bundled CamVid sample, val.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from fcnseg.data import build_dataset, sample_root
from fcnseg.evaluate.scoring import evaluate
from fcnseg.infer.engines import Engine, build_engine, onnx_for
from fcnseg.infer.spec import EngineSpec
from fcnseg.models.base import SegmentationModel, single
from fcnseg.models.checkpoint import model_from_checkpoint
from fcnseg.provenance import commit, machine

ENGINES = ("torch-fp32", "ort-fp32", "ort-int8", "ort-int8-dynamic", "ort-int8-trim", "torch-bf16",
           "torch-bf16-trim")


def _engine(name: str, model: SegmentationModel, tmp: Path, size: tuple[int, int] | None,
            calib: list[torch.Tensor]) -> Engine:
    spec = EngineSpec.parse(name)
    if spec.runtime != "ort":
        return build_engine(spec, model)
    if spec.trim and size is None:
        raise SystemExit(f"{name}: the trimmed ONNX graph is fixed-size; the split's images differ in size")
    return build_engine(spec, onnx=onnx_for(spec, model, tmp, size=size, calibration=calib))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="a checkpoint written by fcnseg train")
    ap.add_argument("--dataset", default="camvid")
    ap.add_argument("--root", help="dataset folder (default: the bundled sample)")
    ap.add_argument("--split", default="val")
    ap.add_argument("--calib-split", default="train", help="split the int8 calibration images come from")
    ap.add_argument("--calib-count", type=int, default=8)
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--out", help="JSON output (default: print only)")
    args = ap.parse_args(argv)

    model, ckpt = model_from_checkpoint(args.checkpoint)
    model.eval()
    root = args.root or str(sample_root(args.dataset))
    data = build_dataset(args.dataset, root, args.split)
    calib_ds = build_dataset(args.dataset, root, args.calib_split)
    calib = [calib_ds[i][0] for i in range(min(args.calib_count, len(calib_ds)))]
    sizes = {tuple(data[i][0].shape[-2:]) for i in range(len(data))}
    size = next(iter(sizes)) if len(sizes) == 1 else None
    exclude = getattr(data, "exclude_from_means", None)
    names = [n.strip() for n in args.engines.split(",") if n.strip()]
    results: dict[str, dict] = {}
    ref_scores: list[torch.Tensor] = []
    with tempfile.TemporaryDirectory(prefix="fcnseg-quant-") as tmp_s:
        tmp = Path(tmp_s)
        for name in names:
            t0 = time.perf_counter()
            engine = _engine(name, model, tmp, size, calib)
            metrics = evaluate(engine, data, exclude=exclude, progress=False)
            diffs, agree, pixels = 0.0, 0, 0
            for i in range(len(data)):  # scores vs fp32, image by image
                s = single(engine.predict_scores(data[i][0][None]))
                if name == "torch-fp32":
                    ref_scores.append(s)
                elif ref_scores:
                    diffs = max(diffs, float((s - ref_scores[i]).abs().max()))
                    agree += int((s.argmax(1) == ref_scores[i].argmax(1)).sum())
                    pixels += s[:, 0].numel()
            miou = float(metrics["mean_iu"]) if "mean_iu" in metrics else float("nan")
            results[name] = {"mean_iu": miou, "seconds": time.perf_counter() - t0, "exact": engine.exact,
                             "max_abs_diff_vs_fp32": diffs if name != "torch-fp32" else 0.0,
                             "label_agreement_vs_fp32": agree / pixels if pixels else 1.0}
            base = results.get("torch-fp32", {}).get("mean_iu")
            if base is not None:
                results[name]["mean_iu_cost_points"] = 100 * (base - miou)
            print(f"{name:18s} mean IU {100 * miou:6.2f}  cost {results[name].get('mean_iu_cost_points', 0):+.2f} "
                  f"pts  max|Δ| {results[name]['max_abs_diff_vs_fp32']:.2e}  "
                  f"labels = fp32 {100 * results[name]['label_agreement_vs_fp32']:.2f}%", flush=True)
    try:
        root = str(Path(root).resolve().relative_to(Path(__file__).resolve().parents[1]))
    except ValueError:
        pass
    report = {"checkpoint": args.checkpoint, "model": model.spec.name,
              "checkpoint_iteration": ckpt.get("iteration"), "commit": commit(), "machine": machine(),
              "dataset": args.dataset, "root": root, "split": args.split,
              "images": len(data), "calibration": f"{len(calib)} images of {args.calib_split}",
              "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]), "engines": results}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
