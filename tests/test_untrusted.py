"""Untrusted files: no code path unpickles a user-given file; downloads are checked against SHA-256.

(a) a static scan of ``fcnseg/**/*.py`` for loaders that can run code (``torch.load`` without
``weights_only=True``, ``pickle``/``dill``/``joblib``/``marshal`` loads, ``np.load(allow_pickle=True)``,
``yaml.load``/``unsafe_load``, ``torch.jit.load``, ``eval``/``exec``) and for network fetches in a
module that does not verify a SHA-256; (b) malicious pickles (raw pickle, torch legacy, torch zip)
handed to every loader are refused and their payload never runs. The hed-vgg16 cache and source
tampering cases live in tests/models/weights/test_weights_hed.py (API) and tests/support/fault_corpus.py (CLI).
"""
from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest
import torch
from support.fault_corpus import _Evil

from fcnseg import create_model
from fcnseg.errors import FcnsegError
from fcnseg.models.checkpoint import load_checkpoint, model_from_checkpoint
from fcnseg.models.weights import load_weights
from fcnseg.train.model import init_from_checkpoint

PACKAGE = Path(__file__).resolve().parent.parent / "fcnseg"
FETCHERS = {"urlopen", "urlretrieve", "load_state_dict_from_url", "download_url_to_file", "hf_hub_download"}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def _kw(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return k.value.value if isinstance(k.value, ast.Constant) else "<expr>"
    return None


def unsafe_calls(source: str, filename: str = "<src>") -> list[str]:
    """Calls in ``source`` that may execute code from a file's contents, as ``file:line: call``."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        last = name.rsplit(".", 1)[-1]
        bad = False
        if name in ("torch.load", "torch.serialization.load"):
            bad = _kw(node, "weights_only") is not True
        elif last in ("load", "loads", "Unpickler") and name.split(".")[0] in ("pickle", "cPickle", "dill", "joblib",
                                                                              "marshal", "shelve", "cloudpickle"):
            bad = True
        elif name in ("np.load", "numpy.load"):
            bad = _kw(node, "allow_pickle") not in (None, False)
        elif name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all", "torch.jit.load",
                      "torch.package.PackageImporter", "eval", "exec"):
            bad = True
        if bad:
            found.append(f"{filename}:{node.lineno}: {name}(...)")
    return found


def _sources() -> list[Path]:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 40, files  # the scan really covers the package
    return files


def test_scanner_flags_what_it_should():
    bad = """
import pickle, torch, numpy as np, yaml
torch.load(p)
torch.load(p, weights_only=False)
pickle.load(f)
np.load(p, allow_pickle=True)
yaml.load(s)
eval(text)
"""
    assert len(unsafe_calls(bad)) == 6
    good = ("import torch, numpy as np, yaml\ntorch.load(p, weights_only=True)\nnp.load(p)\n"
            "yaml.safe_load(s)\nm.eval()\n")
    assert unsafe_calls(good) == []


def test_no_code_path_unpickles_a_file():
    found = [hit for f in _sources()
             for hit in unsafe_calls(f.read_text(encoding="utf-8"), str(f.relative_to(PACKAGE)))]
    assert found == [], "loaders that can run code from a file:\n" + "\n".join(found)
    loads = sum(f.read_text(encoding="utf-8").count("torch.load(") for f in _sources())
    assert loads >= 2  # checkpoint.py and weights/__init__.py load torch files: the scan saw them


def test_network_fetches_are_sha256_checked():
    """Any module that fetches something (urls, ``pip download``) also verifies a SHA-256 of it."""
    fetching = []
    for f in _sources():
        text = f.read_text(encoding="utf-8")
        names = {_dotted(n.func).rsplit(".", 1)[-1] for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Call)}
        if names & FETCHERS or '"pip", "download"' in text:
            fetching.append(f)
            assert "sha256" in text and "hashlib" in text, f"{f} downloads without a SHA-256 check"
    assert any(f.name == "hed.py" for f in fetching)  # the one downloader today


# --- malicious pickles ----------------------------------------------------------------------------
def _write_evil(path: Path, kind: str, marker: Path, obj=None) -> Path:
    payload = _Evil(marker)
    obj = obj(payload) if obj else {"format": "fcnseg-checkpoint-v1", "model": payload, "config": {}}
    if kind == "pickle":
        path.write_bytes(pickle.dumps(obj, protocol=2))
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=kind == "zip")
    return path


KINDS = ["pickle", "legacy", "zip"]


def test_payload_is_real(tmp_path):
    """Control: unpickled without protection, the payload does create its marker."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(_Evil(marker)))
    assert marker.read_text() == "pwned"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("loader", ["load_checkpoint", "model_from_checkpoint", "init_from_checkpoint",
                                    "load_weights", "load_weights-state-dict"])
def test_malicious_pickle_refused(tmp_path, kind, loader):
    marker = tmp_path / "ran"
    shape = (lambda p: {"backbone.stages.pool1.conv1_1.weight": p}) if loader.endswith("state-dict") else None
    path = _write_evil(tmp_path / f"evil-{kind}.pt", kind, marker, shape)
    model = create_model("fcn8s", 3, width=1 / 16, fc_channels=16)
    call = {"load_checkpoint": lambda: load_checkpoint(path),
            "model_from_checkpoint": lambda: model_from_checkpoint(path),
            "init_from_checkpoint": lambda: init_from_checkpoint(model, str(path)),
            "load_weights": lambda: load_weights(model, path),
            "load_weights-state-dict": lambda: load_weights(model, path)}[loader]
    with pytest.raises(FcnsegError) as err:
        call()
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg, msg
    assert not marker.exists(), "the payload ran"
    assert "refused to unpickle" in msg, msg


def test_safe_checkpoint_still_loads(tmp_path):
    """The guard is not 'refuse everything': a real checkpoint with plain extras loads."""
    from fcnseg.models.checkpoint import save_checkpoint

    path = save_checkpoint(tmp_path / "ok.pt", create_model("fcn8s", 3, width=1 / 16, fc_channels=16),
                           classes=["a", "b", "c"], palette=[[0, 0, 0], [1, 2, 3], [4, 5, 6]], step=7,
                           optimizer={"state": {}, "param_groups": [{"lr": 0.1}]})
    model, ckpt = model_from_checkpoint(path)
    assert ckpt["step"] == 7 and ckpt["classes"] == ["a", "b", "c"] and model.heads == {"out": 3}
