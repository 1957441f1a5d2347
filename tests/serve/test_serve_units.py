"""The pieces of fcnseg.serve without a server: upload decoding, query options, the bounded worker."""
from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
from support.serving import bad_uploads, image_bytes, png_bomb

pytest.importorskip("starlette", reason="the [serve] extra is not installed")

from fcnseg.serve.jobs import Options, _stems, parse_options  # noqa: E402
from fcnseg.serve.uploads import Problem, Upload, decode  # noqa: E402
from fcnseg.serve.worker import Busy, Worker  # noqa: E402


def test_decode_reads_an_upload_as_the_image_reader_does():
    rgb = decode(Upload("a.png", image_bytes(40, 56)), max_pixels=10_000)
    assert rgb.shape == (40, 56, 3) and rgb.dtype == np.uint8


@pytest.mark.parametrize("data, status, words", [
    (b"", 400, "empty file"),
    (image_bytes(40, 56, "GIF")[:-40], 400, "cannot decode"),
    (b"plain text", 415, "not an image"),
    (image_bytes(40, 56, "JPEG")[:200], 400, "cannot decode"),
    (png_bomb(), 413, "100000x100000"),
    (image_bytes(120, 100), 413, "over --max-pixels 10000"),
])
def test_decode_refusals_name_the_upload(data, status, words):
    with pytest.raises(Problem) as e:
        decode(Upload("up.png", data), max_pixels=10_000)
    assert e.value.status == status and str(e.value).startswith("up.png: ") and words in str(e.value)


def test_the_bomb_is_refused_before_decoding(monkeypatch):
    from PIL import ImageFile

    def load(self):
        raise AssertionError("decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    with pytest.raises(Problem) as e:
        decode(Upload("bomb.png", png_bomb()), max_pixels=4096 * 4096)
    assert e.value.status == 413


def test_the_bad_upload_corpus_covers_every_refusal():
    assert {s for _, _, s in bad_uploads(10_000).values()} == {400, 413, 415}


def test_options():
    assert parse_options({}, ["out"]) == Options("png", "out", False, 0.5)
    assert parse_options({"format": "JSON", "labels": "true", "head": "geo", "alpha": "0"}, ["sem", "geo"]) == \
        Options("json", "geo", True, 0.0)
    for bad, words in [({"format": "jpg"}, "format must be one of png, overlay, json"),
                       ({"head": "x"}, "head must be one of out"), ({"labels": "2"}, "labels must be 1 or 0"),
                       ({"alpha": "nan"}, "alpha must be"), ({"alpha": "1.5"}, "alpha must be"),
                       ({"formt": "png"}, "unknown parameter 'formt'")]:
        with pytest.raises(Problem, match=words) as e:
            parse_options(bad, ["out"])
        assert e.value.status == 400


def test_zip_names_are_unique():
    ups = [Upload(n, b"") for n in ("a.png", "a.jpg", "b.png", "a.png")]
    assert _stems(ups) == ["a", "a-1", "b", "a-2"]


def test_the_worker_admits_at_most_max_queue_and_frees_a_place_when_the_job_ends():
    worker = Worker(2)
    gate, started = threading.Event(), threading.Event()

    def job():
        started.set()
        assert gate.wait(10)
        return 7

    async def scenario():
        t1 = worker.admit()
        t2 = worker.admit()
        with pytest.raises(Busy, match="max-queue 2"):
            worker.admit()
        t2.release()                       # a request refused before its job (e.g. a bad body)
        assert worker.admitted == 1
        running = asyncio.ensure_future(worker.run(t1, job))
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
        t1.release()                       # the request gave up; its job still runs and keeps its place
        running.cancel()
        assert worker.admitted == 1
        gate.set()
        for _ in range(200):
            if worker.admitted == 0:
                break
            await asyncio.sleep(0.01)
        assert worker.admitted == 0
        t3 = worker.admit()
        assert await worker.run(t3, lambda: 3) == 3
        t3.release()
        assert worker.admitted == 0

    asyncio.run(scenario())
    worker.close()


@pytest.mark.parametrize("alignment", ["caffe", "same"])
def test_the_default_engine_serves_every_size_without_rebuilding(alignment, tmp_path, monkeypatch):
    """A Caffe-aligned VGG net is served trimmed in PyTorch (no export at all); another net from one
    dynamic-size ONNX export made at start-up. Neither exports again for a new image size."""
    from support import nets

    import fcnseg.infer.engines as engines
    from fcnseg.models.checkpoint import save_checkpoint
    from fcnseg.serve.service import load_service

    if alignment == "same" and not engines.ort_available():
        pytest.skip("onnxruntime not installed")
    monkeypatch.setenv("FCNSEG_CACHE", str(tmp_path / "cache"))
    exports = []
    real = engines.export_onnx
    monkeypatch.setattr(engines, "export_onnx", lambda *a, **kw: exports.append(1) or real(*a, **kw))
    ckpt = save_checkpoint(tmp_path / "c.pt", nets.tiny_fcn(alignment=alignment, classes=11))
    service = load_service(ckpt)
    assert service.engine.name == ("torch-fp32-cl-trim" if alignment == "caffe" else "ort-fp32@same")
    assert len(exports) == (alignment == "same")
    for h, w in [(40, 56), (33, 71), (64, 64), (40, 56)]:
        rgb = np.random.default_rng(h).integers(0, 256, (h, w, 3), dtype=np.uint8)
        assert service.labels(rgb, "out").shape == (h, w)
    assert len(exports) == (alignment == "same")
