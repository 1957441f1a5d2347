"""``run_train_bench``: the training step of each row in its own process, side by side with the peer's."""
from __future__ import annotations

import copy
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from fcnseg.atomic import write_text
from fcnseg.bench.core import _bench_models, _build, _finish, _Runs, _start
from fcnseg.bench.measure import machine_info, sgemm_gflops
from fcnseg.bench.report import train_markdown
from fcnseg.bench.train_step import DEFAULT_TRAIN_ROWS, TrainRow
from fcnseg.errors import ConfigError
from fcnseg.provenance import native_bf16

__all__ = ["run_train_bench", "SCHEMA"]

SCHEMA = "fcnseg-train-step-v1"


def run_train_bench(*, model: str = "fcn8s", backbone: str = "vgg16", num_classes: int = 21,
                    size: tuple[int, int] = (500, 500), batch: int = 1, device: str = "cpu",
                    rows: Sequence[str] | None = None, warmup: int = 1, repeats: int = 3, peer: bool = True,
                    threads: int | None = None, checkpoint: str | None = None, width: float = 1.0,
                    fc_channels: int | None = None, sgemm_n: int = 4096, seed: int = 0, timeout: float = 300.0,
                    worker_timeout: float = 480.0, time_budget: float | None = None, command: str | None = None,
                    out_json: str | os.PathLike | None = None, out_md: str | os.PathLike | None = None,
                    progress: bool = True) -> dict:
    """Time ``repeats`` training steps (after ``warmup``) of each row (default :data:`DEFAULT_TRAIN_ROWS`;
    names as :class:`fcnseg.bench.train_step.TrainRow` reads them) in a fresh process, on the same
    images, labels and weights, each step alternating with one of the peer's (torchfcn's FCN8s, kept
    loaded), so every speed-up compares steps taken under the same load. Per row: the step's seconds
    (median, IQR) and its phases (data, forward, backward, optimizer), peak memory, and the peer's steps
    taken alongside. bf16 rows run where the device computes bf16 natively (on the CPU AVX512-BF16/AMX);
    elsewhere they are error rows. ``out_json`` is rewritten after every row.
    """
    t_start, deadline, log = _start(out_json, out_md, device, time_budget, worker_timeout, progress)
    peer_fits = model == "fcn8s" and backbone == "vgg16" and width == 1.0 and fc_channels in (None, 4096)
    chosen = _rows(rows, peer, peer_fits, log)
    threads = int(threads or torch.get_num_threads())
    torch.set_num_threads(threads)
    size = (int(size[0]), int(size[1]))
    bf16_ok = device != "cpu" or native_bf16()
    options = {"model": model, "backbone": backbone, "num_classes": num_classes, "size": list(size), "batch": batch,
               "warmup": warmup, "repeats": repeats, "threads": threads, "checkpoint": checkpoint, "width": width,
               "fc_channels": fc_channels, "seed": seed, "rows": [r.name for r in chosen]}
    report: dict[str, Any] = {"schema": SCHEMA, "created": time.strftime("%Y-%m-%d %H:%M:%S %z"),
                              "command": command or " ".join(["python", *sys.argv]),
                              "machine": {**machine_info(), "native_bf16": native_bf16()}, "device": device,
                              "options": options}
    if sgemm_n:
        log(f"sgemm {sgemm_n}x{sgemm_n}")
        report["sgemm"] = sgemm_gflops(sgemm_n, device=device)
    with tempfile.TemporaryDirectory(prefix="fcnseg-train-bench-") as tmp_s:
        tmp = Path(tmp_s)
        alignments = {r.engine.alignment for r in chosen}
        models, cfgs, weights = _bench_models(alignments, tmp, checkpoint, model, backbone, num_classes, width,
                                              fc_channels, seed)
        _check_stages(chosen, cfgs)
        in_ch = next(iter(models.values())).in_channels
        runnable = [r for r in chosen if bf16_ok or r.engine.dtype != "bf16"]

        def make_spec(r: TrainRow) -> dict:
            al = r.engine.alignment
            tag = r.name.replace("@", "_").replace(":", "_")
            return {"engine": r.engine.name, "row": r.name, "train_only": True, "model_config": cfgs[al],
                    "weights": str(weights[al]), "preprocessing": models[al].preprocessing.to_dict(),
                    "device": device, "threads": threads, "size": list(size), "batch": batch, "warmup": warmup,
                    "train_repeats": repeats, "seed": seed, "in_channels": in_ch,
                    "result_out": str(tmp / f"result-{tag}.json")}

        def done(results: list[dict]) -> None:
            if out_json:
                write_text(out_json, json.dumps({**report, "rows": _with_skipped(copy.deepcopy(results), chosen,
                                                                                 runnable), "partial": True},
                                                indent=1) + "\n")

        runs = _Runs(make_spec, tmp, timeout, worker_timeout, deadline, warmup, repeats, 0, 0, {}, log,
                     False, done, train=True, annotate=lambda r, row: _annotate(r, row, log))
        report["rows"] = _with_skipped(runs.all(runnable), chosen, runnable)
    report["ratios_vs_peer"] = _ratios(report["rows"])
    return _finish(report, t_start, out_json, out_md, train_markdown)


