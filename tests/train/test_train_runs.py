"""Run folders and what a run writes: disk-full checkpoints, the run lock, worker errors and Ctrl-C
with workers, write errors naming the path; plus the small input checks of issue 14 (int64 weights,
classes.txt with a BOM or duplicates, an all-void split)."""
from __future__ import annotations

import errno
import os
import signal

import pytest
import torch
import yaml

from fcnseg.cli.main import main
from fcnseg.data.fixtures import write_camvid
from fcnseg.errors import FcnsegError
from fcnseg.models.checkpoint import load_checkpoint


def _config(tmp_path, **train) -> str:
    root = write_camvid(tmp_path / "camvid", {"train": 2, "val": 2}, size=(16, 16))
    cfg = {"model": {"name": "fcn8s", "width": 0.0625, "fc_channels": 16, "alignment": "same"},
           "data": {"dataset": "camvid", "root": str(root), "val_split": None, "batch_size": 1},
           "train": {"iterations": 1, "progress": False, "log_every": 1, "eval_every": 0, "device": "cpu", **train},
           "out": str(tmp_path / "run")}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.mark.parametrize("failure", ["stream-writer", "enospc"])
def test_disk_full_while_saving_a_checkpoint_names_it_and_keeps_the_old_one(tmp_path, monkeypatch, capsys, failure):
    cfg = _config(tmp_path)
    assert main(["train", cfg]) == 0
    last = tmp_path / "run" / "last.pt"
    assert load_checkpoint(last)["iteration"] == 1

    def full_disk(obj, f, *a, **kw):
        f.write(b"PK\x03\x04 partial")
        if failure == "enospc":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(torch, "save", full_disk)
    capsys.readouterr()
    assert main(["train", cfg, "--resume", "auto", "train.iterations=2"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("fcnseg: error:")]
    assert err == [f"fcnseg: error: cannot write {last}: no space left on device"]
    monkeypatch.undo()
    assert load_checkpoint(last)["iteration"] == 1  # the old checkpoint, whole
    assert not list(last.parent.glob(".*.tmp"))


def test_run_lock_is_exclusive_and_released(tmp_path):
    from fcnseg.train.state import RunLock

    with RunLock(tmp_path / "run") as held:
        assert held.path.read_text().strip() == str(os.getpid())
        with pytest.raises(FcnsegError, match=f"in use by another run \\(pid {os.getpid()}"):
            RunLock(tmp_path / "run").__enter__()
    with RunLock(tmp_path / "run"):  # released: the next run takes it
        pass


def test_a_run_over_a_finished_run_is_refused_before_any_work(tmp_path):
    from fcnseg.config import load_config
    from fcnseg.train.loop import train

    cfg = load_config(_config(tmp_path))
    train(cfg)
    before = (tmp_path / "run" / "last.pt").read_bytes()
    with pytest.raises(FcnsegError, match="holds a run .*--resume auto.*--overwrite"):
        train(cfg)
    assert (tmp_path / "run" / "last.pt").read_bytes() == before
    assert train(cfg, overwrite=True)["iterations"] == 1


def test_sigint_notice_comes_from_the_main_process_only(capfd):
    """A forked DataLoader worker inherits the handler; it must neither print nor set the flag."""
    from fcnseg.train.data import worker_init as _worker_init
    from fcnseg.train.runlog import StopRequest

    with StopRequest() as stop:
        pid = os.fork()
        if pid == 0:  # the child: a worker before and after its init
            signal.raise_signal(signal.SIGINT)
            code = 1 if stop.requested else 0
            _worker_init(0)
            code |= 2 if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN else 0
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert "received" not in capfd.readouterr().err
        signal.raise_signal(signal.SIGINT)
        assert stop.requested
    assert capfd.readouterr().err.count("SIGINT received") == 1


def test_worker_errors_keep_their_own_message():
    from fcnseg.data.io import DatasetError
    from fcnseg.train.data import unwrap_worker_error

    class Broken(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            raise DatasetError("camvid: cannot read label /data/x.png: image file is truncated")

    loader = torch.utils.data.DataLoader(Broken(), num_workers=1)
    with pytest.raises(DatasetError) as e:
        next(iter(loader))
    assert str(e.value).startswith("Caught DatasetError")  # what torch does
    clean = unwrap_worker_error(e.value)
    assert type(clean) is DatasetError
    assert str(clean) == "camvid: cannot read label /data/x.png: image file is truncated"
    plain = DatasetError("not from a worker")
    assert unwrap_worker_error(plain) is plain


def test_evaluate_reports_a_worker_error_with_its_own_message():
    from fcnseg import create_model
    from fcnseg.data.io import DatasetError
    from fcnseg.evaluate.scoring import evaluate

    class Broken(torch.utils.data.Dataset):
        def __len__(self):
            return 1

        def __getitem__(self, i):
            raise DatasetError("camvid: cannot read label /data/y.png: image file is truncated")

    model = create_model("fcn8s", 3, width=1 / 16, fc_channels=16, alignment="same")
    with pytest.raises(DatasetError) as e:
        evaluate(model, Broken(), workers=1, progress=False)
    assert str(e.value) == "camvid: cannot read label /data/y.png: image file is truncated"


def test_log_write_errors_name_the_file(tmp_path):
    from fcnseg.atomic import WriteError
    from fcnseg.train.runlog import CsvLog

    log = CsvLog(tmp_path / "log.csv")
    log.path.unlink()
    log.path.mkdir()  # the folder now holds a directory where the log was
    with pytest.raises(WriteError, match=f"cannot write {log.path}: is a directory"):
        log.write({"iter": 1})


def test_all_void_split_warns_that_it_has_no_labelled_pixels():
    from fcnseg import create_model
    from fcnseg.evaluate.scoring import evaluate

    class Void(torch.utils.data.Dataset):
        name = "voidset"

        def __len__(self):
            return 2

        def __getitem__(self, i):
            return torch.zeros(3, 16, 16), torch.full((16, 16), 255, dtype=torch.int64)

    model = create_model("fcn8s", 3, width=1 / 16, fc_channels=16, alignment="same")
    with pytest.warns(UserWarning, match="voidset: no labelled pixels in 2 images"):
        metrics = evaluate(model, Void(), progress=False)
    assert metrics["mean_iu"] != metrics["mean_iu"]  # NaN: null in JSON


@pytest.mark.parametrize("dtype", [torch.int64, torch.complex64])
def test_non_floating_weights_file_is_refused_naming_the_tensor(tmp_path, dtype):
    from safetensors.torch import save_file

    from fcnseg import create_model
    from fcnseg.models.weights import load_weights
    from fcnseg.models.weights.common import WeightsError

    model = create_model("fcn8s", 3, width=1 / 16, fc_channels=16, alignment="same")
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    with pytest.raises(WeightsError, match=f"{path}: tensor .* has dtype {dtype}"):
        load_weights(model, path)


def test_classes_txt_with_a_bom_is_read_and_duplicates_are_refused(tmp_path):
    from fcnseg.data import build_dataset
    from fcnseg.data.fixtures import write_folder
    from fcnseg.data.io import DatasetError

    root = write_folder(tmp_path / "f", n=2, classes=["sky", "road"])
    (root / "classes.txt").write_bytes("\ufeffsky\nroad\n".encode())
    assert build_dataset("folder", root, "all").classes == ["sky", "road"]
    (root / "classes.txt").write_text("sky\nroad\nsky\n")
    with pytest.raises(DatasetError, match=f"{root / 'classes.txt'}: duplicate class name 'sky'"):
        build_dataset("folder", root, "all")
