"""Markdown tables from a bench report (the dict/JSON of :func:`fcnseg.bench.run_bench`)."""
from __future__ import annotations

__all__ = ["bench_markdown", "engine_table", "machine_line", "first_call_line", "gpu_lines", "train_table",
           "train_markdown", "row_description"]


def _f(v, fmt: str = ".3f", none: str = "–") -> str:
    return none if v is None else format(v, fmt)


def machine_line(report: dict) -> str:
    m = report.get("machine", {})
    load = m.get("loadavg")
    load_end = m.get("loadavg_end")
    sg = report.get("sgemm", {})
    flags = ", ".join(m.get("cpu_flags", [])) or "no flags"
    parts = [f"CPU {m.get('cpu', '?')} ({m.get('cores', '?')} cores; {flags})",
             f"{m.get('torch_threads', '?')} threads", f"torch {m.get('torch', '?')}",
             f"onnxruntime {m.get('onnxruntime') or 'absent'}", f"python {m.get('python', '?')}"]
    if m.get("gpu"):
        parts.append(f"GPU {m['gpu']}")
    if m.get("commit"):
        parts.append(f"commit {m['commit']}")
    if sg:
        parts.append(f"sgemm {sg['n']}² {sg['best_gflops']:.0f} GFLOP/s (best), {sg['median_gflops']:.0f} (median)")
    bf = report.get("gemm_bf16")
    if bf:
        parts.append(f"bf16 gemm {bf['n']}² {bf['best_gflops']:.0f} GFLOP/s (best)")
    if load:
        parts.append("load average at start " + " / ".join(f"{x:.2f}" for x in load)
                     + (", at end " + " / ".join(f"{x:.2f}" for x in load_end) if load_end else ""))
    return "; ".join(parts)


def engine_table(report: dict) -> str:
    """One row per engine: latency (median [q1–q3]), throughput, speed-up and memory vs the peer, exactness."""
    opts = report.get("options", {})
    nb = opts.get("throughput_batch")
    ratios = report.get("ratios_vs_peer", {})
    sg = report.get("sgemm", {}).get("best_gflops")
    mem = "CUDA" if str(report.get("device", "cpu")).startswith("cuda") else "RSS"   # max_memory_allocated on GPU
    head = ("| engine | exact | latency b1 s: median [IQR] (min–max) | "
            f"{'throughput img/s (b' + str(nb) + ')' if nb and nb > 1 else 'throughput'} | peer alongside s | "
            "speed-up vs peer | "
            f"peak {mem} MiB b1 | {mem} vs peer | {mem} at load MiB | GFLOP | GFLOP/s (% sgemm) | max abs Δ vs peer | "
            "labels = peer | "
            "train step s |")
    ncols = head.count("|") - 1
    rows = [head, "|" + "|".join(["---"] * ncols) + "|"]
    for r in report.get("engines", []):
        name = r["engine"]
        if "error" in r:
            rows.append(f"| {name} | – | failed: {r['error'][:80]} |" + " |" * (ncols - 3))
            continue
        if "latency" not in r:
            rows.append(f"| {name} | – | no timed runs |" + " |" * (ncols - 3))
            continue
        lat = r["latency"]["seconds"]
        thr = r.get("throughput", {}).get("images_per_s")
        ratio = ratios.get(name, {})
        gf = r.get("flops")
        ach = r.get("achieved_gflops")
        vs = r.get("vs_peer") or {}
        exact = "ref" if name == "peer" else ("other net" if r.get("spec", {}).get("runtime") == "tvfcn"
                                              else "yes" if r.get("exact_path") else "no")
        delta = vs.get("max_abs_diff")
        if delta is None and r.get("vs_reference"):
            delta_txt = f"{r['vs_reference']['max_abs_diff']:.1e} (vs {r['vs_reference']['reference']})"
            agree_txt = f"{100 * r['vs_reference']['label_agreement']:.2f}% (vs ref)"
        else:
            delta_txt = "ref" if name == "peer" else _f(delta, ".1e")
            agree_txt = "ref" if name == "peer" else (f"{100 * vs['label_agreement']:.2f}%" if vs else "–")
        train = r.get("train_step", {}).get("seconds", {}).get("median")
        pct = f" ({100 * ach / sg:.0f}%)" if ach and sg else ""
        rows.append(
            f"| {name} | {exact} | {lat['median']:.3f} [{lat['q1']:.3f}–{lat['q3']:.3f}] "
            f"({lat['min']:.3f}–{lat['max']:.3f}) | {_f(thr, '.2f')} | "
            f"{'–' if name == 'peer' else _f(ratio.get('peer_median_alongside'), '.3f')} | "
            f"{'1.00' if name == 'peer' else _f(ratio.get('latency_speedup'), '.2f')}× | "
            f"{r['peak_mem_b1_mb']:.0f} | {'1.00' if name == 'peer' else _f(ratio.get('peak_mem_ratio'), '.2f')} | "
            f"{_f(r.get('peak_rss_load_mb'), '.0f')} | "
            f"{_f(gf / 1e9 if gf else None, '.1f')} | {_f(ach, '.0f')}{pct} | {delta_txt} | {agree_txt} | "
            f"{_f(train, '.2f')} |")
    return "\n".join(rows)


