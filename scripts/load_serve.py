"""Load test of ``fcnseg serve`` on the loopback interface: one JSON, and docs/SERVING.md generated from it.

    python -m scripts.load_serve                       # writes docs/bench/serve/load.json and docs/SERVING.md
    python -m scripts.load_serve --checkpoint runs/demo/best.pt --requests 40 --levels 1 4 --out /tmp/s.json --no-docs

Without ``--checkpoint`` it serves a small seeded model it writes itself (``small_checkpoint``: FCN-8s-VGG16 at
1/8 width, fc6/fc7 128 wide, CamVid's 11 classes and colours, random weights): the server's behaviour
under load, not a model's quality, is what is measured, and it finishes in minutes on 2 cores.

Starts ``fcnseg serve`` (the real command, in its own process) on 127.0.0.1, warms it with one image of
each size, then sends ``--requests`` requests at each concurrency level: good ones (bundled CamVid frames
at mixed sizes, PNG and JPEG, raw bodies and multipart, ``format=png|overlay|json``) and about
``--bad`` of them bad (not an image, truncated, a decompression bomb, over ``--max-pixels``, over
``--max-bytes``, empty, a wrong method, a wrong content type, a bad parameter). It records every
request's status and latency, the server's RSS every ``--sample`` seconds, and whether the server
survived. Bounded: at most ``--requests`` per level and ``--time-limit`` seconds in all; it only talks
to 127.0.0.1.
"""
from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import random
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fcnseg.provenance import commit, loadavg, machine
from scripts import write_serving_md

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "fcnseg" / "data" / "sample" / "camvid" / "val"
SIZES = ((60, 80), (90, 120), (120, 160), (150, 200))  # H, W: mixed sizes of one CamVid frame each
HOST = "127.0.0.1"


@dataclass(frozen=True)
class Req:
    """One request of the mix: what it is, how to send it, the status it must get."""

    kind: str
    method: str
    path: str
    body: bytes
    headers: tuple[tuple[str, str], ...]
    expect: int

    @property
    def good(self) -> bool:
        return self.expect == 200


