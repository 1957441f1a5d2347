#!/usr/bin/env python
"""Regenerate docs/PERFORMANCE.md from docs/bench/*.json (bench reports, the training-step report and the
int8 mean-IU report) and the bf16 training study's records (docs/results/camvid-bf16/*.json).

    python -m scripts.write_performance_md [--bench-dir docs/bench] [--out docs/PERFORMANCE.md]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fcnseg.bench.report import engine_table, first_call_line, gpu_lines, machine_line, train_table
from fcnseg.bench.train_bench import SCHEMA as TRAIN_SCHEMA

UNRELIABLE_LOAD = 1.0  # other processes' load (CPUs) above which a measurement is marked unreliable

ROOT = Path(__file__).resolve().parents[1]

INTRO = """\
# Performance

Every number below comes from `docs/bench/*.json`, written by the commands shown, and this page is
regenerated from them by `python -m scripts.write_performance_md`. All engines of a table ran in
**one** benchmark run, each in a fresh process (so peak memory is per engine), on the same input and
the same weights, side by side with the peer implementation **torchfcn 1.9.7** (its `FCN8s`,
holding our weights; its model classes only, run as published: eager fp32 NCHW under `no_grad`).

How to read the tables: latency is the median wall time of one batch-1 forward (preprocessing
and the copy out included) over the repeats, with the interquartile range in brackets and min–max in
parentheses. The peer stays loaded in its own process for the whole run and every engine's timed
runs alternate one by one with the peer's, so *speed-up* is the median of the peer's runs taken
alongside that engine (column *peer alongside*) over the engine's median — both measured under the
same load; the peer's own row pools all its runs. *Peak RSS* is the process's
resident-memory high-water mark (VmHWM, reset after loading) during the batch-1 runs, weights and
libraries included; *GFLOP* is counted by `torch.utils.flop_counter.FlopCounterMode` (a multiply-add
= 2 FLOPs; convolutions only), *GFLOP/s* is that count over the median time, compared with this
machine's measured 4096² sgemm rate; *max abs Δ* is the largest difference of any score from the
peer's scores (or, for `@same`, from our fp32 PyTorch net at that alignment); *labels = peer* is the
share of pixels whose argmax agrees. The machine was shared with other jobs while some of these
runs were taken: the load average at the start and end of each run is printed with it, and the
spread columns show how noisy the run was.
"""

PATHS = """\
## The engines

| engine | what it is | exact? |
|---|---|---|
| `peer` | torchfcn 1.9.7 `FCN8s`, eager PyTorch fp32, NCHW | reference |
| `torch-fp32` | our FCN-8s, eager PyTorch fp32, NCHW, `inference_mode` | yes (same convolutions as the peer; the fixed bilinear upsampling runs channel by channel, so fp32 rounding differs) |
| `torch-fp32-cl` | the same in channels_last | yes |
| `torch-fp32-trim` | `TrimmedFCN`: the image-independent part of the pad-100 border is not recomputed, the big early maps are computed in horizontal strips, fc6/fc7 run as matmuls on their weights (below) | yes (fp32 rounding) |
| `ort-fp32` | ONNX export (dynamic N/H/W) in ONNX Runtime, CPU provider | yes (fp32 rounding) |
| `ort-fp32-trim` | the trimmed net exported for one fixed size, in ONNX Runtime | yes (fp32 rounding) |
| `ort-fp32-trim-lowmem` | the same with `low_memory`: no ONNX Runtime arena, and buffers over 1 MiB get their own mmap (glibc `mallopt`), so each activation's memory returns to the system when it dies | yes (fp32 rounding) |
| `torch-fp32-cl-trim` | the trimmed net in channels_last; what `fcnseg predict`, `eval` and `serve` run by default on CPU for Caffe-aligned VGG nets (`choose_engine`: nothing to export, every size) | yes (fp32 rounding) |
| `torch-bf16-cl-trim` | the trimmed net in channels_last under CPU bf16 autocast (AVX512-BF16) | no: bf16 rounding |
| `ort-int8`, `ort-int8-trim` | static int8 QDQ (per-channel int8 weights, uint8 activations, min/max calibrated on a few images), ONNX Runtime | no: int8 |
| `*@same` | the same weights with `alignment="same"` (pad 1, fc6 pad 3): a different, cheaper function | n/a (own reference) |

