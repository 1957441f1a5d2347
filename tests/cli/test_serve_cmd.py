"""``fcnseg serve``'s command line: its options, and one-line errors before anything listens."""
from __future__ import annotations

import pytest

from fcnseg.cli.main import main


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("fcnseg: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_help_lists_the_limits(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    for flag in ("--checkpoint", "--engine", "--device", "--host", "--port", "--max-queue", "--max-bytes",
                 "--max-pixels", "--max-images", "--read-timeout"):
        assert flag in out


@pytest.mark.parametrize("args, words, code", [
    (["--checkpoint", "nowhere.pt"], "checkpoint not found: nowhere.pt", 2),
    (["--checkpoint", "nowhere.onnx"], "nowhere.onnx", 2),
    (["--checkpoint", "c.pt", "--port", "70000"], "--port", 2),
    (["--checkpoint", "c.pt", "--max-queue", "0"], "--max-queue", 2),
    (["--checkpoint", "c.pt", "--engine", "ort"], "--engine", 2),
    ([], "--checkpoint", 2),
])
def test_bad_arguments_are_one_line(args, words, code, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["serve", *args]) == code
    assert words in _error(capsys)


def test_an_onnx_file_with_engine_torch_is_refused(serve_checkpoint, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    onnx = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(serve_checkpoint), "--output", str(onnx), "--no-verify"]) == 0
    capsys.readouterr()
    assert main(["serve", "--checkpoint", str(onnx), "--engine", "torch"]) == 2
    assert "is an ONNX export" in _error(capsys)