def _encode(rgb: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _multipart(name: str, data: bytes) -> tuple[bytes, str]:
    b = uuid.uuid4().hex
    body = (f'--{b}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{b}--\r\n".encode()
    return body, f"multipart/form-data; boundary={b}"


def _png_bomb(side: int = 100_000) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + chunk(b"IEND", b"")


SMALL_MODEL = ("FCN-8s-VGG16 at 1/8 width (fc6/fc7 128 wide), CamVid's 11 classes and colours, seeded random weights "
               "(scripts.load_serve.small_checkpoint)")


def small_checkpoint(folder: Path) -> Path:
    """The default model: seeded, 1/8-wide FCN-8s (Caffe alignment, as the paper's nets) with CamVid's classes."""
    import torch  # noqa: PLC0415 (optional: only for the default model; the rest of the script is torch-free)

    from fcnseg.data.camvid import CAMVID_CLASSES, CAMVID_PALETTE  # noqa: PLC0415 (optional: as above)
    from fcnseg.models import create_model  # noqa: PLC0415 (optional: as above)
    from fcnseg.models.checkpoint import save_checkpoint  # noqa: PLC0415 (optional: as above)

    torch.manual_seed(0)
    model = create_model("fcn8s", 11, width=1 / 8, fc_channels=128)
    return save_checkpoint(folder / "fcn8s-vgg16-w8-camvid-seed0.pt", model, classes=list(CAMVID_CLASSES),
                           palette=[list(map(int, c)) for c in CAMVID_PALETTE])


def good_requests(frames: list[Path]) -> list[Req]:
    """Every size × (PNG raw, JPEG multipart) × format, from the bundled frames."""
    out = []
    for n, (h, w) in enumerate(SIZES):
        rgb = np.asarray(Image.open(frames[n % len(frames)]).convert("RGB").resize((w, h)))
        png, jpeg = _encode(rgb, "PNG"), _encode(rgb, "JPEG")
        for fmt in ("png", "overlay", "json"):
            out.append(Req(f"good-{h}x{w}", "POST", f"/predict?format={fmt}", png,
                           (("Content-Type", "image/png"),), 200))
            body, ctype = _multipart(f"frame-{h}x{w}.jpg", jpeg)
            out.append(Req(f"good-{h}x{w}", "POST", f"/predict?format={fmt}", body, (("Content-Type", ctype),), 200))
    return out


def bad_requests(max_pixels: int, max_bytes: int, frames: list[Path]) -> list[Req]:
    """One of each kind of bad input, with the status it must get."""
    jpeg = _encode(np.asarray(Image.open(frames[0]).convert("RGB").resize((120, 90))), "JPEG")
    side = int(max_pixels ** 0.5) + 16
    over = io.BytesIO()
    Image.new("L", (side, side)).save(over, format="PNG")
    rng = np.random.default_rng(0)
    png = (("Content-Type", "image/png"),)
    return [
        Req("not-an-image", "POST", "/predict", b"plain text, not an image\n" * 40, png, 415),
        Req("truncated-jpeg", "POST", "/predict", jpeg[: len(jpeg) // 2], (("Content-Type", "image/jpeg"),), 400),
        Req("decompression-bomb", "POST", "/predict", _png_bomb(), png, 413),
        Req("over-max-pixels", "POST", "/predict", over.getvalue(), png, 413),
        Req("over-max-bytes", "POST", "/predict", rng.integers(0, 256, max_bytes + 4096, dtype=np.uint8).tobytes(),
            png, 413),
        Req("empty-body", "POST", "/predict", b"", png, 400),
        Req("wrong-method", "GET", "/predict", b"", (), 405),
        Req("wrong-content-type", "POST", "/predict", b'{"image": 1}', (("Content-Type", "application/json"),), 415),
        Req("bad-parameter", "POST", "/predict?format=gif", jpeg, (("Content-Type", "image/jpeg"),), 400),
    ]


def mix(good: list[Req], bad: list[Req], n: int, bad_share: float, seed: int) -> list[Req]:
    """``n`` requests, ``round(n * bad_share)`` of them bad (kinds in turn), shuffled with ``seed``."""
    n_bad = round(n * bad_share)
    reqs = [bad[i % len(bad)] for i in range(n_bad)] + [good[i % len(good)] for i in range(n - n_bad)]
    random.Random(seed).shuffle(reqs)
    return reqs


def send(port: int, r: Req, timeout: float = 300) -> tuple[int, float]:
    """(status, seconds) of one request on a fresh connection; status 0 when the connection failed."""
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(r.method, r.path, body=r.body or None, headers=dict(r.headers))
        resp = conn.getresponse()
        resp.read()
        status = resp.status
    except OSError:
        status = 0
    finally:
        conn.close()
    return status, time.perf_counter() - t0


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Sampler(threading.Thread):
    """The server's RSS every ``every`` seconds: (seconds since start, MiB, phase)."""

    def __init__(self, pid: int, every: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.every, self.phase = pid, every, "start"
        self.samples: list[tuple[float, float, str]] = []
        self.t0, self.stop = time.monotonic(), threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            v = rss_mb(self.pid)
            if v is not None:
                self.samples.append((round(time.monotonic() - self.t0, 2), round(v, 1), self.phase))
            self.stop.wait(self.every)


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1000, 1) if values else None


def run_level(port: int, reqs: list[Req], concurrency: int, deadline: float) -> dict:
    """Send ``reqs`` with ``concurrency`` clients (until ``deadline``); the level's numbers."""
    results: list[tuple[Req, int, float]] = []
    lock = threading.Lock()
    it = iter(reqs)

    def client() -> None:
        while time.monotonic() < deadline:
            with lock:
                r = next(it, None)
            if r is None:
                return
            status, seconds = send(port, r)
            with lock:
                results.append((r, status, seconds))

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(client) for _ in range(concurrency)]:
            f.result()
    wall = time.perf_counter() - t0
    good = [(r, s, t) for r, s, t in results if r.good]
    bad = [(r, s, t) for r, s, t in results if not r.good]
    by_kind: dict[str, dict[str, int]] = {}
    for r, s, _ in bad:
        by_kind.setdefault(r.kind, {}).setdefault(str(s), 0)
        by_kind[r.kind][str(s)] += 1
    lat = [t for _, s, t in good if s == 200]
    return {"concurrency": concurrency, "requests": len(results), "good": len(good), "bad": len(bad),
            "seconds": round(wall, 2), "requests_per_s": round(len(results) / wall, 2),
            "good_per_s": round(len(lat) / wall, 2),
            "latency_ms": {"p50": percentile(lat, 50), "p95": percentile(lat, 95), "p99": percentile(lat, 99),
                           "max": percentile(lat, 100)},
            "latency_ms_bad": {"p50": percentile([t for _, _, t in bad], 50),
                               "p99": percentile([t for _, _, t in bad], 99)},
            "failed_good": sum(1 for _, s, _ in good if s != 200),
            "failed_good_statuses": sorted({s for _, s, _ in good if s != 200}),
            "unexpected_bad": sum(1 for r, s, _ in bad if s != r.expect),
            "errors_by_kind": dict(sorted(by_kind.items())),
            "cut_by_time_limit": len(results) < len(reqs)}


def _health(port: int) -> dict | None:
    try:
        conn = http.client.HTTPConnection(HOST, port, timeout=10)
        conn.request("GET", "/health")
        data = json.loads(conn.getresponse().read())
        conn.close()
        return data
    except (OSError, ValueError):
        return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="a checkpoint (or ONNX file) for fcnseg serve (default: small_checkpoint)")
    ap.add_argument("--engine", default="auto", choices=["auto", "torch"])
    ap.add_argument("--requests", type=int, default=500, help="requests per concurrency level (default 500)")
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16], help="concurrency levels (default 1 4 16)")
    ap.add_argument("--bad", type=float, default=0.2, help="share of bad requests (default 0.2)")
    ap.add_argument("--max-bytes", type=int, default=2_000_000, help="the server's --max-bytes (default 2 MB)")
    ap.add_argument("--max-pixels", type=int, default=1_000_000, help="the server's --max-pixels (default 1 MP)")
    ap.add_argument("--time-limit", type=float, default=1800, help="seconds for the whole run at most (default 1800)")
    ap.add_argument("--sample", type=float, default=0.5, help="seconds between RSS samples (default 0.5)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "bench" / "serve" / "load.json")
    ap.add_argument("--no-docs", action="store_true", help="do not regenerate docs/SERVING.md")
    args = ap.parse_args(argv)
    if args.requests < 1 or args.requests > 5000 or not args.levels or max(args.levels) > 64 or min(args.levels) < 1:
        ap.error("bounded: --requests 1..5000 per level, --levels 1..64")
    start = time.monotonic()
    deadline = start + args.time_limit
    frames = sorted(SAMPLE.glob("*.jpg"))
    good, bad = good_requests(frames), bad_requests(args.max_pixels, args.max_bytes, frames)
    tmp = tempfile.TemporaryDirectory(prefix="fcnseg-load-")
    checkpoint = Path(args.checkpoint) if args.checkpoint else small_checkpoint(Path(tmp.name))
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    limits = ["--engine", args.engine, "--max-queue", str(max(args.levels)), "--max-bytes", str(args.max_bytes),
              "--max-pixels", str(args.max_pixels)]
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen([sys.executable, "-m", "fcnseg", "serve", "--checkpoint", str(checkpoint),
                             "--port", str(port), *limits], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    load_before = loadavg()
    try:
        while _health(port) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise SystemExit(f"load_serve: the server did not start (exit {proc.returncode}): {log.read()[-2000:]}")
            time.sleep(0.2)
        sampler = Sampler(proc.pid, args.sample)
        sampler.start()
        sampler.phase = "warm-up"
        t0 = time.perf_counter()
        warm = [send(port, r) for r in good if "format=json" in r.path]  # every size, raw and multipart
        warm_s = time.perf_counter() - t0
        if any(s != 200 for s, _ in warm):
            raise SystemExit(f"load_serve: warm-up requests failed: {[s for s, _ in warm]}")
        rss_warm = rss_mb(proc.pid)
        levels = []
        for n, c in enumerate(args.levels):
            sampler.phase = f"c={c}"
            levels.append(run_level(port, mix(good, bad, args.requests, args.bad, args.seed + n), c, deadline))
            print(f"load_serve: concurrency {c}: {json.dumps(levels[-1])}", file=sys.stderr, flush=True)
        sampler.phase = "end"
        time.sleep(args.sample * 2)
        sampler.stop.set()
        sampler.join()
        health = _health(port)
        alive = proc.poll() is None and health is not None
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.seek(0)
        server_log = log.read()
        log.close()
        tmp.cleanup()
    after = [v for _, v, phase in sampler.samples if phase not in ("start", "warm-up")]
    record = {
        "command": " ".join(["python -m scripts.load_serve", *(argv if argv is not None else sys.argv[1:])]),
        "model_about": SMALL_MODEL if not args.checkpoint else "the checkpoint given",
        "server_command": " ".join(["fcnseg serve --checkpoint", checkpoint.name, *limits]),
        "commit": commit(), "machine": machine(), "load_average_before": load_before, "load_average_after": loadavg(),
        "model": (health or {}).get("model"), "engine": (health or {}).get("engine"),
        "engine_details": (health or {}).get("engine_details"),
        "sizes": [f"{h}x{w}" for h, w in SIZES], "requests_per_level": args.requests, "bad_share": args.bad,
        "bad_kinds": {r.kind: r.expect for r in bad}, "max_bytes": args.max_bytes, "max_pixels": args.max_pixels,
        "max_queue": max(args.levels), "warm_up": {"requests": len(warm), "seconds": round(warm_s, 2)},
        "levels": levels,
        "server": {"alive_at_end": alive, "crashes": 0 if alive else 1, "health_at_end": health,
                   "tracebacks_in_log": server_log.count("Traceback"),
                   "internal_errors_in_log": server_log.count("internal error")},
        "rss_mb": {"after_warm_up": round(rss_warm or 0, 1), "max_after_warm_up": max(after) if after else None,
                   "final": after[-1] if after else None, "samples": sampler.samples},
        "seconds": round(time.monotonic() - start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}")
    if not args.no_docs:
        write_serving_md.main(["--json", str(args.out)])
    return 0 if alive and all(lv["failed_good"] == 0 for lv in levels) else 1


if __name__ == "__main__":
    sys.exit(main())
