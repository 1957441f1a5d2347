#!/usr/bin/env python
"""Regenerate docs/SERVING.md from docs/bench/serve/load.json (written by ``python -m scripts.load_serve``).

    python -m scripts.write_serving_md [--json docs/bench/serve/load.json] [--out docs/SERVING.md]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from fcnseg.serve.limits import Limits

ROOT = Path(__file__).resolve().parents[1]

INTRO = """\
# Serving

`fcnseg serve` puts one model behind an HTTP API and an upload page (Starlette + uvicorn, the `serve`
extra: `pip install 'fcnseg[serve]'`). Nothing is downloaded at run time; the page is one file served
by the package.

```
fcnseg serve --checkpoint runs/demo/best.pt [--engine auto|torch] [--device auto|cpu|cuda] \\
             [--host 127.0.0.1] [--port 8000] [--max-queue @Q@] [--max-bytes @B@] [--max-pixels @P@]
```

`--checkpoint` takes a checkpoint of `fcnseg train` or an ONNX file of `fcnseg export` (which carries the
checkpoint's class names and colours; it runs in ONNX Runtime on the CPU). `--engine auto` picks the
engine as `fcnseg predict` does (`choose_engine`; on CPU a Caffe-aligned VGG net runs in PyTorch border-trimmed,
any size with nothing exported; another net runs in ONNX Runtime on one dynamic-size export, made at start-up
unless cached in `~/.cache/fcnseg/engines`, for every size); `--engine torch` runs the PyTorch model as trained.

| endpoint | what it does |
|---|---|
| `POST /predict` | one image as the raw body (`image/*`, `application/octet-stream`, or what `curl --data-binary` sends), or several as the file fields of `multipart/form-data`. `format=png` (default): the label map as a palette PNG, pixel values = class indices, drawn in the dataset's colours; `format=overlay`: the colours blended over the image (`alpha=0..1`, default 0.5), PNG; `format=json`: per image its size, the classes present with their share of the pixels, timing, and with `labels=1` the label PNG base64-encoded, plus the engine and the request's timing. Several images in `png`/`overlay` come back as a ZIP (`<name>_label.png` / `<name>_overlay.png`). Multi-head nets (SIFT Flow's semantic + geometric): `head=NAME`, default the first head |
| `GET /classes` | per head, each class's index, name and RGB colour; the heads and the default head |
| `GET /health` | model (file, name, backbone), engine, device, heads, uptime, requests served and refused by status, queue use, limits |
| `GET /` | the upload page: drop an image or choose a file; the image and the overlay side by side with an opacity slider; the legend of classes present with colours and shares; the time taken |

```
curl --data-binary @street.jpg 'http://127.0.0.1:8000/predict?format=overlay' -o overlay.png
curl -F image=@a.jpg -F image=@b.png 'http://127.0.0.1:8000/predict?format=json'
```

**Bad input never takes the service down.** Every refusal is `{"error": "<one line>"}` with its status,
and the next request is served (each case below is tested against a live server, then a good request):

| input | status |
|---|---|
| not an image, a disguised file (text or HTML named `.png`), a PNG signature alone | 415 |
| truncated or corrupt image, empty body or empty file, a multipart body without a file or broken | 400 |
| image over `--max-pixels` (W×H read from the header before decoding: decompression bombs stop here) | 413 |
| body over `--max-bytes` (refused from `Content-Length`, or as a chunked body streams in past the limit) | 413 |
| wrong method (`GET /predict`, `POST /classes` …) / unknown path | 405 (with `Allow`) / 404 |
| unsupported `Content-Type` (JSON …) / unknown or bad query parameter | 415 / 400 |
| body not sent within `--read-timeout` (@T@ s) | 408 |
| more than `--max-queue` requests admitted (running or waiting) | 503 with `Retry-After: 1` |

**Work is bounded.** One model in memory, run by one thread; a request is admitted (or refused with 503)
before its body is read, so at most `--max-queue` bodies of at most `--max-bytes` each are held, and only
one image is decoded and labelled at a time (multipart files over 1 MB spool to disk while they arrive).
A request whose client went away keeps its place until its job ends, so the model never queues more than
`--max-queue` jobs. Open connections are capped at 4 × `--max-queue` + 32 by uvicorn itself, whose refusal
past that (like its answer to malformed HTTP) is plain text, not JSON.
"""


def _ms(v: float | None) -> str:
    return "–" if v is None else f"{v:.0f}"


def _rss_table(samples: list[list]) -> list[str]:
    phases: dict[str, list[float]] = {}
    for _, mb, phase in samples:
        phases.setdefault(phase, []).append(mb)
    rows = ["| phase | samples | first | min | max | last |", "|---|---|---|---|---|---|"]
    for phase, v in phases.items():
        rows.append(f"| {phase} | {len(v)} | {v[0]:.0f} | {min(v):.0f} | {max(v):.0f} | {v[-1]:.0f} |")
    return rows


def _engine_note(r: dict) -> str:
    d = r.get("engine_details") or {}
    if d.get("trim") is False and r["engine"].endswith("-trim-lowmem"):
        return (" (the CPU default of that commit, `TrimmedOrtEngine`: one ONNX export per input size, and past three "
                "sizes one dynamic-size export for every size: at the end it reported trim false, low_memory false; "
                "today's default for this net is `torch-fp32-cl-trim`, which exports nothing)")
    return ""


def load_section(r: dict) -> str:
    m = r["machine"]
    levels = r["levels"]
    failed = sum(lv["failed_good"] for lv in levels)
    unexpected = sum(lv["unexpected_bad"] for lv in levels)
    rss = r["rss_mb"]
    growth = (rss["final"] or 0) - rss["after_warm_up"]
    bound = max(20.0, 0.05 * rss["after_warm_up"])
    flat = abs(growth) <= bound
    model = r.get("model") or {}
    la0, la1 = r.get("load_average_before"), r.get("load_average_after")
    parts = [
        "## Under load", "",
        f"Measured by `{r['command']}` (commit `{r['commit']}`, {r['seconds'] / 60:.1f} min in all), which starts "
        f"`{r['server_command']}` on 127.0.0.1 and talks to nothing else. Machine: {m['cpu']}, {m['cores']} cores, "
        f"torch {m['torch']}, Python {m['python']}; load average {', '.join(map(str, la0 or []))} before and "
        f"{', '.join(map(str, la1 or []))} after (1/5/15 min): the machine was shared with other jobs, so the "
        "latencies are what a busy 2-core box gives, not a clean benchmark.", "",
        f"Model: `{model.get('file')}`, {r.get('model_about', '')}; engine `{r['engine']}`{_engine_note(r)}. "
        f"Good requests: bundled CamVid frames at {', '.join(r['sizes'])} (H×W), PNG raw bodies and JPEG "
        "multipart uploads, each size in `format=png`, `overlay` and `json`; one of each was sent first to warm "
        f"the engine ({r['warm_up']['requests']} requests, {r['warm_up']['seconds']:.0f} s: that engine's "
        f"first calls per size, exports included). {r['requests_per_level']} requests per concurrency level, "
        f"{100 * r['bad_share']:.0f}% of them bad ({', '.join(r['bad_kinds'])}); server limits "
        f"`--max-queue {r['max_queue']} --max-bytes {r['max_bytes']} --max-pixels {r['max_pixels']}`.", "",
        "| concurrency | requests | good | bad | seconds | requests/s | good images/s | p50 ms | p95 ms | p99 ms "
        "| max ms | failed good | bad with another status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for lv in levels:
        lat = lv["latency_ms"]
        parts.append(f"| {lv['concurrency']} | {lv['requests']} | {lv['good']} | {lv['bad']} | {lv['seconds']:.0f} "
                     f"| {lv['requests_per_s']:.2f} | {lv['good_per_s']:.2f} | {_ms(lat['p50'])} | {_ms(lat['p95'])} "
                     f"| {_ms(lat['p99'])} | {_ms(lat['max'])} | {lv['failed_good']} | {lv['unexpected_bad']} |")
    parts += ["", "Latency: client-side wall time of a good request (connect, upload, queue, decode, model, encode, "
              "download); it grows with concurrency because one model thread serves every client in turn.", "",
              "Bad requests by kind, status counts per level:", "",
              "| kind | expected | " + " | ".join(f"c={lv['concurrency']}" for lv in levels) + " |",
              "|---|---|" + "---|" * len(levels)]
    for kind, expect in r["bad_kinds"].items():
        cells = [", ".join(f"{n}× {s}" for s, n in lv["errors_by_kind"].get(kind, {}).items()) or "–" for lv in levels]
        parts.append(f"| {kind} | {expect} | " + " | ".join(cells) + " |")
    parts += ["", f"Server RSS (MiB), sampled every few tenths of a second ({len(rss['samples'])} samples in "
              "`docs/bench/serve/load.json`):", ""] + _rss_table(rss["samples"])
    srv = r["server"]
    parts += ["", "Criteria:", "",
              f"- failed good requests: **{failed}** (criterion 0); bad requests answered with another status than "
              f"expected: **{unexpected}**",
              f"- crashes: **{srv['crashes']}** (the server answered `/health` at the end: {srv['alive_at_end']}; "
              f"tracebacks in its log: {srv['tracebacks_in_log']}, internal errors: {srv['internal_errors_in_log']})",
              f"- RSS after warm-up {rss['after_warm_up']:.0f} MiB, highest after it {rss['max_after_warm_up']:.0f} "
              f"MiB, at the end {rss['final']:.0f} MiB: {growth:+.0f} MiB, "
              f"**{'flat' if flat else 'not flat'}** (rule: the end within max(20 MiB, 5%) of the RSS after warm-up)",
              "", "Regenerate: `python -m scripts.load_serve` (`--checkpoint C` for another model; it writes the JSON and "
              "this page), or "
              "`python -m scripts.write_serving_md` from the committed JSON."]
    return "\n".join(parts) + "\n"


def intro() -> str:
    """The prose, with the default limits filled in from :class:`fcnseg.serve.limits.Limits`."""
    d = Limits()
    text = INTRO
    for token, value in {"@Q@": d.max_queue, "@B@": d.max_bytes, "@P@": d.max_pixels, "@T@": f"{d.read_timeout:g}"}.items():
        text = text.replace(token, str(value))
    return text


def render(record: dict | None) -> str:
    body = load_section(record) if record else "## Under load\n\n_Not measured yet: `python -m scripts.load_serve`._\n"
    return intro() + "\n" + body


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=ROOT / "docs" / "bench" / "serve" / "load.json")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "SERVING.md")
    args = ap.parse_args(argv)
    record = json.loads(args.json.read_text()) if args.json.is_file() else None
    args.out.write_text(render(record))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
