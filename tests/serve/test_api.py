"""``fcnseg serve`` against a live server on 127.0.0.1: the endpoints, the formats, every bad input (each
followed by a good request that must still be served), the bounded queue, ONNX files and two-head nets."""
from __future__ import annotations

import base64
import io
import threading
import zipfile

import numpy as np
import pytest
from PIL import Image
from support.serving import LIVE_MAX_PIXELS, bad_uploads, call, image_bytes, multipart, serve_thread

from fcnseg.infer.engines import Engine, TorchEngine

pytest.importorskip("starlette", reason="the [serve] extra is not installed")

GOOD = image_bytes(40, 56)


def _still_serving(url: str) -> None:
    """The server answers a good request right after a bad one."""
    r = call(url + "/predict?format=json", "POST", GOOD, {"Content-Type": "image/png"})
    assert r.status == 200, r.body
    assert r.json()["images"][0]["width"] == 56


def test_health_and_classes(live_server, serve_checkpoint):
    h = call(live_server + "/health").json()
    assert h["status"] == "ok" and h["device"] == "cpu" and h["engine"] == "torch-fp32-cl-trim"  # the CPU default
    assert h["model"] == {"file": serve_checkpoint.name, "name": "fcn8s", "backbone": "vgg16"}
    assert h["heads"] == {"out": 11} and h["uptime_s"] > 0 and h["queue"]["max"] == 16
    served = h["requests"]["served"]
    _still_serving(live_server)
    assert call(live_server + "/health").json()["requests"]["served"] == served + 1
    c = call(live_server + "/classes").json()
    assert c["heads"] == ["out"] and c["default_head"] == "out"
    assert c["classes"]["out"][3] == {"index": 3, "name": "Road", "color": [128, 64, 128]}


def test_predict_png_is_the_palette_label_map(live_server):
    r = call(live_server + "/predict", "POST", GOOD, {"Content-Type": "image/png"})
    assert r.status == 200 and r.headers["content-type"] == "image/png"
    assert r.headers["x-fcnseg-engine"] == "torch-fp32-cl-trim" and float(r.headers["x-fcnseg-total-seconds"]) > 0
    im = Image.open(io.BytesIO(r.body))
    assert im.mode == "P" and im.size == (56, 40)
    labels = np.asarray(im)
    assert labels.max() < 11
    assert im.getpalette()[3 * 3:3 * 4] == [128, 64, 128]  # class 3 (Road) in CamVid's colour
    j = call(live_server + "/predict?format=json", "POST", GOOD, {"Content-Type": "image/png"}).json()
    shares = {c["index"]: c["fraction"] for c in j["images"][0]["classes"]}
    counts = np.bincount(labels.ravel(), minlength=11) / labels.size
    assert shares == {i: pytest.approx(counts[i], abs=1e-6) for i in np.flatnonzero(counts)}


def test_predict_json_overlay_and_several_images(live_server):
    body, headers = multipart([("a.png", GOOD), ("b.jpg", image_bytes(40, 56, "JPEG", seed=1))])
    j = call(live_server + "/predict?format=json&labels=1", "POST", body, headers).json()
    assert [i["name"] for i in j["images"]] == ["a.png", "b.jpg"]
    assert j["engine"] == "torch-fp32-cl-trim" and j["head"] == "out" and j["timing"]["total_s"] > 0
    first = j["images"][0]
    assert (first["width"], first["height"]) == (56, 40) and first["timing"]["model_s"] > 0
    assert sum(c["fraction"] for c in first["classes"]) == pytest.approx(1, abs=1e-4)
    assert {"index", "name", "fraction"} == set(first["classes"][0])
    png = Image.open(io.BytesIO(base64.b64decode(first["labels_png"])))
    assert png.mode == "P" and png.size == (56, 40)
    z = call(live_server + "/predict?format=overlay&alpha=0.7", "POST", body, headers)
    assert z.status == 200 and z.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(z.body)) as f:
        assert f.namelist() == ["a_overlay.png", "b_overlay.png"]
        assert Image.open(io.BytesIO(f.read("a_overlay.png"))).mode == "RGB"
    one = call(live_server + "/predict?format=overlay", "POST", GOOD)  # no Content-Type: the raw body
    assert one.status == 200 and Image.open(io.BytesIO(one.body)).size == (56, 40)