**Trimming the border (exact).** With Caffe alignment conv1_1 pads the image by 100 px, so blocks
1–4 of VGG16 run on (H+198)×(W+198) maps. Outside the image's receptive-field cone a feature is
either the per-channel constant a zero input produces or, near the map's outer rim, a value fixed by
the convolutions' own zero padding — neither depends on the image. `fcnseg.models.trimmed.TrimmedFCN`
runs the early stages on the active window only, in "delta" form (`D = F − c`, so that plain zero
padding stands for the background: `conv(F) = conv(D) + (b + W·c)`, `maxpool(F) = maxpool(D) + c`),
and at the deepest tap where the active window and the rim never meet (pool4 for FCN-8s-VGG16) it
rebuilds the full map from the zero-image map (computed once per size residue on a small input,
its constant interior stretched) with the window pasted in. Two memory measures come with it on the
CPU: stages whose maps exceed 12 MiB run in horizontal strips (only a strip of each intermediate map
is alive), and fc6/fc7 run as `W[O, C·k·k] @ im2col(x)` on the weight tensor itself — oneDNN's
convolution otherwise copies the 411 MB fc6 weight into its blocked layout on every call, and that
copy is what sets the peak memory of the plain nets (the peer's included). On a GPU neither applies
(no strips, which would only add kernel launches; fc6/fc7 stay cuDNN convolutions), and the trimmed
forward makes no host-to-device copies, so it can be captured in a CUDA graph. Nothing is cropped that the output
needs: the fc7 map's receptive field covers the whole padded image, so simply computing a smaller
region would *not* be exact — only the image-independent part is skipped. Every output pixel goes
through the same arithmetic, so scores equal the plain forward's to fp32 rounding (checked on
many sizes in `tests/infer/test_runtime.py`).

**Not used.** Winograd: oneDNN (PyTorch) and MLAS (ONNX Runtime) choose their own convolution
algorithms on this CPU, and the 3×3 convs here already run near the sgemm rate; no exact
Winograd path was added. fp16 on CPU: no native fp16 arithmetic on this CPU (it has AVX512-BF16),
so bf16 is the half-precision path. `torch.compile` (engine suffix `-compile`, also with `-trim`,
which then runs without strips) needs a C++ toolchain at run time and compiles once per input size
(checked on a small net in `tests/infer/test_runtime.py`); it is measured in its own run, next to the
default engine, in the section "CPU, torch.compile" below. It is not a default: its first call per
size costs the compilation (the first-call line; that run found torch's on-disk inductor cache warm
from an earlier one, and a cold cache takes longer), and without strips the trimmed net's peak
memory is above the RSS target.
"""

EXPORT = """\
## Export

`fcnseg export --checkpoint C -o model.onnx` (`fcnseg.infer.export.export_onnx`) writes ONNX opset 17
with symbolic batch/height/width: the crop offsets (5, 9, 31 for FCN-8s) are constants and the
slice ends follow the input's symbolic shape; every export is checked against PyTorch with ONNX
Runtime on three sizes (64×80, 97×51, 130×113). The preprocessing (`Preprocessing.to_dict`),
heads and model config travel in the file's `metadata_props` (`fcnseg.*`), which
`fcnseg.infer.engines.OrtEngine` applies. `--int8 static --calibration DIR` also writes an int8
copy. `-o model.pt2` uses `torch.export` with `Dim.AUTO` for N/H/W (torch >= 2.6): with strict
`Dim` ranges torch.export fails, because ceil-mode pooling and the head's crop/`min` produce
guards (e.g. `2*((197+H)//2) < 198+H`) that hold for every size but that its solver cannot prove.
"""


PREDICT_DEFAULT = "torch-fp32-cl-trim"  # what choose_engine gives Caffe-aligned VGG nets on CPU


def _best(rows: list[tuple[str, dict]], key) -> tuple[str, dict] | None:
    rows = [r for r in rows if key(r[1]) is not None]
    return max(rows, key=lambda r: key(r[1])) if rows else None


def targets(report: dict, quant: dict | None) -> str:
    ratios = report.get("ratios_vs_peer", {})
    eng = {e["engine"]: e for e in report.get("engines", []) if "error" not in e}
    if not ratios:
        return "## Targets\n\nNo peer in this run: ratios not available.\n"
    lines = ["## Targets (ratios to the peer, measured in the same run)", "",
             "| target | best engine | measured | reached? |", "|---|---|---|---|"]
    exact = [(n, ratios[n]) for n, e in eng.items() if n in ratios and e.get("exact_path")
             and e.get("alignment") == "caffe" and (e.get("vs_peer") or {}).get("max_abs_diff", 1) <= 1e-3]
    def row(label: str, n: str, r: dict) -> str:
        ok = r["latency_speedup"] >= 1.5 and r["peak_mem_ratio"] <= 0.75
        return (f"| {label} | `{n}` | {r['latency_speedup']:.2f}×, RSS {r['peak_mem_ratio']:.2f}×, "
                f"max abs Δ {eng[n]['vs_peer']['max_abs_diff']:.1e} | {'yes' if ok else 'no'} |")

    target = "exact fp32 (max abs Δ ≤ 1e-3): ≥ 1.5× faster, peak RSS ≤ 0.75×"
    default = dict(exact).get(PREDICT_DEFAULT)
    if default:
        lines.append(row(f"{target} — `fcnseg predict`'s CPU default", PREDICT_DEFAULT, default))
    b = _best(exact, lambda r: r["latency_speedup"])
    if b and b[0] != PREDICT_DEFAULT:
        lines.append(row("(same target, fastest exact engine)" if default else target, *b))
    lean = _best([x for x in exact if x[1]["peak_mem_ratio"] <= 0.75], lambda r: r["latency_speedup"]) \
        or _best(exact, lambda r: -r["peak_mem_ratio"])
    if lean and lean[0] not in (PREDICT_DEFAULT, b[0] if b else None):
        lines.append(row("(same target, fastest within the memory bound, else leanest)", *lean))
    same = [(n, ratios[n]) for n, e in eng.items()
            if n in ratios and e.get("alignment") == "same" and e.get("exact_path")]
    b = _best(same, lambda r: r["latency_speedup"])
    if b:
        lines.append(f"| alignment=\"same\" ≥ 2.8× faster | `{b[0]}` | {b[1]['latency_speedup']:.2f}× | "
                     f"{'yes' if b[1]['latency_speedup'] >= 2.8 else 'no'} |")
    fast = [(n, ratios[n]) for n, e in eng.items() if n in ratios and not e.get("exact_path")
            and e.get("alignment") == "caffe"]
    b = _best(fast, lambda r: r["latency_speedup"])
    if b:
        n, r = b
        cost = None
        if quant:
            qn = n.replace("-cl", "")
            q = quant.get("engines", {}).get(qn)
            cost = q.get("mean_iu_cost_points") if q else None
        cost_txt = f"{cost:+.2f} mean-IU points" if cost is not None else \
            "mean-IU cost pending (needs a trained checkpoint: `scripts/bench_quant_miou.py`)"
        reached = "yes" if (r["latency_speedup"] >= 3 and cost is not None and cost <= 0.5) else \
            ("speed yes, accuracy pending" if r["latency_speedup"] >= 3 and cost is None else "no")
        lines.append(f"| caffe-alignment fast path ≥ 3× faster, ≤ 0.5 mean-IU points | `{n}` | "
                     f"{r['latency_speedup']:.2f}×, {cost_txt} | {reached} |")
    return "\n".join(lines) + "\n"


GPU_PENDING = """\
## GPU