def first_call_line(report: dict) -> str | None:
    """The untimed first call of each engine (lazy set-up: exports, ``torch.compile``, graph capture)."""
    calls = [(r["engine"], r["first_call_seconds"]) for r in report.get("engines", []) if "first_call_seconds" in r]
    if not calls:
        return None
    return ("First call, batch 1 (not in the timings: lazy set-up such as `torch.compile`, CUDA-graph capture): "
            + ", ".join(f"`{name}` {sec:.1f} s" for name, sec in calls) + ".")


def gpu_lines(report: dict) -> list[str]:
    """CUDA only: batch-1 medians with the input already on the GPU, and the peak memory the caching
    allocator reserved (CUDA-graph pools included)."""
    dev = [(r["engine"], r["latency_on_device"]["seconds"]["median"]) for r in report.get("engines", [])
           if "latency_on_device" in r]
    res = [(r["engine"], r["peak_reserved_b1_mb"]) for r in report.get("engines", []) if "peak_reserved_b1_mb" in r]
    lines = []
    if dev:
        lines.append("Batch-1 latency with the input already on the GPU (median; the table's times include the "
                     "copy from pinned host memory): " + ", ".join(f"`{n}` {1e3 * v:.2f} ms" for n, v in dev) + ".")
    if res:
        lines.append("Peak reserved CUDA memory, batch 1 (the caching allocator's, CUDA-graph pools included): "
                     + ", ".join(f"`{n}` {v:.0f} MiB" for n, v in res) + ".")
    return lines


def bench_markdown(report: dict, title: str | None = None) -> str:
    opts = report.get("options", {})
    h, w = opts.get("size", ("?", "?"))
    lines = [f"# {title or 'fcnseg bench'}: {opts.get('model')}@{opts.get('backbone')}, {h}×{w}, "
             f"{report.get('device', 'cpu')}", "",
             machine_line(report), "",
             f"Command: `{report.get('command', '')}`", "", engine_table(report), ""]
    first = first_call_line(report)
    if first:
        lines += [first, ""]
    lines += [x for line in gpu_lines(report) for x in (line, "")]
    ev = report.get("eval_split")
    if ev and "error" in ev:
        lines += [f"`evaluate()` time split: failed ({ev['error']})", ""]
    elif ev:
        fr = ev["fractions"]
        lines += [f"`evaluate()` time split ({ev['dataset']}, {ev['images']} images): "
                  + ", ".join(f"{k} {100 * v:.1f}%" for k, v in fr.items()), ""]
    return "\n".join(lines)


def row_description(r: dict) -> str:
    """What a training-step row runs, in words (from its ``spec``)."""
    sp = r.get("spec") or {}
    if sp.get("runtime") == "peer" or r.get("row") == "peer":
        return "torchfcn FCN8s: eager fp32 NCHW, torch.optim.SGD (per-tensor loop)"
    parts = [f"from cached {sp['frozen']} (the stages after it train)" if sp.get("frozen") else "whole net",
             "bf16 autocast" if sp.get("dtype") == "bf16" else "fp32"]
    if sp.get("trim"):
        parts.append("border trimmed")
    if sp.get("channels_last"):
        parts.append("channels_last")
    if sp.get("alignment", "caffe") != "caffe":
        parts.append(f"alignment {sp['alignment']} (another net)")
    return ", ".join(parts) + ", fused SGD"


def train_table(report: dict) -> str:
    """One row per training-step row: the step's median [IQR], its phases' medians, the peer alongside."""
    ratios = report.get("ratios_vs_peer", {})
    mem = "CUDA" if str(report.get("device", "cpu")).startswith("cuda") else "RSS"
    head = ("| row | what | exact | step s: median [IQR] | data s | forward s | backward s | optimizer s | "
            f"peer alongside s | speed-up vs peer | peak {mem} MiB |")
    ncols = head.count("|") - 1
    rows = [head, "|" + "|".join(["---"] * ncols) + "|"]
    for r in report.get("rows", []):
        name = r.get("row", r["engine"])
        if "error" in r or "train_step" not in r:
            why = r.get("error", "no timed steps")
            rows.append(f"| `{name}` | {row_description(r) if r.get('spec') else '–'} | – | {why[:100]} |"
                        + " |" * (ncols - 4))
            continue
        st, bd = r["train_step"]["seconds"], r["train_step"]["breakdown"]
        ratio = ratios.get(name, {})
        peer = name == "peer"
        rows.append(f"| `{name}` | {row_description(r)} | {'ref' if peer else 'yes' if r.get('exact') else 'no'} | "
                    f"{st['median']:.2f} [{st['q1']:.2f}–{st['q3']:.2f}] | "
                    + " | ".join(f"{bd[p]['median']:.2f}" for p in ("data", "forward", "backward", "optimizer"))
                    + f" | {'–' if peer else _f(ratio.get('peer_median_alongside'), '.2f')} | "
                    f"{'1.00' if peer else _f(ratio.get('speedup'), '.2f')}× | "
                    f"{_f(r['train_step'].get('peak_mb'), '.0f')} |")
    return "\n".join(rows)


def train_markdown(report: dict, title: str | None = None) -> str:
    o = report.get("options", {})
    h, w = o.get("size", ("?", "?"))
    return "\n".join([f"# {title or 'fcnseg training step'}: {o.get('model')}@{o.get('backbone')}, {h}×{w}, "
                      f"batch {o.get('batch')}, {report.get('device', 'cpu')}", "", machine_line(report), "",
                      f"Command: `{report.get('command', '')}`", "", train_table(report), ""])
