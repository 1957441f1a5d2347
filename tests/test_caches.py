"""The suite's cache isolation (tests/conftest.py): a default-engine predict exports into the session's
temporary engine cache, never into the user's ``~/.cache/fcnseg/engines``."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fcnseg
from fcnseg.cli.main import main
from fcnseg.models.checkpoint import save_checkpoint
from fcnseg.models.weights.hed import cache_dir


def _listing(folder: Path) -> dict[str, float]:
    return {p.name: p.stat().st_mtime for p in folder.glob("*")} if folder.is_dir() else {}


def test_every_cache_is_a_session_temporary(isolated_caches, real_home):
    assert Path.home() == isolated_caches["HOME"] and cache_dir() == isolated_caches["FCNSEG_CACHE"]
    for var, folder in isolated_caches.items():
        assert os.environ[var] == str(folder)
        if real_home is not None:
            assert real_home not in folder.parents


def test_default_engine_predict_writes_only_the_session_engine_cache(isolated_caches, real_home, tmp_path,
                                                                     monkeypatch):
    pytest.importorskip("onnxruntime")  # the ONNX Runtime engine is an optional extra
    from fcnseg.infer import engines as engine_choice

    monkeypatch.setattr(engine_choice, "ORT_PAYBACK_IMAGES", 1)  # one image pays for an export here
    user_engines = (real_home or tmp_path / "none") / ".cache" / "fcnseg" / "engines"
    before = _listing(user_engines)
    torch.manual_seed(0)
    model = fcnseg.create_model("fcn8s", 3, width=1 / 16, fc_channels=16, alignment="same")  # not trimmable: ONNX
    with torch.no_grad():
        for p in model.score.parameters():
            p.normal_(std=0.1)
    save_checkpoint(tmp_path / "c.pt", model)
    image = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (13, 17, 3), dtype=np.uint8)).save(image)
    engines = isolated_caches["FCNSEG_CACHE"] / "engines"
    had = set(_listing(engines))
    assert main(["predict", str(image), "--checkpoint", str(tmp_path / "c.pt"), "--out", str(tmp_path / "out"),
                 "--overlay", "none"]) == 0
    exported = {n for n in set(_listing(engines)) - had if n.endswith(".onnx")}
    assert exported, sorted(_listing(engines))
    after = _listing(user_engines)  # other programs may use the user's cache meanwhile: look at this export only
    assert {n: after.get(n) for n in exported} == {n: before.get(n) for n in exported}