@pytest.mark.parametrize("case", sorted(bad_uploads(LIVE_MAX_PIXELS)))
def test_a_bad_upload_is_a_json_error_and_the_next_request_is_served(live_server, case):
    body, headers, status = bad_uploads(LIVE_MAX_PIXELS)[case]
    r = call(live_server + "/predict?format=json", "POST", body, headers)
    assert r.status == status, r.body
    assert r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert error and "\n" not in error and "Traceback" not in error
    _still_serving(live_server)


@pytest.mark.parametrize("method, path, status", [
    ("GET", "/predict", 405), ("PUT", "/predict", 405), ("DELETE", "/", 405), ("POST", "/classes", 405),
    ("POST", "/health", 405), ("GET", "/nowhere", 404), ("POST", "/predict?format=gif", 400),
    ("POST", "/predict?head=geometric", 400), ("POST", "/predict?alpha=2", 400), ("POST", "/predict?labels=maybe", 400),
    ("POST", "/predict?fromat=json", 400),
])
def test_wrong_methods_routes_and_parameters(live_server, method, path, status):
    r = call(live_server + path, method, GOOD if method in ("POST", "PUT") else None)
    assert r.status == status and "\n" not in r.json()["error"]
    if status == 405:
        assert r.headers["allow"]
    _still_serving(live_server)


def _unfinished(url: str, headers: dict[str, str], body: bytes, timeout: float = 15):
    """Send headers and part of a body, never the rest; the status and error of the answer that comes."""
    import http.client
    import json

    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.putrequest("POST", "/predict")
        for k, v in headers.items():
            conn.putheader(k, v)
        conn.endheaders()
        conn.send(body)
        resp = conn.getresponse()  # a server that buffers the whole body first never answers here
        return resp.status, json.loads(resp.read())["error"]
    finally:
        conn.close()


def test_bodies_over_max_bytes_are_refused_while_they_stream_in(serve_checkpoint, tmp_path):
    """413 from Content-Length before reading, and from the bytes counted as a chunked body streams in:
    the body is never finished, so only a server that checks as it reads can answer."""
    from support.serving import serve_subprocess

    with serve_subprocess(serve_checkpoint, "--engine", "torch", "--max-bytes", "5000", "--read-timeout", "60",
                          log=tmp_path / "s.log") as (url, _):
        big = image_bytes(60, 60, seed=3, block=1)
        assert len(big) > 5000
        r = call(url + "/predict", "POST", big, {"Content-Type": "image/png"})
        assert r.status == 413 and "--max-bytes 5000" in r.json()["error"]
        status, error = _unfinished(url, {"Content-Type": "image/png", "Content-Length": str(10**9)}, b"\0" * 100)
        assert status == 413 and "1000000000 bytes" in error
        chunks = b"".join(b"800\r\n" + b"\0" * 0x800 + b"\r\n" for _ in range(4))  # 8 kB, no closing chunk
        status, error = _unfinished(url, {"Content-Type": "image/png", "Transfer-Encoding": "chunked"}, chunks)
        assert status == 413 and "over --max-bytes 5000" in error
        assert call(url + "/health").json()["engine"] == "torch-fp32"
        _still_serving(url)


def test_a_body_sent_too_slowly_is_408(serve_checkpoint, tmp_path):
    from support.serving import serve_subprocess

    with serve_subprocess(serve_checkpoint, "--engine", "torch", "--read-timeout", "1", log=tmp_path / "s.log") as (
            url, _):
        status, error = _unfinished(url, {"Content-Type": "image/png", "Content-Length": "1000"}, b"\0" * 10)
        assert status == 408 and "within 1 s" in error
        _still_serving(url)


class _Gate(Engine):
    """An engine that waits for ``open`` before answering (to hold the model while the queue fills)."""

    def __init__(self, engine: Engine) -> None:
        self.engine, self.open, self.entered = engine, threading.Event(), threading.Event()
        self.heads, self.spec, self.preprocessing = engine.heads, engine.spec, engine.preprocessing
        self.output_stride, self.input_padding = engine.output_stride, engine.input_padding

    def predict_scores(self, images):
        self.entered.set()
        assert self.open.wait(60)
        return self.engine.predict_scores(images)