Not measured yet: no GPU has been available to this project's runs. The GPU path is
`fcnseg.infer.engines.TorchEngine` on CUDA (what `fcnseg predict --device cuda` uses): bf16 or
fp16 autocast, channels_last, optional `torch.compile`, and CUDA graphs captured per input shape
for fixed sizes; training uses bf16 autocast on CUDA (`train.amp: auto`). On a machine with a GPU,
`bash scripts/gpu_session.sh` runs the CUDA tests (`tests/test_cuda.py`: CUDA against CPU scores,
CUDA graphs and the trimmed net against eager, bf16 training steps; skipped elsewhere) and then
`python -m scripts.bench_gpu`, which measures FCN-8s-VGG16 at 500×500 (batch-1 latency, batch-16
throughput) next to torchfcn fp32 and torchvision's `fcn_resnet50` in one run, writes
`docs/bench/cuda.json` and regenerates this page with the GPU targets (≥ 1000 img/s at batch 16 in
bf16, ≤ 3 ms at batch 1); last, the session trains `fcnseg reproduce camvid --protocol gpu` (FCN-32s →
16s → 8s, every layer fine-tuned). Every engine there, the peer included, runs with cuDNN autotuning on; the fp32 rows
with TF32 off (so the rows labelled exact are fp32), the flags recorded per engine in the JSON. Inputs
wait in pinned host memory, and each engine is also timed with its input on the GPU already.
"""

GPU_THROUGHPUT, GPU_LATENCY_MS = 1000.0, 3.0  # issue targets: img/s at batch 16 in bf16; ms at batch 1


def gpu_targets(report: dict) -> str:
    """The GPU targets from a CUDA bench report: our best bf16 batch-16 throughput, our best batch-1 latency."""
    ours = [(e["engine"], e) for e in report.get("engines", []) if "error" not in e
            and e.get("spec", {}).get("runtime") == "torch"]
    lines = ["### GPU targets", "", "| target | best engine | measured | reached? |", "|---|---|---|---|"]
    thr = _best([x for x in ours if x[1]["spec"]["dtype"] == "bf16" and "throughput" in x[1]],
                lambda e: e["throughput"]["images_per_s"])
    if thr:
        n, e = thr
        v = e["throughput"]["images_per_s"]
        lines.append(f"| ≥ {GPU_THROUGHPUT:.0f} img/s, batch {e['throughput']['batch']}, bf16 | `{n}` | "
                     f"{v:.0f} img/s | {'yes' if v >= GPU_THROUGHPUT else 'no'} |")
    for key, where in (("latency", "from pinned host memory"), ("latency_on_device", "input on the GPU")):
        lat = _best([x for x in ours if key in x[1]], lambda e, k=key: -e[k]["seconds"]["median"])
        if lat:
            n, e = lat
            ms = 1000 * e[key]["seconds"]["median"]
            lines.append(f"| ≤ {GPU_LATENCY_MS:.0f} ms at batch 1, {where} | `{n}` | {ms:.2f} ms | "
                         f"{'yes' if ms <= GPU_LATENCY_MS else 'no'} |")
    return "\n".join(lines) + "\n"


def quant_section(quant: dict | None) -> str:
    if not quant:
        return ("## Accuracy of the lossy paths\n\nNot measured yet: run\n"
                "`python -m scripts.bench_quant_miou --checkpoint CHECKPOINT --out docs/bench/quant_miou.json`\n"
                "with a trained checkpoint, then this script.\n")
    lines = ["## Accuracy of the lossy paths", "",
             f"Checkpoint `{quant['checkpoint']}`"
             + (f" ({quant['model']}, iteration {quant['checkpoint_iteration']}; commit {quant.get('commit', '?')})"
                if quant.get("model") else "")
             + f", {quant['dataset']} {quant['split']} ({quant['images']} images), "
             f"int8 calibration on {quant['calibration']}. Command: `{quant.get('command', '')}`"
             + (f". Note: {quant['note']}." if quant.get("note") else ""), "",
             "| engine | mean IU | cost (points) | max abs Δ vs fp32 | labels = fp32 |", "|---|---|---|---|---|"]
    for n, r in quant["engines"].items():
        lines.append(f"| `{n}` | {100 * r['mean_iu']:.2f} | {r.get('mean_iu_cost_points', 0):+.2f} | "
                     f"{r['max_abs_diff_vs_fp32']:.1e} | {100 * r['label_agreement_vs_fp32']:.2f}% |")
    return "\n".join(lines) + "\n"


def bench_section(name: str, report: dict) -> str:
    o = report["options"]
    h, w = o["size"]
    title = {"cpu": "CPU", "cuda": "GPU", "cpu-compile": "CPU, torch.compile"}.get(name, name)
    lines = [f"## {title}: {o['model']}@{o['backbone']}, {o['num_classes']} classes, {h}×{w}, "
             f"{o['threads']} threads", "", machine_line(report), "",
             f"Command: `{report.get('command', '')}` ({report.get('wall_seconds', 0) / 60:.1f} min, "
             f"{o['repeats']} timed batch-1 runs and {o.get('throughput_repeats')} batch-{o['throughput_batch']} runs "
             f"per engine after {o['warmup']} warm-up).", "", engine_table(report), ""]
    m = report.get("machine", {})
    loads = [x for x in (m.get("loadavg") or [])[:1] + (m.get("loadavg_end") or [])[:1]]
    if loads and m.get("cores") and max(loads) > m["cores"]:
        lines += [f"**This run shared the machine**: the 1-minute load average reached {max(loads):.1f} on "
                  f"{m['cores']} cores. Every engine ran slower than on an idle machine, and PyTorch eager "
                  "(OpenMP threads) loses more to oversubscription than ONNX Runtime does, so the ratios "
                  "between PyTorch and ONNX Runtime engines here are not those of an idle machine; the "
                  "ratios of each engine to the peer alongside it are taken under the same load. Rerun "
                  "`python -m scripts.bench_cpu` on an idle machine for clean numbers.", ""]
    if report.get("partial"):
        lines += ["**Partial report**: the bench stopped before every engine had run (see its log).", ""]
    first = first_call_line(report)
    if first:
        lines.append(first)
    lines += gpu_lines(report)
    fl = report.get("flops", {})
    if fl:
        lines.append("Counted GFLOP per batch-1 forward: " + ", ".join(
            f"{k} {v / 1e9:.1f}" for k, v in fl.items() if v) + ".")
    tr = {e["engine"]: e["train_step"]["seconds"]["median"] for e in report["engines"] if e.get("train_step")}
    if tr:
        lines.append("One training step (batch 1, forward + backward + SGD momentum): " + ", ".join(
            f"`{k}` {v:.2f} s" for k, v in tr.items()) + ".")
    ev = report.get("eval_split")
    if ev and "error" in ev:
        lines.append(f"`fcnseg eval` time split: failed ({ev['error']}).")
    elif ev:
        fr = ev["fractions"]
        lines.append(f"`fcnseg eval` time split (`evaluate()` on the {ev['dataset']}, {ev['images']} images, "
                     f"plain PyTorch engine): " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in fr.items())
                     + " — the model dominates.")
    return "\n".join(lines) + "\n"


TRAIN_TARGET = 1.3  # issue 16: our full-net fp32 training step at least 1.3x the peer's speed
BF16_STUDY = ROOT / "docs" / "results" / "camvid-bf16"
BF16_RUNS = ("fcn32s-fp32", "fcn32s-bf16")
TRAIN_COMMAND = "python -m scripts.bench_cpu --train-only"
BF16_COMMAND = "fcnseg reproduce camvid --protocol bf16 --out docs/results/camvid-bf16"

TRAIN_ROWS = """\
Rows: `peer` steps as torchfcn's users run it (eager fp32 NCHW, `torch.optim.SGD`'s per-tensor loop over all
its parameters). Ours step as `fcnseg train` does with `train.fused_optimizer=true` (the reference's
parameter groups, SGD momentum 0.99): `torch-fp32` is the plain net; `-trim` is `train.trim_border=true`
(the image-independent part of the pad-100 border is not recomputed, and its gradient flows through
the zero-image skeleton: loss and every gradient equal the plain net's to fp32 rounding,
`tests/models/test_trimmed_training.py`); `-bf16` is `train.amp=bf16` (CPU autocast, fp32 master
weights; only where the CPU has native bf16, AVX512-BF16/AMX); `:pool4` / `:pool3` are partial
fine-tuning, `train.freeze_backbone=pool4|pool3` with `train.cache_features=true`: the step resumes from
the frozen prefix's cached maps (computed once, not timed) and trains the stages after it. Phases:
*data* (preprocessing and layout of the batch), *forward* (with the loss), *backward*, *optimizer*
(`step` and `zero_grad`); the speed-up divides the median of the peer's steps taken alongside that row
(they alternate one by one) by the row's median.
"""


def _bf16_study(folder: Path) -> dict[str, dict] | None:
    runs = {n: json.loads((folder / f"{n}.json").read_text()) for n in BF16_RUNS if (folder / f"{n}.json").is_file()}
    return runs if len(runs) == len(BF16_RUNS) else None


def bf16_line(runs: dict[str, dict] | None) -> str:
    """The mean-IU effect of bf16 training, from the study's two records."""
    if runs is None:
        return (f"bf16's effect on mean IU: not measured yet: `{BF16_COMMAND}` (two short CamVid runs, float32 "
                "and bf16, the same seed; about 7 minutes on 2 cores) writes the records this page reads.")
    a, b = (runs[n] for n in BF16_RUNS)
    fell_back = b.get("precision") != "bf16"
    return (f"bf16's effect on mean IU (`{BF16_COMMAND}`, {a['run']} vs {b['run']}: the same short CamVid run "
            f"from the same seed, {b['iterations']} steps): float32 {100 * a['metrics']['mean_iu']:.1f}%, "
            f"bf16 {100 * b['metrics']['mean_iu']:.1f}% "
            f"({100 * (b['metrics']['mean_iu'] - a['metrics']['mean_iu']):+.1f} points; training "
            f"{a['wall_time_s'] / 60:.1f} vs {b['wall_time_s'] / 60:.1f} min, the first including the "
            f"feature cache; commit {b.get('commit', '?')})"
            + (" — **the bf16 run trained in float32 (no native bf16 on its CPU)**" if fell_back else "") + ".")


