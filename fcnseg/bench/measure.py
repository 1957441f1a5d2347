"""Measuring primitives: timing statistics, resident memory, FLOPs, the machine's sgemm rate."""
from __future__ import annotations

import os
import platform
import resource
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fcnseg.provenance import commit, cpu_flags, cpu_model

__all__ = ["stats", "time_calls", "rss_mb", "reset_peak_rss", "peak_rss_mb", "count_flops", "sgemm_gflops",
           "machine_info", "run_process"]


def stats(samples: list[float]) -> dict[str, float]:
    """Median, min, max, quartiles (IQR) and count of a list of seconds."""
    s = sorted(samples)
    if len(s) >= 2:
        q1, _, q3 = statistics.quantiles(s, n=4, method="inclusive")
    else:
        q1 = q3 = s[0]
    return {"median": statistics.median(s), "min": s[0], "max": s[-1], "q1": q1, "q3": q3, "n": len(s)}


def time_calls(fn: Callable[[], object], warmup: int, repeats: int, sync: Callable[[], None] | None = None
               ) -> list[float]:
    """Wall seconds of ``repeats`` calls after ``warmup`` untimed ones."""
    sync = sync or (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t0)
    return out


def _status(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_mb() -> float:
    """Current resident set size in MiB (Linux /proc; else the lifetime peak)."""
    v = _status("VmRSS")
    return v if v is not None else peak_rss_mb()


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak RSS in MiB since the last :func:`reset_peak_rss` (VmHWM), else since process start."""
    v = _status("VmHWM")
    if v is not None:
        return v
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if platform.system() != "Darwin" else r / 2**20


def count_flops(module: nn.Module, *inputs: torch.Tensor) -> dict:
    """FLOPs of one forward, counted by ``torch.utils.flop_counter.FlopCounterMode`` (a multiply-add
    is 2 FLOPs; conv/matmul only: bias adds, ReLU and pooling are not counted). Runs on whatever
    device the module is on — use ``meta`` to count without computing."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(*inputs)
    by_op: dict[str, int] = {}
    for ops in counter.get_flop_counts().get("Global", {}).items():
        by_op[str(ops[0])] = int(ops[1])
    return {"total": int(counter.get_total_flops()), "by_op": by_op}


def sgemm_gflops(n: int = 4096, repeats: int = 3, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """The device's matmul rate (n×n @ n×n, 2n³ FLOPs): fp32 by default, with torch's current thread
    count on the CPU; on CUDA synchronised, after a warm-up."""
    device = torch.device(device)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    ts = time_calls(lambda: torch.mm(a, b), 1 if device.type == "cpu" else 5, repeats, sync)
    flops = 2 * n**3
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "best_gflops": flops / min(ts) / 1e9,
            "median_gflops": flops / statistics.median(ts) / 1e9}


def machine_info() -> dict:
    """CPU model and flags, core count, thread count, library versions, commit, load average."""
    info = {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "platform": platform.platform(), "commit": commit()}
    try:
        import onnxruntime  # noqa: PLC0415 (optional: the [onnx] extra; kept out of torch bench workers)

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    try:
        info["loadavg"] = list(os.getloadavg())
    except OSError:
        info["loadavg"] = None
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _busy_seconds() -> float:
    """CPU seconds all CPUs have spent busy since boot (``/proc/stat``, Linux)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v) - v[3] - (v[4] if len(v) > 4 else 0)) / os.sysconf("SC_CLK_TCK")


def run_process(cmd: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | os.PathLike | None = None,
                output: str | os.PathLike) -> dict:
    """Run ``cmd`` as a fresh process (stdout and stderr into the file ``output``) and measure it as a user
    feels it: ``wall_s`` from the launch to the exit, ``peak_rss_mb`` its whole-process high-water mark
    (``wait4``'s ``ru_maxrss``: the largest of the process and the children it waited for), ``cpu_s`` its
    CPU time, ``rc``, the 1-minute load average before and after, and ``other_load``: the CPUs other
    processes kept busy meanwhile (all CPUs' busy time less the command's own, over the wall time; the load
    average also counts what ran just before, this process's own earlier work included)."""
    load = os.getloadavg()
    busy = _busy_seconds()
    with open(output, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(cmd), env=None if env is None else dict(env), cwd=cwd, stdout=out,
                                stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    own = usage.ru_utime + usage.ru_stime
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "cpu_s": own,
            "rc": os.waitstatus_to_exitcode(status), "load_before": list(load), "load_after": list(os.getloadavg()),
            "other_load": max(0.0, _busy_seconds() - busy - own) / wall}
