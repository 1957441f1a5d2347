"""One ``POST /predict`` on the model thread: decode each upload, label it, render the answer.

``format=png``: the label map as a palette PNG (pixel values are class indices, drawn in the dataset's
colours); ``overlay``: the colours blended over the image (PNG); ``json``: size, per-class shares,
engine and timing per image, and with ``labels=1`` the label PNG base64-encoded. Several images in
``png``/``overlay`` come back as a ZIP of ``<name>_label.png`` / ``<name>_overlay.png``.
"""
from __future__ import annotations

import base64
import io
import time
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from PIL import Image

from fcnseg.serve.service import Service
from fcnseg.serve.uploads import Problem, Upload, decode
from fcnseg.visualize import colorize, overlay

__all__ = ["FORMATS", "Options", "Answer", "parse_options", "predict_job"]

FORMATS = ("png", "overlay", "json")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")
_KNOWN = ("format", "head", "labels", "alpha")


@dataclass(frozen=True)
class Options:
    """What ``POST /predict`` was asked for (its query parameters, checked)."""

    format: str = "png"
    head: str = "out"
    labels: bool = False
    alpha: float = 0.5


def parse_options(query: Mapping[str, str], heads: list[str]) -> Options:
    """The query parameters → :class:`Options`; a bad one is a 400 naming it and what it takes."""
    unknown = sorted(set(query) - set(_KNOWN))
    if unknown:
        raise Problem(400, f"unknown parameter {unknown[0]!r} (known: {', '.join(_KNOWN)})")
    fmt = query.get("format", "png").lower()
    if fmt not in FORMATS:
        raise Problem(400, f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    head = query.get("head", heads[0])
    if head not in heads:
        raise Problem(400, f"head must be one of {', '.join(heads)}, got {head!r}")
    flag = query.get("labels", "0").lower()
    if flag not in _TRUE + _FALSE:
        raise Problem(400, f"labels must be 1 or 0, got {flag!r}")
    try:
        alpha = float(query.get("alpha", "0.5"))
    except ValueError:
        alpha = -1.0
    if not 0.0 <= alpha <= 1.0:
        raise Problem(400, f"alpha must be a number in [0, 1], got {query.get('alpha')!r}")
    return Options(fmt, head, flag in _TRUE, alpha)


@dataclass(frozen=True)
class Answer:
    """A rendered answer: JSON (``data``) or bytes of ``media_type``, with headers."""

    data: dict[str, Any] | None = None
    body: bytes = b""
    media_type: str = "application/json"
    headers: dict[str, str] | None = None


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def _stems(uploads: list[Upload]) -> list[str]:
    """Unique file stems for a ZIP: ``a``, ``a-1`` …"""
    used: set[str] = set()
    out = []
    for u in uploads:
        stem = PurePath(u.name).stem or "image"
        cand, n = stem, 1
        while cand in used:
            cand, n = f"{stem}-{n}", n + 1
        used.add(cand)
        out.append(cand)
    return out


def predict_job(service: Service, uploads: list[Upload], opts: Options, max_pixels: int, queued: float) -> Answer:
    """Run on the model thread: every upload decoded (a bad one refuses the request, naming it), labelled
    by head ``opts.head`` and rendered as ``opts.format`` asks. ``queued``: when the request was admitted
    (``time.perf_counter``), for the time it waited."""
    start = time.perf_counter()
    table = service.tables[opts.head]
    images, files = [], []
    for upload in uploads:
        t0 = time.perf_counter()
        rgb = decode(upload, max_pixels)
        t1 = time.perf_counter()
        label = service.labels(rgb, opts.head)
        t2 = time.perf_counter()
        info: dict[str, Any] = {"name": upload.name, "width": int(rgb.shape[1]), "height": int(rgb.shape[0]),
                                "classes": service.fractions(label, opts.head)}
        if opts.format == "json":
            if opts.labels:
                info["labels_png"] = base64.b64encode(_png(colorize(label, table.palette))).decode("ascii")
        elif opts.format == "png":
            files.append(_png(colorize(label, table.palette)))
        else:
            files.append(_png(overlay(rgb, label, table.palette, opts.alpha)))
        info["timing"] = {"decode_s": round(t1 - t0, 4), "model_s": round(t2 - t1, 4),
                          "encode_s": round(time.perf_counter() - t2, 4)}
        images.append(info)
    timing = {"queue_s": round(start - queued, 4), "work_s": round(time.perf_counter() - start, 4)}
    headers = {"X-Fcnseg-Engine": service.engine.name, "X-Fcnseg-Head": opts.head,
               "X-Fcnseg-Seconds": f"{timing['work_s']:.4f}"}
    if opts.format == "json":
        return Answer({"engine": service.engine.name, "device": service.device, "model": service.model,
                       "head": opts.head, "timing": timing, "images": images}, headers=headers)
    if len(files) == 1:
        return Answer(body=files[0], media_type="image/png", headers=headers)
    buf = io.BytesIO()
    suffix = "label" if opts.format == "png" else "overlay"
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for stem, data in zip(_stems(uploads), files):
            z.writestr(f"{stem}_{suffix}.png", data)
    return Answer(body=buf.getvalue(), media_type="application/zip",
                  headers={**headers, "Content-Disposition": f'attachment; filename="{suffix}s.zip"'})
