"""``fcnseg demo``: train FCN-8s on the bundled CamVid sample, score it, predict, write a report."""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from fcnseg.atomic import write_json, write_text
from fcnseg.cli.common import int_argument, resolve_config
from fcnseg.config import load_config, whole
from fcnseg.data import build_dataset, sample_root
from fcnseg.errors import ConfigError
from fcnseg.evaluate.scoring import format_table, save_metrics
from fcnseg.infer.predict import format_summary, predict_paths
from fcnseg.models.checkpoint import model_from_checkpoint
from fcnseg.provenance import machine
from fcnseg.train.loop import train
from fcnseg.visualize import plot_confusion, plot_curves


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. train.epochs=5")
    p.add_argument("--predict", type=int_argument(whole(0)), default=4, help="held-out images to predict (default 4)")


def run(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    root = sample_root("camvid")
    # JSON strings are YAML scalars: any path survives, and "" reaches the schema (not Path("") == ".")
    cfg = load_config(resolve_config("demo-camvid"),
                      [f"data.root={json.dumps(str(root))}", f"out={json.dumps(args.out)}", *args.overrides])
    out = Path(cfg.out)
    if not cfg.data.val_split:
        raise ConfigError("data.val_split: the demo scores and reports on the sample's val split; "
                          "it cannot be null (use fcnseg train for a run without validation)")
    print(f"demo: training {cfg.model.name} ({cfg.model.backbone}, {cfg.model.weights}) on the bundled CamVid "
          f"sample at {root}", flush=True)
    result = train(cfg, overwrite=True)  # `make demo` reruns into runs/demo
    if result.get("interrupted"):  # SIGINT/SIGTERM: train saved last.pt and said so; no scoring, no report
        print(f"fcnseg: error: demo stopped at iteration {result.get('iterations')}/{result.get('total_iterations')}"
              f" before scoring; checkpoint kept at {result['last_checkpoint']}", file=sys.stderr)
        return 130
    # the final model is what is reported (no choice of checkpoint on the val split it is scored on)
    model, _ = model_from_checkpoint(result["last_checkpoint"])
    val = build_dataset("camvid", root, "val")
    metrics = result["metrics"]
    table = format_table(metrics, val.classes)
    print(table)
    save_metrics(metrics, out / "metrics.json")
    plot_confusion(metrics["confusion"], val.classes, out / "confusion.png")
    plot_curves(out / "log.csv", out / "curves.png", out / "eval.csv")
    picks = sorted((root / "val").iterdir())[: args.predict]
    shown = []
    for s in predict_paths(model, picks, out / "predictions", palette=val.palette, class_names=val.classes):
        print(format_summary(s))
        shown.append(s)
    minutes = (time.perf_counter() - t0) / 60
    report = _report(cfg, result, metrics, table, shown, out, minutes)
    write_text(out / "report.md", report)
    summary = {"command": "make demo", "mean_iu": metrics["mean_iu"], "pixel_accuracy": metrics["pixel_accuracy"],
               "mean_accuracy": metrics["mean_accuracy"], "fw_iu": metrics["fw_iu"], "minutes": round(minutes, 1),
               "iterations": result.get("iterations"), "val_images": len(val), "machine": machine(),
               "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}
    write_json(out / "summary.json", summary, indent=1)
    print(f"\nmean IU {100 * metrics['mean_iu']:.1f}% on the sample's {len(val)} held-out images "
          f"({minutes:.1f} min). Report: {out / 'report.md'}")
    return 0


def _report(cfg, result: dict, metrics: dict, table: str, shown: list[dict], out: Path, minutes: float) -> str:
    rows = "\n".join(f"| ![]({os.path.relpath(s['overlay_path'], out)}) | "
                     f"{Path(s['path']).name} | " + ", ".join(f"{c} {100 * f:.0f}%" for c, f in s["top"]) + " |"
                     for s in shown)
    return f"""# fcnseg demo

{cfg.model.name} on {cfg.model.backbone} ({cfg.model.weights} trunk, frozen; fc6/fc7 {cfg.model.fc_channels} wide),
trained on the bundled CamVid sample (60 train images, 240×180) and scored on its 20 held-out val images.

- mean IU **{100 * metrics['mean_iu']:.1f}%**, pixel accuracy {100 * metrics['pixel_accuracy']:.1f}%,
  mean accuracy {100 * metrics['mean_accuracy']:.1f}%, f.w. IU {100 * metrics['fw_iu']:.1f}%
- {result.get('iterations')} iterations, {minutes:.1f} minutes in all on {platform.processor() or platform.machine()}
  ({_cores()} cores), torch {_torch()}

```
{table}
```

Training curves: ![](curves.png)  Confusion matrix: ![](confusion.png)

| overlay | image | largest classes |
|---|---|---|
{rows}

Config: `{json.dumps(cfg.to_dict())}`
"""


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _torch() -> str:
    return torch.__version__
