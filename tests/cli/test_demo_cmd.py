"""``fcnseg demo``: bad options refused before training; a signal during training stops it cleanly."""
import os
import signal

import pytest

from fcnseg.cli.main import main
from fcnseg.train import runlog

TINY = ["model.weights=null", "model.width=0.0625", "model.fc_channels=16", "data.max_items=2",
        "data.batch_size=1", "train.epochs=1", "train.progress=false", "train.cache_features=false"]


def _error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("fcnseg: error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("argv,names", [
    (["--predict", "-5"], ["--predict", "-5"]),
    (["data.val_split=null"], ["data.val_split"]),
    (["--out", ""], ["out", "non-empty"]),
])
def test_demo_refuses_bad_input_before_training(tmp_path, capsys, argv, names):
    argv = ["demo", *argv] if "--out" in argv else ["demo", "--out", str(tmp_path / "d"), *argv]
    assert main(argv + TINY) == 2
    line = _error_line(capsys.readouterr().err)
    assert all(n in line for n in names), line
    assert not (tmp_path / "d" / "last.pt").exists()


@pytest.mark.slow  # a real (1-step) demo training run: ~6 s on a busy 2-core machine
def test_sigterm_during_demo_training_stops_cleanly(tmp_path, capsys, monkeypatch):
    """A real SIGTERM right after the handlers go in: one line, exit 130, the checkpoint kept, no report."""
    enter = runlog.StopRequest.__enter__

    def enter_then_signal(self):
        result = enter(self)
        os.kill(os.getpid(), signal.SIGTERM)
        return result

    monkeypatch.setattr(runlog.StopRequest, "__enter__", enter_then_signal)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *TINY]) == 130
    line = _error_line(capsys.readouterr().err)
    assert "stopped" in line and str(out / "last.pt") in line
    assert (out / "last.pt").is_file() and not (out / "report.md").exists()
