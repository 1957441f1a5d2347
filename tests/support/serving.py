"""Live servers for the serve tests (``fcnseg serve`` in a subprocess, or an app in a thread), a small HTTP
client (urllib, multipart by hand), and the bad uploads every test of robustness sends."""
from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
LIVE_MAX_PIXELS = 256 * 256  # the session server's --max-pixels



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


def call(url: str, method: str = "GET", body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 120) -> Reply:
    """One HTTP request; any status comes back as a :class:`Reply` (never an exception)."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return Reply(r.status, {k.lower(): v for k, v in r.headers.items()}, r.read())
    except urllib.error.HTTPError as e:
        return Reply(e.code, {k.lower(): v for k, v in e.headers.items()}, e.read())


def multipart(files: list[tuple[str, bytes]], field: str = "image", extra: dict[str, str] | None = None
              ) -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body of ``(filename, bytes)`` files (and text fields) and its headers."""
    boundary = uuid.uuid4().hex
    parts = []
    for k, v in (extra or {}).items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode())
    for name, data in files:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def image_bytes(h: int = 40, w: int = 56, fmt: str = "PNG", seed: int = 0, block: int = 8) -> bytes:
    """A blocky RGB picture (flat ``block``×``block`` squares; 1: noise) encoded as ``fmt``."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (-(-h // block), -(-w // block), 3), dtype=np.uint8)
    big = np.kron(small, np.ones((block, block, 1), np.uint8))[:h, :w]
    big = np.pad(big, ((0, h - big.shape[0]), (0, w - big.shape[1]), (0, 0)), mode="edge")
    buf = io.BytesIO()
    Image.fromarray(big).save(buf, format=fmt)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(side: int = 100_000) -> bytes:
    """A tiny PNG whose header declares side×side RGB pixels (30 GB decoded)."""
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + \
        _chunk(b"IEND", b"")


# name -> (body, extra headers, expected status): what a client may send that is not a usable image
def bad_uploads(max_pixels: int) -> dict[str, tuple[bytes, dict[str, str], int]]:
    jpeg = image_bytes(64, 80, "JPEG")
    side = int(max_pixels ** 0.5) + 8
    over = io.BytesIO()
    Image.new("L", (side, side)).save(over, format="PNG")
    return {
        "not-an-image": (b"hello, this is text\n" * 20, {"Content-Type": "image/png"}, 415),
        "disguised-html": (b"<html><body>not a png</body></html>", {"Content-Type": "image/png"}, 415),
        "truncated-jpeg": (jpeg[: len(jpeg) // 2], {"Content-Type": "image/jpeg"}, 400),
        "truncated-png": (image_bytes()[:60], {"Content-Type": "image/png"}, 400),
        "png-signature-only": (b"\x89PNG\r\n\x1a\n", {"Content-Type": "image/png"}, 415),
        "decompression-bomb": (png_bomb(), {"Content-Type": "image/png"}, 413),
        "over-max-pixels": (over.getvalue(), {"Content-Type": "image/png"}, 413),
        "empty-body": (b"", {"Content-Type": "image/png"}, 400),
        "json-body": (b'{"image": "x"}', {"Content-Type": "application/json"}, 415),
        "multipart-without-file": (*multipart([], extra={"note": "no file"}), 400),
        "multipart-broken": (b"--zz\r\nnonsense", {"Content-Type": "multipart/form-data; boundary=zz"}, 400),
        "multipart-empty-file": (*multipart([("empty.png", b"")]), 400),
    }


def wait_healthy(url: str, proc: subprocess.Popen | None = None, timeout: float = 180) -> dict:
    """Poll ``GET /health`` until it answers (or the process ends / time runs out: an AssertionError)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the server exited ({proc.returncode}): {proc.stderr.read() if proc.stderr else ''}")
        with contextlib.suppress(OSError):
            r = call(url + "/health", timeout=5)
            if r.status == 200:
                return r.json()
        time.sleep(0.2)
    raise AssertionError(f"no answer from {url}/health within {timeout} s")


@contextlib.contextmanager
def serve_subprocess(checkpoint: Path, *args: str, log: Path | None = None):
    """``fcnseg serve --checkpoint C`` on a free loopback port; yields (base URL, process)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    out = open(log, "w") if log else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, "-m", "fcnseg", "serve", "--checkpoint", str(checkpoint),
                             "--port", str(port), *args], stdout=out, stderr=subprocess.STDOUT if log else None,
                            env=env, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log:
            out.close()


@contextlib.contextmanager
def serve_thread(app):
    """An ASGI app under uvicorn in a thread of this process, on a free loopback port; yields its URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, timeout=60)
        yield url
    finally:
        server.should_exit = True
        thread.join(30)