def train_section(report: dict | None, bf16: dict[str, dict] | None) -> str:
    """The training-step report (``python -m scripts.bench_cpu --train-only``) and the bf16 study's result."""
    if report is None:
        return "\n".join(["## CPU training step", "",
                          f"Not measured yet: `{TRAIN_COMMAND}` (about 5 minutes on an idle 2-core machine) writes "
                          "`docs/bench/train-step.json` and regenerates this page.", "", TRAIN_ROWS,
                          bf16_line(bf16), ""])
    o = report["options"]
    h, w = o["size"]
    lines = [f"## CPU training step: {o['model']}@{o['backbone']}, {o['num_classes']} classes, {h}×{w}, "
             f"batch {o['batch']}, {o['threads']} threads", "", machine_line(report), "",
             f"Command: `{report.get('command', '')}` ({report.get('wall_seconds', 0) / 60:.1f} min, "
             f"{o['repeats']} timed steps per row after {o['warmup']} warm-up, each alternating with one of the "
             "peer's).", "", train_table(report), ""]
    ratios = report.get("ratios_vs_peer", {})
    whole = [(r["row"], ratios[r["row"]]["speedup"]) for r in report.get("rows", [])
             if r.get("row") in ratios and r.get("exact") and not (r.get("spec") or {}).get("frozen")
             and (r.get("spec") or {}).get("alignment") == "caffe"]
    if whole:
        name, x = max(whole, key=lambda t: t[1])
        lines += ["| target | best row | measured | reached? |", "|---|---|---|---|",
                  f"| full net fp32 (the same net and function) ≥ {TRAIN_TARGET}× the peer's training step | "
                  f"`{name}` | {x:.2f}× | {'yes' if x >= TRAIN_TARGET else 'no'} |", ""]
    m = report.get("machine", {})
    loads = (m.get("loadavg") or [])[:1] + (m.get("loadavg_end") or [])[:1]
    if loads and m.get("cores") and max(loads) > m["cores"]:
        lines += [f"**This run shared the machine**: the 1-minute load average reached {max(loads):.1f} on "
                  f"{m['cores']} cores; the ratios compare steps taken under the same load, the seconds are "
                  f"inflated. Rerun `{TRAIN_COMMAND}` on an idle machine for clean numbers.", ""]
    if report.get("partial"):
        lines += ["**Partial report**: the bench stopped before every row had run (see its log).", ""]
    return "\n".join(lines + [TRAIN_ROWS, bf16_line(bf16), ""])