def test_past_max_queue_is_503_and_the_queue_drains(tiny_fcn):
    from fcnseg.serve.app import create_app
    from fcnseg.serve.limits import Limits
    from fcnseg.serve.service import ClassTable, Service

    gate = _Gate(TorchEngine(tiny_fcn(classes=3)))
    table = ClassTable(["a", "b", "c"], np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0]], np.uint8))
    service = Service(gate, {"out": table}, model={"file": "gate"}, device="cpu")
    app = create_app(service, Limits(max_queue=2))
    with serve_thread(app) as url:
        gate.open.set()
        _still_serving(url)  # warm
        gate.open.clear()
        gate.entered.clear()
        results: list[int] = []
        threads = [threading.Thread(target=lambda: results.append(
            call(url + "/predict", "POST", GOOD, {"Content-Type": "image/png"}).status)) for _ in range(2)]
        threads[0].start()
        assert gate.entered.wait(30)  # the first one is on the model
        threads[1].start()
        for _ in range(300):  # the second one is admitted and waits
            if call(url + "/health").json()["queue"]["admitted"] == 2:
                break
            threading.Event().wait(0.05)
        r = call(url + "/predict", "POST", GOOD, {"Content-Type": "image/png"})
        assert r.status == 503 and "max-queue 2" in r.json()["error"] and r.headers["retry-after"] == "1"
        gate.open.set()
        for t in threads:
            t.join(60)
        assert results == [200, 200]
        assert call(url + "/health").json()["queue"]["admitted"] == 0
        _still_serving(url)


def test_an_onnx_export_is_served_with_the_checkpoints_names(serve_checkpoint, tmp_path):
    from fcnseg.cli.main import main
    from fcnseg.serve.app import create_app
    from fcnseg.serve.service import load_service

    onnx = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(serve_checkpoint), "--output", str(onnx), "--no-verify"]) == 0
    service = load_service(onnx)
    assert service.engine.name == "ort-fp32" and service.tables["out"].names[3] == "Road"
    assert service.model == {"file": "m.onnx", "name": "fcn8s", "backbone": "vgg16"}
    with serve_thread(create_app(service)) as url:
        assert call(url + "/classes").json()["classes"]["out"][0] == {"index": 0, "name": "Sky",
                                                                     "color": [128, 128, 128]}
        _still_serving(url)
    with pytest.raises(Exception, match="ONNX export"):
        load_service(onnx, engine="torch")


def test_a_two_head_net_serves_each_head(tmp_path):
    """SIFT Flow-like nets: ``head=`` picks the head (default the first); /classes lists both."""
    import torch

    from fcnseg.models import create_model
    from fcnseg.models.checkpoint import save_checkpoint
    from fcnseg.serve.app import create_app
    from fcnseg.serve.service import load_service

    torch.manual_seed(0)
    model = create_model("fcn16s", {"semantic": 5, "geometric": 3}, width=1 / 16, fc_channels=16)
    path = save_checkpoint(tmp_path / "two.pt", model, classes=["s0", "s1", "s2", "s3", "s4"])
    service = load_service(path, engine="torch")
    assert service.heads == ["semantic", "geometric"]
    assert service.tables["semantic"].names[4] == "s4" and service.tables["geometric"].names == [
        "class 0", "class 1", "class 2"]  # the names recorded are the semantic head's
    with serve_thread(create_app(service)) as url:
        c = call(url + "/classes").json()
        assert c["heads"] == ["semantic", "geometric"] and c["default_head"] == "semantic"
        assert len(c["classes"]["geometric"]) == 3
        rgb = np.asarray(Image.open(io.BytesIO(GOOD)).convert("RGB"))
        for head, k in (("semantic", 5), ("geometric", 3)):
            j = call(url + f"/predict?format=json&head={head}", "POST", GOOD).json()
            assert j["head"] == head and max(c["index"] for c in j["images"][0]["classes"]) < k
            png = call(url + f"/predict?head={head}", "POST", GOOD)
            want = service.labels(rgb, head)
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(png.body))), want)
        assert call(url + "/predict?format=json", "POST", GOOD).json()["head"] == "semantic"
        r = call(url + "/predict?head=out", "POST", GOOD)
        assert r.status == 400 and "semantic, geometric" in r.json()["error"]


def test_the_page_is_one_self_contained_file(live_server):
    r = call(live_server + "/")
    assert r.status == 200 and r.headers["content-type"].startswith("text/html")
    html = r.body.decode()
    for needle in ('id="drop"', 'type="file"', 'id="opacity"', 'type="range"', 'id="legend"', 'id="timing"'):
        assert needle in html
    assert "http://" not in html and "https://" not in html and "<link" not in html and " src=\"/" not in html


def test_more_files_than_max_images_is_refused(live_server):
    body, headers = multipart([(f"{i}.png", GOOD) for i in range(17)])
    r = call(live_server + "/predict?format=json", "POST", body, headers)
    assert r.status == 400 and "Too many files" in r.json()["error"]
    _still_serving(live_server)
