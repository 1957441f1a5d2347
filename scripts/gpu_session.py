#!/usr/bin/env python3
"""A short GPU loan's work as one prepared command, bounded in time, every log in one file.

    here:   make gpu-pack                              # .gpu: CamVid as JPEG, the trunk in fp16, the peer
    there:  bash scripts/gpu_session.sh                # device tool: carry [".gpu"], timeout_s 600
    here:   python -m scripts.gpu_session --collect FILES_AT   # results into docs/, the docs regenerated

Phases, in order (``--phases``, default all of them): ``tests`` (tests/test_cuda.py), ``bench``
(scripts/bench_gpu.py → cuda.json, rewritten after every engine) and ``train`` (``fcnseg reproduce camvid
--protocol gpu`` on .gpu/camvid: FCN-32s → 16s → 8s, every layer fine-tuned). Before them the machine
is recorded, the package installed (``pip install --no-deps --no-build-isolation -e .``: no index
there) and the packed trunk put in the cache. Each phase runs under its own limit within ``--budget``
(570 s: one command of at most 10 minutes); a phase past its limit is stopped (SIGTERM, then SIGKILL)
and the next one still runs. What comes back from ``--out`` ($OUT): ``session.log`` (every phase's whole
output), ``session.json`` (each phase's command, exit code and seconds, rewritten after each),
``cuda.json`` and ``camvid-gpu/`` (RESULTS.md and one JSON per run; the checkpoints stay behind in
``--work``) — at most 8 files, as the device tool returns. ``--toy`` runs it all on the CPU at toy
scale (the bundled CamVid sample, tiny nets): the end-to-end check of this script (tests/test_gpu_session.py).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("tests", "bench", "train")
LIMITS = {"setup": 45.0, "tests": 100.0, "bench": 200.0}   # the train phase gets the rest (about 250 s)
WORKER_S = 60.0   # a bench worker's life: loading, first call, ~25 timed calls, a training step
RESERVE_S = 15.0   # for copying the results and the summary at the end

TOY_BENCH = ["--device", "cpu", "--size", "40", "48", "--width", "0.0625", "--fc-channels", "32", "--engines",
             "torch-fp32,torch-fp32-cl", "--repeats", "1", "--warmup", "0", "--throughput-batch", "2",
             "--throughput-repeats", "1", "--sgemm-n", "64", "--no-peer", "--threads", "1"]
TOY_TRAIN = ["train.device=cpu", "train.amp=off", "train.channels_last=false", "data.workers=0", "model.weights=null",
             "model.width=0.0625", "model.fc_channels=32", "data.resize=8", "data.max_items=4", "data.batch_size=2",
             "train.epochs=1", "train.eval_every=0", "train.eval_batch_size=1"]


class Session:
    """The phases' log (``session.log``, also echoed to stdout) and summary (``session.json``)."""

    def __init__(self, out: Path, budget: float) -> None:
        self.out, self.t0, self.budget = out, time.monotonic(), budget
        out.mkdir(parents=True, exist_ok=True)
        self.log_file = open(out / "session.log", "a", buffering=1)
        self.phases: list[dict] = []

    def left(self) -> float:
        return self.budget - (time.monotonic() - self.t0)

    def say(self, text: str) -> None:
        line = f"[gpu_session {time.monotonic() - self.t0:5.0f}s] {text}\n"
        self.log_file.write(line)
        sys.stdout.write(line)
        sys.stdout.flush()

    def run(self, name: str, cmd: list[str], limit: float, env: dict) -> int:
        """``cmd`` with its whole output in the log, stopped after ``limit`` s; its exit code (124: stopped)."""
        limit = max(0.0, min(limit, self.left() - RESERVE_S))
        if limit < 5:
            self.say(f"phase {name}: not run (the session's budget is spent)")
            self._record(name, cmd, None, 0.0, skipped=True)
            return 124
        self.say(f"phase {name} (limit {limit:.0f} s): {shlex.join(cmd)}")
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", start_new_session=True)
        reader = threading.Thread(target=self._copy, args=(proc.stdout,), daemon=True)
        reader.start()
        stopped = False
        try:
            proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            stopped = True
            self.say(f"phase {name}: past its {limit:.0f} s; stopping it (SIGTERM, then SIGKILL after 20 s)")
            _signal(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                _signal(proc, signal.SIGKILL)
                proc.wait()
        reader.join(timeout=10)
        rc = 124 if stopped else proc.returncode
        self.say(f"phase {name}: exit code {rc} after {time.monotonic() - t0:.0f} s")
        self._record(name, cmd, rc, time.monotonic() - t0, stopped=stopped)
        return rc

    def _copy(self, stream) -> None:
        for line in stream:
            self.log_file.write(line)
            sys.stdout.write(line)
        sys.stdout.flush()

    def _record(self, name: str, cmd: list[str], rc: int | None, seconds: float, **flags) -> None:
        self.phases.append({"phase": name, "command": shlex.join(cmd), "exit_code": rc, "seconds": round(seconds, 1),
                            **{k: v for k, v in flags.items() if v}})
        tmp = self.out / "session.json.tmp"
        tmp.write_text(json.dumps({"budget_s": self.budget, "elapsed_s": round(time.monotonic() - self.t0, 1),
                                   "phases": self.phases}, indent=1) + "\n")
        tmp.replace(self.out / "session.json")


def _signal(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)   # the phase's whole process group (bench workers, data loader workers)
    except (ProcessLookupError, PermissionError):
        pass


def _env(work: Path, python: str) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", FCNSEG_CACHE=str(work / "cache"))
    paths = [str(ROOT)] + ([str(ROOT / ".gpu" / "site")] if (ROOT / ".gpu" / "site").is_dir() else [])
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def setup(s: Session, args: argparse.Namespace, env: dict) -> None:
    """The machine on record; the package installed (``--install``); the packed trunk in the cache."""
    py = args.python
    probe = ("import platform, sys, torch; print('python', platform.python_version(), sys.executable); "
             "print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available()); "
             "print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU')")
    s.run("machine", ["bash", "-c", "date -u; uname -a; nproc; nvidia-smi --query-gpu=name,memory.total,"
                      "driver_version --format=csv 2>&1 || echo 'no nvidia-smi'"], 30, env)
    s.run("torch", [py, "-c", probe], 60, env)
    if args.install:
        s.run("install", [py, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", "."],
              LIMITS["setup"], env)
    packed = ROOT / ".gpu" / "hed-vgg16-fp16.safetensors"
    if packed.is_file():
        s.run("weights", [py, "-m", "scripts.gpu_pack", "--install-weights", "--out", str(packed.parent)], 60, env)
    elif not args.toy:
        s.say(f"no {packed.relative_to(ROOT)} (run 'make gpu-pack' and carry .gpu): hed-vgg16 cannot load here")


def collect_train(s: Session, work: Path) -> None:
    """The protocol's records and RESULTS.md into ``--out`` (the run folders, checkpoints included, stay)."""
    src, dst = work / "camvid-gpu", s.out / "camvid-gpu"
    files = sorted(src.glob("*.json")) + ([src / "RESULTS.md"] if (src / "RESULTS.md").is_file() else [])
    if files:
        dst.mkdir(exist_ok=True)
        for f in files:
            shutil.copyfile(f, dst / f.name)
    s.say(f"train results: {', '.join(f.name for f in files) or 'none'}")


def collect(files_at: Path) -> int:
    """Here, after the loan: cuda.json and the protocol's results into docs/, the docs regenerated."""
    copied = []
    if (files_at / "cuda.json").is_file():
        shutil.copyfile(files_at / "cuda.json", ROOT / "docs" / "bench" / "cuda.json")
        copied.append("docs/bench/cuda.json")
    results = files_at / "camvid-gpu"
    if results.is_dir():
        dst = ROOT / "docs" / "results" / "camvid-gpu"
        dst.mkdir(parents=True, exist_ok=True)
        for f in results.iterdir():
            shutil.copyfile(f, dst / f.name)
            copied.append(str(dst.relative_to(ROOT) / f.name))
    print("collected: " + (", ".join(copied) or "nothing"))
    rc = 0
    for script in ("write_performance_md", "write_readme"):
        rc = rc or subprocess.call([sys.executable, "-m", f"scripts.{script}"], cwd=ROOT)
    return rc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "runs" / "gpu-session"),
                    help="what comes back: logs and results (default $OUT, else runs/gpu-session)")
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "gpu-session-work",
                    help="run folders and the cache (checkpoints: not brought back)")
    ap.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated, of {', '.join(PHASES)}")
    ap.add_argument("--budget", type=float, default=570.0, help="seconds for the whole session (default 570)")
    ap.add_argument("--camvid", default=str(ROOT / ".gpu" / "camvid"), help="CamVid root for the train phase")
    ap.add_argument("--python", default=sys.executable, help="the interpreter the phases run (default this one)")
    ap.add_argument("--install", action=argparse.BooleanOptionalAction, default=None,
                    help="pip install the package first (default: yes, except with --toy)")
    ap.add_argument("--toy", action="store_true", help="on the CPU at toy scale: the end-to-end check")
    ap.add_argument("--bench-args", default="", help="extra options for scripts/bench_gpu.py")
    ap.add_argument("--collect", type=Path, metavar="FILES_AT", help="here: bring a session's results into docs/")
    args = ap.parse_args(argv)
    if args.collect:
        return collect(args.collect)
    phases = [p for p in args.phases.split(",") if p]
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        ap.error(f"--phases: unknown {', '.join(unknown)} (phases: {', '.join(PHASES)})")
    if args.install is None:
        args.install = not args.toy
    s = Session(args.out, args.budget)
    env = _env(args.work, args.python)
    s.say(f"phases {', '.join(phases)}; budget {args.budget:.0f} s; out {args.out}; work {args.work}")
    setup(s, args, env)
    py, rcs = args.python, {}
    if "tests" in phases:
        rcs["tests"] = s.run("tests", [py, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "tests/test_cuda.py"],
                             LIMITS["tests"], env)
    if "bench" in phases:
        limit = min(LIMITS["bench"] if "train" in phases else s.left(), s.left() - RESERVE_S)
        # no worker lives past WORKER_S, none begins later than WORKER_S + 10 s before the limit
        cmd = [py, "-m", "scripts.bench_gpu", "--out", str(args.out / "cuda.json"), "--no-docs", "--worker-timeout",
               f"{WORKER_S:.0f}", "--time-budget", f"{max(limit - WORKER_S - 10, 10):.0f}"] + \
            (TOY_BENCH if args.toy else []) + shlex.split(args.bench_args)
        rcs["bench"] = s.run("bench", cmd, limit, env)
    if "train" in phases:
        root = str(Path(ROOT / "fcnseg" / "data" / "sample" / "camvid")) if args.toy else args.camvid
        budget = s.left() - RESERVE_S - 20.0   # the protocol shares this among its runs; 20 s for its start
        cmd = [py, "-m", "fcnseg", "reproduce", "camvid", "--protocol", "gpu", "--root", root,
               "--out", str(args.work / "camvid-gpu"), "--time-budget", f"{max(budget, 1.0):.0f}"] + \
            (TOY_TRAIN if args.toy else [])
        rcs["train"] = s.run("train", cmd, s.left() - RESERVE_S, env)
        collect_train(s, args.work)
    s.say("done: " + ", ".join(f"{k} exit code {v}" for k, v in rcs.items()))
    return 0 if all(v == 0 for v in rcs.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