def _median_range(d: dict, fmt: str = ".2f") -> str:
    return f"{d['median']:{fmt}} ({d['min']:{fmt}}–{d['max']:{fmt}})"


COMMAND_NAMES = {"peer": "peer script (torchfcn)", "predict-cold": "`fcnseg predict`, cold engine cache",
                 "predict-warm": "`fcnseg predict`, warm engine cache", "predict-torch": "`fcnseg predict --engine torch`",
                 "api": 'API: `choose_engine(model, "cpu")`'}


def commands_section(report: dict | None) -> str:
    """Whole commands, each a fresh process (``scripts/bench_commands.py``)."""
    title = "## Whole commands, as a user runs them: 1, 10 and 100 images"
    if not report:
        return (f"{title}\n\nNot measured yet: run `python -m scripts.bench_commands` (about 15 minutes on 2 idle "
                "cores), which writes `docs/bench/commands.json` and regenerates this page.\n")
    lines = [title, "", f"{report['model']}, {report['size'][0]}×{report['size'][1]} images; {machine_line(report)}.",
             "", f"Command: `{report['command']}` ({report['wall_seconds'] / 60:.1f} min). Each row's runs are fresh "
             "processes; wall time from launch to exit, peak RSS the whole process's high-water mark. *Cold*: "
             "an empty engine cache (the OS page cache is not dropped: checkpoint and images are read from "
             "memory); *warm*: the cache a previous run filled. *Other load*: CPUs that other processes kept "
             f"busy during the runs (rows above {UNRELIABLE_LOAD:.1f} are marked unreliable).", "",
             "| command | images | runs | wall s: median (min–max) | wall × peer | peak RSS MiB | RSS × peer | "
             "other load | reliable? |", "|---|---|---|---|---|---|---|---|---|"]
    for r in report["summary"]:
        name = COMMAND_NAMES.get(r["command"], r["command"])
        if "error" in r:
            lines.append(f"| {name} | {r['count']} | 0 | {r['error']} | – | – | – | – | – |")
            continue
        vs = r.get("vs_peer") or {}
        wall_x = f"{vs['wall']:.2f}×" if vs else "–"
        rss_x = f"{vs['rss']:.2f}×" if vs else "–"
        lines.append(f"| {name} | {r['count']} | {r['n']} | {_median_range(r['wall_s'])} | {wall_x} | "
                     f"{r['peak_rss_mb']['median']:.0f} | {rss_x} | {r['max_other_load']:.2f} | "
                     f"{'yes' if r['reliable'] else '**no**'} |")
    lines += ["", "The commands (`DIR` a folder of the images, `CKPT` the checkpoint): " + "; ".join(
        f"{COMMAND_NAMES.get(k, k)}: `{v}`" for k, v in report["commands"].items()) + "."]
    lines += command_targets(report["summary"])
    ph = (report.get("phases") or {}).get("median")
    if ph:
        steps = [("torch_import_s", "import torch"), ("fcnseg_import_s", "import fcnseg (the predict command)"),
                 ("checkpoint_s", "checkpoint read, checked and built"), ("checksum_s", "of which the SHA-256"),
                 ("engine_s", "engine"), ("read_s", "read the image"),
                 ("first_forward_s", "first forward (plan and zero-image skeleton for the size included)"),
                 ("forward_s", "the same forward again"), ("write_s", "label and overlay PNGs written")]
        lines += ["", f"Where one image's seconds go (`scripts/predict_phases.py`, engine `{ph.get('engine')}`, "
                      f"median of {ph['n']} fresh processes, {ph['wall_s']:.2f} s each from launch to exit, other "
                      f"load up to {ph['max_other_load']:.2f}): " + "; ".join(
                          f"{label} {ph[k]:.2f} s" for k, label in steps if k in ph) + "."]
    agree = {k: v for k, v in report.get("label_agreement", {}).items() if v is not None}
    if agree:
        lines += ["", "Labels equal to the peer's: " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in agree.items()) + "."]
    return "\n".join(lines) + "\n"


