"""Released models by name (fcnseg.models.weights.hub): table, download, resume, checks, cache, hubconf.

A loopback HTTP server serves small hand-written files; no test touches the real network.
"""
import hashlib
import http.server
import io
import json
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from support.weights import TINY, tv_vgg16_state

from fcnseg.models import create_model
from fcnseg.models.preprocessing import TORCHVISION
from fcnseg.models.weights import WeightsError, hub
from fcnseg.models.weights.caffe import write_caffemodel

REPO = Path(__file__).resolve().parents[3]


class Files(http.server.BaseHTTPRequestHandler):
    """GET of ``server.files``, each with an ETag (its hash); honours ``Range: bytes=N-`` unless an
    ``If-Range`` names another ETag (then the whole file, 200, as RFC 9110 says). ``server.drop`` paths
    close mid-way once, after which ``server.swap`` replaces the file (it changed on the server);
    ``server.slow`` sends in small chunks with pauses, setting ``server.sending`` after the first."""

    def do_GET(self):
        srv = self.server
        srv.requests.append((self.path, self.headers.get("Range")))
        data = srv.files.get(self.path)
        if data is None:
            self.send_error(404, "Not Found")
            return
        etag = f'"{hashlib.sha256(data).hexdigest()[:16]}"'
        start = int(re.fullmatch(r"bytes=(\d+)-", self.headers["Range"]).group(1)) if self.headers["Range"] else 0
        if self.headers["If-Range"] not in (None, etag):
            start = 0
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        if srv.etags:
            self.send_header("ETag", etag)
        self.end_headers()
        if self.path in srv.drop:           # the connection breaks half-way, once
            srv.drop.discard(self.path)
            self.wfile.write(data[start:start + (len(data) - start) // 2])
            self.close_connection = True
            if self.path in srv.swap:
                srv.files[self.path] = srv.swap.pop(self.path)
            return
        step = 4096 if srv.slow else len(data)
        for i in range(start, len(data), step):
            self.wfile.write(data[i:i + step])
            if srv.slow:
                srv.sending.set()
                time.sleep(0.01)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Files)
    srv.daemon_threads = True
    srv.files, srv.requests, srv.drop, srv.swap = {}, [], set(), {}
    srv.etags, srv.slow, srv.sending = True, False, threading.Event()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def leftovers(folder: Path) -> list[Path]:
    """What a download left behind, bar the (empty, harmless) lock files."""
    return [p for p in folder.iterdir() if p.suffix != ".lock"]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FCNSEG_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def serve(monkeypatch, server, name: str, data: bytes, filename: str | None = None, **changes) -> str:
    """Put ``data`` on the server and point release ``name`` at it; returns the URL."""
    release = hub.RELEASES[name]
    path = "/" + (filename or release.filename)
    server.files[path] = data
    monkeypatch.setitem(hub.RELEASES, name, hub.with_url(release, server.url + path, **changes))
    return server.url + path


def release_blobs(model, layers: dict[str, str], seed=0) -> dict:
    """Blobs named as in a release (``layers``: Caffe name → our module), shaped like ``model``'s."""
    rng = np.random.default_rng(seed)
    modules = dict(model.named_modules())
    blobs = {}
    for caffe, ours in layers.items():
        blobs[caffe] = [rng.standard_normal(p.shape).astype(np.float32)
                        for _, p in modules[ours].named_parameters(recurse=False)]
    blobs["score"] = []   # blob-less layers (crops) as in the releases
    return blobs


VGG_TRUNK = {c: f"backbone.stages.pool{k}.{c}" for k, convs in
             enumerate((("conv1_1", "conv1_2"), ("conv2_1", "conv2_2"), ("conv3_1", "conv3_2", "conv3_3"),
                        ("conv4_1", "conv4_2", "conv4_3"), ("conv5_1", "conv5_2", "conv5_3")), start=1)
             for c in convs} | {"fc6": "backbone.stages.fc7.fc6", "fc7": "backbone.stages.fc7.fc7"}
# voc-fcn8s/net.py's layer names
VOC_FCN8S = VGG_TRUNK | {"score_fr": "score.out.fc7", "score_pool4": "score.out.pool4",
                         "score_pool3": "score.out.pool3", "upscore2": "upsample.out.0",
                         "upscore_pool4": "upsample.out.1", "upscore8": "upsample.out.2"}


def voc_fcn8s_file(seed=0) -> tuple[bytes, dict]:
    blobs = release_blobs(create_model("fcn8s", 21, **TINY), VOC_FCN8S, seed)
    return write_caffemodel(None, blobs), blobs


def assert_loaded(model, blobs: dict, layers: dict):
    modules = dict(model.named_modules())
    for caffe, ours in layers.items():
        for (_, p), b in zip(modules[ours].named_parameters(recurse=False), blobs[caffe]):
            assert torch.equal(p.detach(), torch.from_numpy(b)), caffe


# ---------------------------------------------------------------- the table

def test_table_lists_the_reference_releases():
    caffe = {n: r for n, r in hub.RELEASES.items() if r.kind == "caffe"}
    assert sorted(caffe) == sorted(
        [f"voc-fcn{s}" for s in ("32s", "16s", "8s", "8s-atonce")] + ["voc-fcn-alexnet"]
        + [f"siftflow-fcn{s}" for s in ("32s", "16s", "8s")]
        + [f"nyud-fcn32s-{m}" for m in ("color", "hha", "color-hha")]
        + [f"pascalcontext-fcn{s}" for s in ("32s", "16s", "8s")])
    assert all(r.url.startswith("http://dl.caffe.berkeleyvision.org/") for r in caffe.values())
    assert caffe["siftflow-fcn16s"].num_classes == {"semantic": 33, "geometric": 3}
    assert caffe["nyud-fcn32s-color-hha"].streams == {"color": 3, "hha": 3}
    assert caffe["pascalcontext-fcn8s"].num_classes == 60 and caffe["voc-fcn-alexnet"].backbone == "alexnet"
    assert caffe["voc-fcn8s-atonce"].model == "fcn8s-atonce"
    trunks = {r.backbone: r for r in hub.RELEASES.values() if r.model is None}
    assert sorted(trunks) == ["alexnet", "googlenet", "resnet101", "resnet50", "vgg16"]
    assert all(r.url.startswith("https://download.pytorch.org/models/") and r.hash_prefix for r in trunks.values())


def test_release_arguments_fill_in_and_refuse_contradictions():
    args = hub.release_arguments(hub.RELEASES["siftflow-fcn16s"], "fcn16s", None, None, None, {"width": 0.5})
    assert args == ("fcn16s", {"semantic": 33, "geometric": 3}, "vgg16", None, {"width": 0.5})
    fused = hub.release_arguments(hub.RELEASES["nyud-fcn32s-color-hha"], "fcn32s", 40, None, None, {})
    assert fused[1] == 40 and fused[3] == {"color": 3, "hha": 3}
    alex = hub.release_arguments(hub.RELEASES["imagenet-alexnet"], "fcn32s@alexnet", 21, None, None, {})
    assert alex[2] == "alexnet" and alex[4] == {"layout": "torchvision"}
    for kwargs, needle in ((dict(name="fcn16s"), "fcn8s"), (dict(num_classes=30), "21 classes"),
                           (dict(backbone="alexnet"), "backbone vgg16"), (dict(streams={"rgb": 3}), "single-stream")):
        with pytest.raises(ValueError, match=needle):
            create_model(kwargs.pop("name", "fcn8s"), weights="voc-fcn8s", **kwargs)
    with pytest.raises(ValueError, match="pass num_classes"):
        create_model("fcn32s", weights="imagenet")
    with pytest.raises(TypeError, match="num_classes: .*released model"):
        create_model("fcn32s")


# ---------------------------------------------------------------- download, cache, checks

def test_first_download_records_hash_and_later_loads_use_the_cache(server, monkeypatch, cache, capsys):
    data, blobs = voc_fcn8s_file()
    serve(monkeypatch, server, "voc-fcn8s", data)
    model = create_model("fcn8s", weights="voc-fcn8s", **TINY)
    assert_loaded(model, blobs, VOC_FCN8S)
    assert model.spec.num_classes == 21 and model.preprocessing == hub.VOC_MEAN
    assert model.spec.to_dict()["weights"] == "voc-fcn8s"
    err = capsys.readouterr().err
    digest = hashlib.sha256(data).hexdigest()
    assert digest in err and "first download" in err            # shown to the user
    assert "fcn8s-heavy-pascal.caffemodel" in err and "%|" in err  # the progress bar
    assert json.loads((cache / "releases.json").read_text())["voc-fcn8s"]["sha256"] == digest
    assert (cache / "voc-fcn8s.safetensors").is_file() and not leftovers(cache / "downloads")
    n = len(server.requests)
    again = create_model("fcn8s", weights="voc-fcn8s", **TINY)
    assert len(server.requests) == n                              # the server was not asked again
    assert_loaded(again, blobs, VOC_FCN8S)


def test_interrupted_download_resumes_with_range(server, monkeypatch):
    data, blobs = voc_fcn8s_file()
    url = serve(monkeypatch, server, "voc-fcn8s", data)
    server.drop.add(url[len(server.url):])
    model = create_model("fcn8s", weights="voc-fcn8s", **TINY)
    assert_loaded(model, blobs, VOC_FCN8S)
    (first, r1), (second, r2) = server.requests
    assert r1 is None and r2 == f"bytes={len(data) // 2}-"


def test_resume_after_the_file_changed_on_the_server_fetches_the_new_file_whole(server, monkeypatch, cache):
    """The part holds the old file's first half; If-Range with its ETag makes the server send the new file
    whole (200), which is what gets recorded and loaded, not old half + new half."""
    old, _ = voc_fcn8s_file(seed=0)
    new, blobs = voc_fcn8s_file(seed=1)
    assert len(old) == len(new) and old != new     # a splice would even have the right size
    url = serve(monkeypatch, server, "voc-fcn8s", old)
    path = url[len(server.url):]
    server.drop.add(path)
    server.swap[path] = new
    model = create_model("fcn8s", weights="voc-fcn8s", **TINY)
    assert_loaded(model, blobs, VOC_FCN8S)
    assert json.loads((cache / "releases.json").read_text())["voc-fcn8s"]["sha256"] == hashlib.sha256(new).hexdigest()
    (_, r1), (_, r2), *more = server.requests
    assert r1 is None and r2 == f"bytes={len(old) // 2}-" and not more   # it did try to resume, once
    assert not leftovers(cache / "downloads")


def test_a_part_left_by_an_earlier_run_is_resumed_only_if_unchanged(server, monkeypatch, cache):
    old, _ = voc_fcn8s_file(seed=0)
    new, blobs = voc_fcn8s_file(seed=1)
    url = serve(monkeypatch, server, "voc-fcn8s", old)
    part = cache / "downloads" / "fcn8s-heavy-pascal.caffemodel.part"
    server.drop.add(url[len(server.url):])
    with pytest.raises(OSError, match="kept for a resume"):
        hub.download(url, part.with_suffix(""), attempts=1, progress=False)   # interrupted: the part stays
    assert part.stat().st_size == len(old) // 2
    server.files[url[len(server.url):]] = new                                   # a new version is published
    model = create_model("fcn8s", weights="voc-fcn8s", **TINY)
    assert_loaded(model, blobs, VOC_FCN8S)
    assert server.requests[-1][1] == f"bytes={len(old) // 2}-"


def test_without_a_validator_a_part_is_not_resumed(server, monkeypatch, cache):
    """A server that sends neither ETag nor Last-Modified cannot say whether its file changed: start over."""
    server.etags = False
    data, blobs = voc_fcn8s_file()
    url = serve(monkeypatch, server, "voc-fcn8s", data)
    server.drop.add(url[len(server.url):])
    assert_loaded(create_model("fcn8s", weights="voc-fcn8s", **TINY), blobs, VOC_FCN8S)
    assert [r for _, r in server.requests] == [None, None]


def test_concurrent_fetches_of_one_release_give_one_correct_file(server, monkeypatch, cache):
    """Two threads fetch the same release at once: one downloads (slowly), the other waits on the lock and
    reuses the converted file; the server sees a single request and both load the right weights."""
    data, blobs = voc_fcn8s_file()
    serve(monkeypatch, server, "voc-fcn8s", data)
    server.slow = True
    results, errors = {}, []

    def get(who):
        try:
            results[who] = hub.fetch(hub.RELEASES["voc-fcn8s"], progress=False)
        except Exception as e:  # reported below
            errors.append(e)

    first = threading.Thread(target=get, args=("first",))
    first.start()
    assert server.sending.wait(30)                # the first download is under way
    second = threading.Thread(target=get, args=("second",))
    second.start()
    first.join(60)
    second.join(60)
    assert not errors, errors
    assert results["first"] == results["second"] == cache / "voc-fcn8s.safetensors"
    assert [r for _, r in server.requests] == [None]
    assert json.loads((cache / "releases.json").read_text())["voc-fcn8s"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert_loaded(create_model("fcn8s", weights="voc-fcn8s", **TINY), blobs, VOC_FCN8S)
    assert not leftovers(cache / "downloads")


def test_torchvision_trunk_checks_the_hash_prefix(server, monkeypatch, cache):
    buf = io.BytesIO()
    state = tv_vgg16_state()
    torch.save(state, buf)
    data = buf.getvalue()
    good = f"vgg16-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    serve(monkeypatch, server, "imagenet-vgg16", data, good)
    model = create_model("fcn32s", 5, weights="imagenet", **TINY)
    assert torch.equal(model.backbone.stages.pool1.conv1_1.weight, state["features.0.weight"])
    assert model.preprocessing == TORCHVISION
    url = serve(monkeypatch, server, "imagenet-vgg16", data, "vgg16-00000000.pth")
    (cache / "imagenet-vgg16.safetensors").unlink()
    with pytest.raises(hub.DownloadError) as e:
        create_model("fcn32s", 5, weights="imagenet", **TINY)
    msg = str(e.value)
    assert "\n" not in msg and url in msg and "expected prefix 00000000" in msg
    assert str(cache / "downloads" / "vgg16-00000000.pth") in msg
    assert not (cache / "downloads" / "vgg16-00000000.pth").exists()   # the bad file is removed


def test_wrong_size_or_changed_file_is_refused_and_removed(server, monkeypatch, cache):
    data, _ = voc_fcn8s_file()
    serve(monkeypatch, server, "voc-fcn8s", data, size=len(data) + 1)
    with pytest.raises(hub.DownloadError, match=f"size {len(data)} bytes, expected {len(data) + 1}"):
        create_model("fcn8s", weights="voc-fcn8s", **TINY)
    assert not leftovers(cache / "downloads")
    (cache / "releases.json").write_text(json.dumps({"voc-fcn8s": {"sha256": "ab" * 32}}))
    serve(monkeypatch, server, "voc-fcn8s", data, size=None)
    with pytest.raises(hub.DownloadError, match="recorded " + "ab" * 32):
        create_model("fcn8s", weights="voc-fcn8s", **TINY)
    assert not leftovers(cache / "downloads")


def test_dead_link_and_server_down_name_url_and_by_hand_path(server, monkeypatch, cache):
    url = hub.RELEASES["voc-fcn8s"].url
    monkeypatch.setitem(hub.RELEASES, "voc-fcn8s", hub.with_url(hub.RELEASES["voc-fcn8s"], server.url + "/gone"))
    by_hand = cache / "downloads" / "gone"
    with pytest.raises(hub.DownloadError) as e:
        create_model("fcn8s", weights="voc-fcn8s", **TINY)
    assert "\n" not in str(e.value) and f"{server.url}/gone (HTTP 404" in str(e.value) and str(by_hand) in str(e.value)
    dead = f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    with pytest.raises(hub.DownloadError, match=re.escape(f"cannot download {dead}/gone (")) as e:
        create_model("fcn8s", weights="voc-fcn8s", **TINY)
    assert str(by_hand) in str(e.value) and "\n" not in str(e.value)
    data, blobs = voc_fcn8s_file()                  # the file put by hand is used, offline
    by_hand.write_bytes(data)
    assert_loaded(create_model("fcn8s", weights="voc-fcn8s", **TINY), blobs, VOC_FCN8S)
    assert url != dead


def test_a_release_layer_without_a_place_is_an_error(server, monkeypatch):
    blobs = release_blobs(create_model("fcn8s", 21, **TINY), VOC_FCN8S)
    blobs["score_extra"] = [np.ones((21, 4, 1, 1), np.float32), np.ones(21, np.float32)]
    serve(monkeypatch, server, "voc-fcn8s", write_caffemodel(None, blobs))
    with pytest.raises(WeightsError, match="score_extra"):
        create_model("fcn8s", weights="voc-fcn8s", **TINY)


def test_siftflow_release_builds_two_heads_and_never_loads_silently(server, monkeypatch):
    """siftflow-fcn16s/net.py's names (score_fr_sem, upscore16_geo, …): every layer loads, or the load fails."""
    model = create_model("fcn16s", hub.SIFTFLOW_HEADS, **TINY)
    layers = dict(VGG_TRUNK)
    for short, head in (("sem", "semantic"), ("geo", "geometric")):
        layers |= {f"score_fr_{short}": f"score.{head}.fc7", f"score_pool4_{short}": f"score.{head}.pool4",
                   f"upscore2_{short}": f"upsample.{head}.0", f"upscore16_{short}": f"upsample.{head}.1"}
    blobs = release_blobs(model, layers)
    serve(monkeypatch, server, "siftflow-fcn16s", write_caffemodel(None, blobs))
    loaded = create_model("fcn16s", weights="siftflow-fcn16s", **TINY)
    assert set(loaded.heads) == {"semantic", "geometric"} and loaded.preprocessing == hub.SIFTFLOW
    assert_loaded(loaded, blobs, layers)


@pytest.mark.parametrize("name, classes, pre", [("nyud-fcn32s-hha", 40, hub.NYUD_HHA),
                                                 ("pascalcontext-fcn32s", 60, hub.CONTEXT)])
def test_single_stream_releases_carry_their_classes_and_preprocessing(server, monkeypatch, name, classes, pre):
    # no upscore blob (a fixed bilinear kernel, 60x60x64x64 here): keeps the file small; heads load when present
    layers = VGG_TRUNK | {"score_fr": "score.out.fc7"}
    blobs = release_blobs(create_model("fcn32s", classes, **TINY), layers)
    serve(monkeypatch, server, name, write_caffemodel(None, blobs))
    model = create_model("fcn32s", weights=name, **TINY)
    assert model.spec.num_classes == classes and model.preprocessing == pre
    assert_loaded(model, blobs, layers)


def test_nyud_late_fusion_release_builds_two_streams_and_loads_every_layer(server, monkeypatch):
    """nyud-fcn32s-color-hha/net.py's names: conv1_1color … score_frcolor, conv1_1hha … score_frhha, one upscore."""
    fused = create_model("fcn32s", 40, streams={"color": 3, "hha": 3}, **TINY)
    layers = {}
    for stream in ("color", "hha"):
        layers |= {c + stream: f"streams.{stream}.{m}" for c, m in VGG_TRUNK.items()}
        layers[f"score_fr{stream}"] = f"streams.{stream}.score.out.fc7"
    blobs = release_blobs(fused, layers)
    blobs["upscore"] = release_blobs(fused, {"upscore": "streams.color.upsample.out.0"})["upscore"]
    serve(monkeypatch, server, "nyud-fcn32s-color-hha", write_caffemodel(None, blobs))
    loaded = create_model("fcn32s", weights="nyud-fcn32s-color-hha", **TINY)
    assert set(loaded.streams) == {"color", "hha"} and loaded.spec.num_classes == 40
    assert loaded.preprocessing == hub.NYUD_COLOR_HHA
    assert loaded.streams["hha"].preprocessing == hub.NYUD_HHA
    assert_loaded(loaded, blobs, layers)


# ---------------------------------------------------------------- hubconf and CLI

def test_torch_hub_load_local(server, monkeypatch):
    m = torch.hub.load(str(REPO), "fcn8s", source="local", num_classes=5, **TINY)
    assert m.spec.num_classes == 5 and m.spec.to_dict()["name"] == "fcn8s"
    alex = torch.hub.load(str(REPO), "fcn_alexnet", source="local", num_classes=3, **TINY)
    assert alex.spec.to_dict()["backbone"] == "alexnet"
    data, blobs = voc_fcn8s_file()
    serve(monkeypatch, server, "voc-fcn8s", data)
    assert_loaded(torch.hub.load(str(REPO), "fcn8s", source="local", weights="voc-fcn8s", **TINY), blobs, VOC_FCN8S)


def test_cli_lists_releases(capsys):
    from fcnseg.cli.main import main
    assert main(["models", "--weights"]) == 0
    out = capsys.readouterr().out
    for name, release in hub.RELEASES.items():
        assert name in out and release.url in out


def test_safetensors_whose_header_length_starts_with_0x80_is_not_a_pickle(tmp_path):
    """The converted caches are safetensors; a header of 128 mod 256 bytes begins with pickle's 0x80."""
    from safetensors.torch import save

    from fcnseg.models.weights import detect_format, load_weights

    state = create_model("fcn32s", 3, **TINY).state_dict()
    data = next(d for pad in range(0, 256) if (d := save(state, metadata={"pad": "x" * pad}))[0] == 0x80)
    path = tmp_path / "w.safetensors"
    path.write_bytes(data)
    assert detect_format(path) == "safetensors"
    load_weights(create_model("fcn32s", 3, **TINY), path)


def test_docs_table_lists_every_release():
    text = (REPO / "docs" / "WEIGHTS.md").read_text()
    for name, release in hub.RELEASES.items():
        assert f"| `{name}` |" in text and f"<{release.url}>" in text, name