def _rows(rows: Sequence[str] | None, peer: bool, peer_fits: bool, log) -> list[TrainRow]:
    chosen = [TrainRow.parse(n) for n in (rows or DEFAULT_TRAIN_ROWS)]
    if not peer:
        chosen = [r for r in chosen if r.engine.runtime != "peer"]
    if any(r.engine.runtime == "peer" for r in chosen) and not peer_fits:
        log("peer skipped: torchfcn offers the full-width FCN8s-VGG16 only")
        chosen = [r for r in chosen if r.engine.runtime != "peer"]
    return chosen


def _check_stages(rows: list[TrainRow], cfgs: dict) -> None:
    """Every frozen stage named is one of the net's backbone stages (before any worker starts)."""
    for r in rows:
        if r.frozen:
            stages = list(_build(cfgs[r.engine.alignment], "meta").backbone.stages.keys())
            if r.frozen not in stages:
                raise ConfigError(f"--train-rows: {r.frozen!r} is not a backbone stage of the net "
                                  f"(stages: {', '.join(stages)}): {r.name!r}")


def _with_skipped(results: list[dict], chosen: list[TrainRow], runnable: list[TrainRow]) -> list[dict]:
    """The results in the rows' order, with an error row for each bf16 row not run."""
    by_name = {r.get("row", r["engine"]): r for r in results}
    out = []
    for row in chosen:
        if row in runnable:
            if row.name in by_name:
                out.append(by_name[row.name])
        else:
            out.append({"engine": row.engine.name, "row": row.name, "exact": False,
                        "error": "not run: no native bf16 on this CPU (AVX512-BF16/AMX); "
                                 "train.amp=bf16 trains in float32 there"})
    return out


def _annotate(r: dict, row: TrainRow, log) -> dict:
    r["row"], r["exact"] = row.name, row.exact
    r["spec"] = {"runtime": row.engine.runtime, "dtype": row.engine.dtype, "channels_last": row.engine.channels_last,
                 "trim": row.engine.trim, "frozen": row.frozen, "alignment": row.engine.alignment}
    if "error" in r:
        log(f"  {row.name} failed: {r['error']}")
    elif "train_step" in r:
        med = r["train_step"]["seconds"]["median"]
        extra = f" (peer alongside: {r['peer_paired']['seconds']['median']:.2f} s)" if "peer_paired" in r else ""
        log(f"  {row.name}: {med:.2f} s median{extra}")
    return r


def _ratios(rows: list[dict]) -> dict:
    """Per row: the peer's steps taken alongside (their median) over the row's median step."""
    out = {}
    for r in rows:
        if r.get("row") == "peer" or "error" in r or "train_step" not in r or "peer_paired" not in r:
            continue
        ref = r["peer_paired"]["seconds"]["median"]
        out[r["row"]] = {"speedup": ref / r["train_step"]["seconds"]["median"], "peer_median_alongside": ref}
    return out