def command_targets(summary: list[dict]) -> list[str]:
    """Issue 18's targets for whole commands, read off the summary rows (medians; one image, then 10 and 100)."""
    row = {(r["command"], r["count"]): r for r in summary if "error" not in r}

    def ratio(a: str, b: str, n: int, key: str = "wall_s") -> float | None:
        x, y = row.get((a, n)), row.get((b, n))
        return x[key]["median"] / y[key]["median"] if x and y else None

    checks = []
    for cmd, label in (("predict-cold", "`fcnseg predict` (cold)"), ("predict-warm", "`fcnseg predict` (warm)"),
                       ("api", "the API")):
        for key, what in (("wall_s", "wall time"), ("peak_rss_mb", "peak RSS")):
            checks.append((f"one image, {label}: {what} ≤ the peer's", ratio(cmd, "peer", 1, key), 1.0))
    for n in (1, 10, 100):
        want = "never slower than" if n == 1 else "faster than"
        checks.append((f"{n} image{'s' * (n > 1)}: `fcnseg predict` (cold) {want} `--engine torch`",
                       ratio("predict-cold", "predict-torch", n), 1.0 if n == 1 else 1.0 - 1e-9))
    lines = ["", "| target | measured (ratio of medians) | reached? |", "|---|---|---|"]
    for label, r, limit in checks:
        if r is not None:
            lines.append(f"| {label} | {r:.2f}× | {'yes' if r <= limit else 'no'} |")
    return lines if len(lines) > 3 else []


