"""``fcnseg bench``: latency, throughput, memory and FLOPs of every engine, side by side with torchfcn
(the measuring is :func:`fcnseg.bench.run_bench`); ``bench_script`` is the body of ``scripts/bench_*.py``."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from fcnseg.bench.core import DEFAULT_ENGINES, run_bench
from fcnseg.bench.report import bench_markdown, train_markdown
from fcnseg.bench.train_bench import run_train_bench
from fcnseg.bench.train_step import DEFAULT_TRAIN_ROWS
from fcnseg.cli.common import add_size, non_negative_int, positive_float, positive_int
from fcnseg.config import ALIGNMENTS
from fcnseg.errors import FcnsegError
from fcnseg.infer.spec import PRECISIONS
from fcnseg.models.backbones import BACKBONES
from fcnseg.models.registry import MODELS

__all__ = ["add_arguments", "run", "bench_script"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``fcnseg bench``."""
    p.add_argument("--model", default="fcn8s", choices=sorted(MODELS),
                   help="model name (default fcn8s; the peer needs fcn8s)")
    p.add_argument("--backbone", default="vgg16", choices=sorted(BACKBONES))
    p.add_argument("--num-classes", type=positive_int, default=21)
    p.add_argument("--checkpoint", help="measure a trained checkpoint's weights instead of seeded random ones")
    add_size(p, (500, 500), "input size (default 500 500, the paper's PASCAL scale)")
    p.add_argument("--batch", type=positive_int, default=1, help="latency batch (default 1)")
    p.add_argument("--throughput-batch", type=non_negative_int, default=4, help="throughput batch; 0 skips (default 4)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--engines", help="comma-separated engine names (default for cpu: "
                   + ",".join(DEFAULT_ENGINES["cpu"]) + ")")
    p.add_argument("--dtype", choices=PRECISIONS,
                   help="only the default engines of this precision (and the peer)")
    p.add_argument("--alignment", choices=ALIGNMENTS, default="caffe",
                   help="alignment for engine names without @caffe/@same (default caffe)")
    p.add_argument("--warmup", type=non_negative_int, default=1)
    p.add_argument("--repeats", type=positive_int, default=5, help="timed batch-1 runs per engine (default 5)")
    p.add_argument("--throughput-repeats", type=positive_int, default=2)
    p.add_argument("--threads", type=positive_int, help="intra-op threads for every engine (default: torch's)")
    p.add_argument("--no-peer", action="store_true", help="skip torchfcn")
    p.add_argument("--no-train-step", action="store_true", help="skip the training-step timing")
    p.add_argument("--train-only", action="store_true",
                   help="only the training-step rows (no inference engines), each step paired with the peer's")
    p.add_argument("--train-rows", help="comma-separated training-step rows for --train-only (default: "
                   + ",".join(DEFAULT_TRAIN_ROWS) + "; ENGINE[:STAGE], STAGE the deepest frozen, cached one)")
    p.add_argument("--train-repeats", type=positive_int, default=3,
                   help="timed training steps per row with --train-only (default 3; --warmup untimed ones first)")
    p.add_argument("--eval-split", action="store_true",
                   help="also time evaluate() on the bundled CamVid sample (data / model / metrics split)")
    p.add_argument("--sgemm-n", type=non_negative_int, default=4096,
                   help="matmul size for the machine's sgemm rate; 0 skips")
    p.add_argument("--width", type=positive_float, default=1.0, help="channel width multiplier (tests: 1/16)")
    p.add_argument("--fc-channels", type=positive_int, help="fc6/fc7 channels (default the backbone's)")
    p.add_argument("--worker-timeout", type=positive_float, default=480.0,
                   help="seconds an engine's worker may live, its set-up included (default 480)")
    p.add_argument("--time-budget", type=positive_float,
                   help="seconds for the whole bench: engines not begun by then get an error row (default: none)")
    p.add_argument("--out", help="JSON report path (rewritten after every engine; a .md beside it gets the tables)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")


def run(args: argparse.Namespace) -> int:
    """Run ``fcnseg bench``: print the markdown table, write JSON/markdown when ``--out`` is given."""
    out_md = None
    if args.out and not getattr(args, "no_md", False):
        out_md = args.out[:-5] + ".md" if args.out.endswith(".json") else args.out + ".md"
    if args.train_only:
        report = run_train_bench(model=args.model, backbone=args.backbone, num_classes=args.num_classes,
                                 checkpoint=args.checkpoint, size=tuple(args.size), batch=args.batch,
                                 device=args.device,
                                 rows=[r for r in args.train_rows.split(",") if r.strip()] if args.train_rows else None,
                                 warmup=args.warmup, repeats=args.train_repeats, peer=not args.no_peer,
                                 threads=args.threads, width=args.width, fc_channels=args.fc_channels,
                                 sgemm_n=args.sgemm_n, out_json=args.out, out_md=out_md,
                                 timeout=min(300.0, args.worker_timeout), worker_timeout=args.worker_timeout,
                                 time_budget=args.time_budget, progress=not args.quiet,
                                 command=getattr(args, "command_line", None))
        print(train_markdown(report))
        if not args.out:
            print(json.dumps(report.get("ratios_vs_peer", {}), indent=1))
        return 0
    if args.train_rows:
        raise FcnsegError("--train-rows: only with --train-only")
    report = run_bench(model=args.model, backbone=args.backbone, num_classes=args.num_classes,
                       checkpoint=args.checkpoint, size=tuple(args.size), batch=args.batch,
                       throughput_batch=args.throughput_batch, device=args.device, dtype=args.dtype,
                       engines=[e for e in args.engines.split(",") if e.strip()] if args.engines else None,
                       alignment=args.alignment, warmup=args.warmup, repeats=args.repeats,
                       throughput_repeats=args.throughput_repeats, threads=args.threads, peer=not args.no_peer,
                       train_step=not args.no_train_step, eval_split=args.eval_split, sgemm_n=args.sgemm_n,
                       width=args.width, fc_channels=args.fc_channels, out_json=args.out, out_md=out_md,
                       timeout=min(300.0, args.worker_timeout), worker_timeout=args.worker_timeout,
                       time_budget=args.time_budget,
                       progress=not args.quiet, command=getattr(args, "command_line", None))
    print(bench_markdown(report))
    if not args.out:
        print(json.dumps(report.get("ratios_vs_peer", {}), indent=1))
    return 0


def bench_script(script: str, doc: str, defaults: dict, argv: list[str] | None = None) -> int:
    """The body of ``scripts/bench_*.py``: ``fcnseg bench`` with the script's defaults, recorded under
    the script's own command line, then docs/PERFORMANCE.md regenerated (unless ``--no-docs``)."""
    root = Path(__file__).resolve().parents[2]
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    ap.add_argument("--no-docs", action="store_true", help="do not regenerate docs/PERFORMANCE.md")
    ap.set_defaults(no_md=True, **defaults)
    args = ap.parse_args(argv)
    if args.train_only and args.out == defaults.get("out") and defaults.get("train_out"):
        args.out = defaults["train_out"]  # the training-step rows have their own report
    args.command_line = " ".join([f"python -m scripts.{Path(script).stem}", *(sys.argv[1:] if argv is None else argv)])
    try:
        rc = run(args)
    except FcnsegError as e:
        print(f"{script}: error: {e}", file=sys.stderr)
        return 2
    if rc == 0 and not args.no_docs:
        rc = subprocess.call([sys.executable, "-m", "scripts.write_performance_md"], cwd=root)
    return rc
