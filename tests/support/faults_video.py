"""Fault-corpus cases of one area (videos given to predict); collected by :func:`fault_corpus.all_cases`."""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import av
import numpy as np

from support.fault_corpus import Case, Ctx, Plan, png_image_bytes
from support.video import write_clip


def _audio_only(path: Path) -> bytes:
    with av.open(str(path), "w") as out:
        s = out.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        out.mux(s.encode(frame))
        out.mux(s.encode())
    return path.read_bytes()


def _clip_bytes(path: Path) -> bytes:
    return write_clip(path.with_name("tmp-" + path.name), n=2).read_bytes()


def _bad_videos() -> dict[str, Callable[[Path], bytes]]:
    return {
        "text.mp4": lambda p: b"not a video\n",
        "empty.mp4": lambda p: b"",
        "png-named.mp4": lambda p: png_image_bytes(),
        "noise.mkv": lambda p: np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "header-only.mp4": lambda p: _clip_bytes(p)[:64],
        "no-index.mp4": lambda p: _clip_bytes(p)[:400],
        "audio-only.mp4": _audio_only,
    }


def cases() -> Iterator[Case]:
    for name, make in _bad_videos().items():
        def strict(ctx: Ctx, name=name, make=make) -> Plan:
            path = ctx.p("in", name)
            path.write_bytes(make(path))
            return Plan(["predict", str(path), "--checkpoint", str(ctx.shared.checkpoint()), "--out", ctx.out(),
                         "--engine", "torch"], [str(path)], cause=["cannot read video"])

        def skipping(ctx: Ctx, name=name, make=make) -> Plan:
            path = ctx.p("bad", name)
            path.write_bytes(make(path))
            good = write_clip(ctx.p("in", "good.mp4"), n=2, size=(16, 16))
            out = ctx.tmp / "out"

            def check() -> None:
                assert sorted(p.name for p in out.iterdir()) == ["good_frames", "good_overlay.mp4"], list(out.iterdir())
            return Plan(["predict", str(path), str(good), "--checkpoint", str(ctx.shared.checkpoint()), "--out",
                         str(out), "--skip-bad", "--engine", "torch", "--no-progress", "--frames"], [str(path)],
                        check=check)

        yield Case(f"predict-bad-video-{name}", "predict/bad-video", "error", strict)
        yield Case(f"predict-skip-video-{name}", "predict/skip-bad", "skipped", skipping)

    def fifo(ctx: Ctx) -> Plan:
        p = ctx.p("in", "pipe.mp4")
        os.mkfifo(p)
        return Plan(["predict", str(p), "--checkpoint", str(ctx.shared.checkpoint()), "--out", ctx.out()], [str(p)],
                    cause=["cannot read video", "not a regular file"])

    yield Case("predict-video-fifo", "predict/bad-video", "error", fifo)