def eval_section(report: dict | None) -> str:
    """``fcnseg eval --engine torch`` against ``--engine auto`` (``scripts/bench_eval.py``)."""
    title = "## `fcnseg eval` at the fast engine"
    if not report:
        return (f"{title}\n\nNot measured yet: run `python -m scripts.bench_eval` (CamVid val, 101 images at "
                "480×360), which writes `docs/bench/eval.json` and regenerates this page.\n")
    lines = [title, "", f"{report['checkpoint']}; {report['dataset']}, {report['images']} images at full "
             f"resolution; {machine_line(report)}.", "",
             f"Command: `{report['command']}` ({report['wall_seconds'] / 60:.1f} min); each run a fresh "
             "`fcnseg eval --engine E` process.", "",
             "| engine | runs | whole command s: median (range) | model s (`time:` line) | peak RSS MiB | other load |",
             "|---|---|---|---|---|---|"]
    for e, r in report["summary"].items():
        lo, hi = r["wall_range_s"]
        lines.append(f"| `--engine {e}` | {r['n']} | {r['wall_s']:.1f} ({lo:.1f}–{hi:.1f}) | {r['model_s']:.1f} | "
                     f"{r['peak_rss_mb']:.0f} | {r['max_other_load']:.2f} |")
    if report.get("speedup_wall"):
        ok = report["speedup_wall"] >= 1.5 and report["metrics_identical"]
        lines += ["", "| target | measured | reached? |", "|---|---|---|",
                  f"| `eval --engine auto` ≥ 1.5× faster than `--engine torch` (whole command), same metrics | "
                  f"{report['speedup_wall']:.2f}×, metrics {'identical' if report['metrics_identical'] else 'differ'}"
                  f" | {'yes' if ok else 'no'} |"]
        lines += ["", f"`auto` over `torch`: {report['speedup_wall']:.2f}× the whole command, "
                      f"{report['speedup_model']:.2f}× the model time. The two `metrics.json` are "
                      f"{'identical' if report['metrics_identical'] else '**not** identical'}"
                      + (f" ({report['pixels_moved_in_confusion']} pixels moved in the confusion matrix)"
                         if not report["metrics_identical"] else "") + "."]
    return "\n".join(lines) + "\n"


def payback_section(report: dict | None) -> str:
    """When a dynamic-size ONNX export pays for itself (``scripts/bench_payback.py``)."""
    title = "## When an ONNX export pays (nets the trimmed engine cannot run)"
    if not report:
        return f"{title}\n\nNot measured yet: run `python -m scripts.bench_payback`.\n"
    h, w = report["size"]
    lines = [title, "", "`choose_engine` runs Caffe-aligned VGG nets border-trimmed in PyTorch (nothing to export). "
             "Any other net runs in ONNX Runtime on one dynamic-size export when the export is cached already or "
             f"the command scores at least **{report['threshold_images']}** images "
             "(`fcnseg.infer.engines.ORT_PAYBACK_IMAGES`): the largest break-even below, the cold export "
             f"over the seconds ONNX Runtime saves per {h}×{w} image. {machine_line(report)}.", "",
             f"Command: `{report['command']}` ({report['wall_seconds'] / 60:.1f} min, {report['repeats']} timed "
             "batch-1 runs per engine after a warm-up, alternating).", "",
             "| net | cold export s | PyTorch fp32 s/image | ONNX Runtime s/image | saved s/image | break-even images |",
             "|---|---|---|---|---|---|"]
    for r in report["nets"]:
        lines.append(f"| `{r['net']}` | {r['export_s']:.1f} | {_median_range(r['torch_s'], '.3f')} | "
                     f"{_median_range(r['ort_s'], '.3f')} | {r['saving_s']:.3f} | "
                     f"{r['payback_images'] if r['payback_images'] is not None else 'never (not faster)'} |")
    warning = _shared_warning(report, "python -m scripts.bench_payback")
    if warning:
        warning[-1] += (" The test `test_the_ort_payback_threshold_is_the_measured_one` then asks for the new "
                        "threshold in `fcnseg/infer/engines.py`.")
    return "\n".join(lines + warning) + "\n"


