#!/usr/bin/env python
"""Whole commands as a user runs them: wall time and whole-process peak RSS, next to the peer.

    python -m scripts.bench_commands                    # writes docs/bench/commands.json, regenerates PERFORMANCE.md
    python -m scripts.bench_commands --counts 1 --reps 1 --out /tmp/commands.json --no-docs   # a quick try

Builds a 4096-wide FCN-8s-VGG16 checkpoint (21 classes, seeded random weights, score layers included), the
peer's torchfcn ``FCN8s`` state_dict from the same weights (``fcnseg.bench.peer.peer_state_dict``) and
100 seeded 500×500 PNG images, then runs each command as a fresh process for 1, 10 and 100 images:

* ``peer``: ``scripts/peer_predict.py`` (torchfcn 1.9.7, ``load_state_dict(torch.load(...))``, labels as PNG);
* ``predict``: ``fcnseg predict DIR`` (default engine, label and overlay PNGs), **cold** (an empty engine
  cache: ``FCNSEG_CACHE`` a new folder) and **warm** (the cache a previous run of it filled);
* ``predict --engine torch``: the plain PyTorch engine (never consults the cache);
* ``api``: ``scripts/api_predict.py`` (``model_from_checkpoint``, ``choose_engine(model, "cpu")``, labels as PNG).

Then ``scripts/predict_phases.py`` (``--phase-reps`` fresh processes) times the steps of a one-image
``fcnseg predict``: imports, checkpoint (with its checksum), engine, first and second forward, writing outputs.

Cold means the engine cache only: the OS page cache is not dropped (that needs root), so the checkpoint and
the images are read from memory in every run, as they are on a machine that just wrote or read them. Wall time
runs from the launch to the exit; peak RSS is the process's high-water mark (``wait4``'s ``ru_maxrss``, the
largest of the process and any child it waited for). Each repetition runs every command once, in turn. The
1-minute load average is recorded before and after each run, and the load *other* processes put on the
machine during the run (all CPUs' busy time from ``/proc/stat`` less the command's own CPU time, over its
wall time): a run with more than 1.0 of it is marked unreliable (the load average itself includes the
previous command of this benchmark). About 15 minutes on 2 idle cores with the defaults.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fcnseg.atomic import write_json
from fcnseg.bench.measure import machine_info, run_process
from fcnseg.bench.peer import peer_state_dict
from fcnseg.models import create_model
from fcnseg.models.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = "fcnseg-commands-v1"
COMMANDS = ("peer", "predict-cold", "predict-warm", "predict-torch", "api")
UNRELIABLE_LOAD = 1.0


def setup(work: Path, n_images: int, log) -> dict:
    """Checkpoint, peer weights and image folders (``in1``, ``in10``, ``in100``: the first N images)."""
    torch.manual_seed(0)
    model = create_model("fcn8s", 21).eval()
    with torch.no_grad():
        for p in model.score.parameters():
            p.normal_(std=0.01)  # zero-initialised otherwise: every label would be 0
    ckpt = save_checkpoint(work / "fcn8s-vgg16-4096.pt", model)
    peer = work / "peer-fcn8s.pth"
    torch.save(peer_state_dict(model.state_dict()), peer)
    del model
    log(f"checkpoint {ckpt} ({ckpt.stat().st_size / 2**20:.0f} MiB), peer weights {peer}")
    rng = np.random.default_rng(0)
    src = work / "images"
    src.mkdir()
    for i in range(n_images):  # smooth colour fields with some noise: a photo's PNG size, not white noise's
        coarse = rng.uniform(0, 255, (8, 8, 3)).astype(np.uint8)
        im = np.asarray(Image.fromarray(coarse).resize((500, 500), Image.BICUBIC), dtype=np.float64)
        im = np.clip(im + rng.normal(0, 6, im.shape), 0, 255).astype(np.uint8)
        Image.fromarray(im).save(src / f"img{i:03d}.png")
    return {"checkpoint": ckpt, "peer": peer, "images": src}


def folder(paths: dict, work: Path, count: int) -> Path:
    d = work / f"in{count}"
    if not d.exists():
        d.mkdir()
        for p in sorted(paths["images"].iterdir())[:count]:
            os.link(p, d / p.name)
    return d


def argv(command: str, paths: dict, images: Path, out: Path) -> list[str]:
    py = sys.executable
    if command == "peer":
        return [py, str(ROOT / "scripts" / "peer_predict.py"), "--weights", str(paths["peer"]), "--out", str(out),
                str(images)]
    if command == "api":
        return [py, str(ROOT / "scripts" / "api_predict.py"), "--checkpoint", str(paths["checkpoint"]), "--out",
                str(out), str(images)]
    extra = ["--engine", "torch"] if command == "predict-torch" else []
    return [py, "-m", "fcnseg", "predict", str(images), "--checkpoint", str(paths["checkpoint"]), "--out", str(out),
            *extra]


def summarise(runs: list[dict]) -> list[dict]:
    rows = []
    for key in sorted({(r["command"], r["count"]) for r in runs}, key=lambda k: (COMMANDS.index(k[0]), k[1])):
        rs = [r for r in runs if (r["command"], r["count"]) == key and r["rc"] == 0]
        if not rs:
            rows.append({"command": key[0], "count": key[1], "error": "every run failed"})
            continue
        walls, rss = [r["wall_s"] for r in rs], [r["peak_rss_mb"] for r in rs]
        rows.append({"command": key[0], "count": key[1], "n": len(rs), "wall_s": {
            "median": statistics.median(walls), "min": min(walls), "max": max(walls)},
            "peak_rss_mb": {"median": statistics.median(rss), "max": max(rss)},
            "max_other_load": max(r["other_load"] for r in rs),
            "reliable": all(r["other_load"] <= UNRELIABLE_LOAD for r in rs)})
    peer = {r["count"]: r for r in rows if r["command"] == "peer" and "error" not in r}
    for r in rows:
        p = peer.get(r["count"])
        if p and "error" not in r:
            r["vs_peer"] = {"wall": r["wall_s"]["median"] / p["wall_s"]["median"],
                            "rss": r["peak_rss_mb"]["median"] / p["peak_rss_mb"]["median"]}
    return rows


def _median_phases(runs: list[dict]) -> dict:
    """Per step of ``scripts/predict_phases.py``, the median seconds over its runs (and the wall time)."""
    ok = [r for r in runs if r.get("phases")]
    if not ok:
        return {}
    keys = [k for k in ok[0]["phases"] if k.endswith("_s")]
    out = {k: statistics.median(r["phases"][k] for r in ok) for k in keys}
    out.update(n=len(ok), wall_s=statistics.median(r["wall_s"] for r in ok), engine=ok[0]["phases"].get("engine"),
               max_other_load=max(r["other_load"] for r in ok))
    return out


def agreement(a: Path, b: Path) -> float | None:
    """Share of pixels whose label is the same in two folders of ``*_label.png``."""
    same = total = 0
    for p in sorted(a.glob("*_label.png")):
        q = b / p.name
        if q.exists():
            x, y = np.asarray(Image.open(p)), np.asarray(Image.open(q))
            same, total = same + int((x == y).sum()), total + x.size
    return same / total if total else None


def main(argv_: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", default="1,10,100", help="images per command (comma-separated)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions for counts below 100 (default 3)")
    ap.add_argument("--reps-100", type=int, default=1, help="repetitions for 100 images or more (default 1)")
    ap.add_argument("--commands", default=",".join(COMMANDS))
    ap.add_argument("--phase-reps", type=int, default=3, help="runs of scripts/predict_phases.py (default 3)")
    ap.add_argument("--work", help="working folder (default: a temporary one, removed after)")
    ap.add_argument("--out", default=str(ROOT / "docs" / "bench" / "commands.json"))
    ap.add_argument("--no-docs", action="store_true", help="do not regenerate docs/PERFORMANCE.md")
    args = ap.parse_args(argv_)
    counts = sorted(int(c) for c in args.counts.split(","))
    commands = [c for c in COMMANDS if c in args.commands.split(",")]

    def log(m: str) -> None:
        print(m, file=sys.stderr, flush=True)

    start, machine = time.perf_counter(), machine_info()
    with tempfile.TemporaryDirectory(prefix="fcnseg-commands-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        paths = setup(work, max(counts), log)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(
            os.pathsep)}
        warm_cache = work / "cache-warm"
        subprocess.run(argv("predict-warm", paths, folder(paths, work, 1), work / "fill"),  # fills the warm cache
                       env={**env, "FCNSEG_CACHE": str(warm_cache)}, check=True, capture_output=True, cwd=ROOT)
        runs, outs = [], {}
        for count in counts:
            images = folder(paths, work, count)
            for rep in range(args.reps if count < 100 else args.reps_100):
                for command in commands:
                    out = work / "out" / f"{command}-{count}-{rep}"
                    cache = warm_cache if command == "predict-warm" else work / "cache-cold" / out.name
                    log_file = work / f"{out.name}.log"
                    row = run_process(argv(command, paths, images, out), env={**env, "FCNSEG_CACHE": str(cache)},
                                      cwd=ROOT, output=log_file)
                    if row["rc"]:
                        row["output_tail"] = log_file.read_text(errors="replace")[-2000:]
                    row.update(command=command, count=count, rep=rep)
                    runs.append(row)
                    outs.setdefault((command, count), out)
                    log(f"{command:14s} {count:4d} images  rep {rep}: {row['wall_s']:7.2f} s  "
                        f"{row['peak_rss_mb']:6.0f} MiB  load {row['load_before'][0]:.2f}  "
                        f"other {row['other_load']:.2f}" + (f"  FAILED rc {row['rc']}" if row["rc"] else ""))
        labels = {f"{c} vs peer, {n} images": agreement(outs[(c, n)], outs[("peer", n)])
                  for (c, n) in outs if c != "peer" and ("peer", n) in outs}
        phases = []
        for rep in range(args.phase_reps):
            log_file = work / f"phases-{rep}.log"
            cmd = [sys.executable, str(ROOT / "scripts" / "predict_phases.py"), "--checkpoint",
                   str(paths["checkpoint"]), "--image", str(sorted(paths["images"].iterdir())[0]),
                   "--out", str(work / "out" / f"phases-{rep}")]
            row = run_process(cmd, env={**env, "FCNSEG_CACHE": str(work / "cache-cold" / f"phases-{rep}")}, cwd=ROOT,
                              output=log_file)
            text = log_file.read_text(errors="replace")
            row["phases"] = json.loads(text.strip().splitlines()[-1]) if row["rc"] == 0 else None
            if row["rc"]:
                row["output_tail"] = text[-2000:]
            phases.append(row)
            log(f"phases rep {rep}: {row['wall_s']:.2f} s")
    machine["loadavg_end"] = list(os.getloadavg())
    command_line = " ".join(["python -m scripts.bench_commands", *(sys.argv[1:] if argv_ is None else argv_)])
    report = {"schema": SCHEMA, "command": command_line.strip(), "machine": machine,
              "versions": {"torch": torch.__version__, "onnxruntime": machine.get("onnxruntime")},
              "model": "fcn8s@vgg16, fc6/fc7 4096 wide, 21 classes, seeded random weights", "size": [500, 500],
              "commands": {c: " ".join(argv(c, {"checkpoint": "CKPT", "peer": "PEER.pth"}, Path("DIR"), Path("OUT"))
                                       ).replace(sys.executable, "python").replace(str(ROOT) + "/", "")
                           for c in commands},
              "counts": counts, "reps": args.reps, "reps_100": args.reps_100, "runs": runs,
              "summary": summarise(runs), "label_agreement": labels,
              "phases": {"runs": phases, "median": _median_phases(phases)},
              "wall_seconds": time.perf_counter() - start}
    write_json(args.out, report, indent=1)
    log(f"wrote {args.out}")
    if not args.no_docs:
        from scripts import write_performance_md  # noqa: PLC0415

        write_performance_md.main([])
    return 1 if any(r["rc"] for r in runs + phases) else 0


if __name__ == "__main__":
    sys.exit(main())