def trim_layout_section(report: dict | None) -> str:
    """NCHW against channels_last for the trimmed net, by net and size (``scripts/bench_trim_layout.py``)."""
    title = "## The trimmed net's layout: channels_last against NCHW, by size"
    if not report:
        return f"{title}\n\nNot measured yet: run `python -m scripts.bench_trim_layout`.\n"
    lines = [title, "", f"{machine_line(report)}.", "",
             f"Command: `{report['command']}` ({report['wall_seconds'] / 60:.1f} min; {report['repeats']} timed "
             "batch-1 calls per engine and size, the two alternating; VGG16, fc6/fc7 4096 wide, 21 classes). "
             "*First call*: the first image of that size, its plan and zero-image skeleton included.", "",
             "| net | size | `torch-fp32-trim` s: median (min–max) | `torch-fp32-cl-trim` s | channels_last speed-up: "
             "medians (mins) | first call s (NCHW / cl) | max abs Δ vs the plain net (NCHW / cl) |",
             "|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        a, b = r["seconds"]["torch-fp32-trim"], r["seconds"]["torch-fp32-cl-trim"]
        d, f = r["max_abs_diff_vs_plain"], r["first_s"]
        lines.append(f"| {r['net']} | {r['size'][0]}×{r['size'][1]} | {_median_range(a, '.3f')} | "
                     f"{_median_range(b, '.3f')} | {r['cl_speedup']:.2f}× ({a['min'] / b['min']:.2f}×) | "
                     f"{f['torch-fp32-trim']:.2f} / "
                     f"{f['torch-fp32-cl-trim']:.2f} | {d['torch-fp32-trim']:.1e} / {d['torch-fp32-cl-trim']:.1e} |")
    slower = report.get("cl_slower") or []
    lines += ["", f"channels_last was slower (by the medians) at: {', '.join(slower)}." if slower else
              "channels_last was the faster layout (by the medians) at every net and size measured."]
    return "\n".join(lines + _shared_warning(report, "python -m scripts.bench_trim_layout")) + "\n"


def _shared_warning(report: dict, command: str) -> list[str]:
    """A warning when the 1-minute load average at the start or end of a run was above 1.0."""
    m = report.get("machine", {})
    loads = (m.get("loadavg") or [])[:1] + (m.get("loadavg_end") or [])[:1]
    if not loads or max(loads) <= UNRELIABLE_LOAD:
        return []
    return ["", f"**This run shared the machine** (1-minute load {max(loads):.1f} on {m.get('cores')} cores, other "
                f"jobs' bursts included): its numbers are not an idle machine's; rerun `{command}` on one."]


def redesign_section(folder: Path) -> str:
    """The same engines measured before and after the redesign of issue 15, on one machine, one after the
    other (``before-*.json`` at the commit named, ``after.json`` at the commit recorded)."""
    before = sorted(folder.glob("before-*.json"))
    if not before or not (folder / "after.json").is_file():
        return ""
    runs = [("before", json.loads(before[0].read_text())), ("after", json.loads((folder / "after.json").read_text()))]
    lines = ["## Before and after the layout redesign", "",
             "The same engines on the same machine, the two runs back to back, to show what the redesign "
             "(issue 15: one model contract, the code laid out by lifecycle) did to speed and memory.", ""]
    for tag, r in runs:
        lines.append(f"- {tag}: `{r['command']}`; {machine_line(r)}")
    lines += ["", "| engine | " + " | ".join(f"{t}: median s (× peer alongside), peak RSS MiB" for t, _ in runs) + " |",
              "|---|---|---|"]
    by = [{e["engine"]: e for e in r["engines"]} for _, r in runs]
    for name in by[0]:
        cells = []
        for engines in by:
            e = engines.get(name, {})
            lat = e.get("latency", {}).get("seconds", {}).get("median")
            pp = e.get("peer_paired", {}).get("seconds", {}).get("median")
            ratio = f" (×{pp / lat:.2f})" if lat and pp else ""
            cells.append(f"{lat:.3f}{ratio}, {e.get('peak_mem_b1_mb', 0):.0f}" if lat else "–")
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bench-dir", default=str(ROOT / "docs" / "bench"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "PERFORMANCE.md"))
    args = ap.parse_args(argv)
    bench_dir = Path(args.bench_dir)
    reports = {p.stem: json.loads(p.read_text()) for p in sorted(bench_dir.glob("*.json"))}
    quant = reports.pop("quant_miou", None)
    commands, evals, payback, layout = (reports.pop(k, None) for k in ("commands", "eval", "payback", "trim_layout"))
    train = next((v for v in reports.values() if v.get("schema") == TRAIN_SCHEMA), None)
    benches = {k: v for k, v in reports.items() if v.get("schema") == "fcnseg-bench-v1"}
    if not benches:
        print(f"no bench reports in {bench_dir}", file=sys.stderr)
        return 2
    order = sorted(benches, key=lambda k: (k != "cpu", k))
    parts = [INTRO, targets(benches[order[0]], quant), commands_section(commands), eval_section(evals),
             trim_layout_section(layout), payback_section(payback)]
    for k in order:
        parts.append(bench_section(k, benches[k]))
        if benches[k].get("device", "cpu").startswith("cuda"):
            parts.append(gpu_targets(benches[k]))
        if k == order[0]:
            parts.append(train_section(train, _bf16_study(BF16_STUDY)))
    if not any(b.get("device", "cpu").startswith("cuda") for b in benches.values()):
        parts.append(GPU_PENDING)
    parts += [quant_section(quant), redesign_section(bench_dir / "redesign"), PATHS, EXPORT]
    Path(args.out).write_text("\n".join(parts))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
