"""``torchrun -m fcnseg predict DIR`` on 2 gloo processes (torch.multiprocessing.spawn, as torchrun sets
them up): each predicts its share of the files, none twice, and together they write exactly the files,
byte for byte, that one process writes (name clashes, sub-folders and a video included)."""
import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image
from support.nets import tiny_fcn
from support.processes import free_port, torchrun_env
from support.video import write_clip

from fcnseg.cli.main import main
from fcnseg.models.checkpoint import save_checkpoint

pytestmark = pytest.mark.slow


def _inputs(root):
    rng = np.random.default_rng(0)
    (root / "sub").mkdir(parents=True)
    for i, name in enumerate(["a.png", "b.jpg", "same.png", "sub/same.png", "sub/c.png", "sub/d.png"]):
        Image.fromarray(rng.integers(0, 256, (24 + i, 32, 3), dtype=np.uint8)).save(root / name)
    (root / "sub" / "bad.png").write_bytes(b"not an image")
    write_clip(root / "sub" / "clip.mp4", n=4)
    return root


def _args(root, ckpt, out):
    return ["predict", str(root), str(root / "same.png"), "--checkpoint", str(ckpt), "--out", str(out),
            "--engine", "torch", "--frames", "--skip-bad", "--no-progress"]


def _threads() -> list[str]:
    """This process's thread names (Linux; empty elsewhere)."""
    tasks = Path("/proc/self/task")
    return sorted((t / "comm").read_text().strip() for t in tasks.iterdir()) if tasks.is_dir() else []


def _worker(rank, world, port, root, ckpt, out):
    torchrun_env(rank, world, port)
    torch.set_num_threads(1)
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        assert main(_args(root, ckpt, out)) == 0
    # the process group is really gone once predict returns: one kept alive (by a module that captured it)
    # is torn down at interpreter exit, where its gloo threads can abort the process
    (out.parent / f"stdout-{rank}.txt").write_text(text.getvalue())
    assert not [t for t in _threads() if "gloo" in t or "tcpstore" in t], _threads()


def _files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_two_processes_write_what_one_writes(tmp_path, capsys):
    root = _inputs(tmp_path / "in")
    ckpt = save_checkpoint(tmp_path / "c.pt", tiny_fcn(classes=5))
    assert main(_args(root, ckpt, tmp_path / "one")) == 0
    one = capsys.readouterr().out.splitlines()
    (tmp_path / "two").mkdir()
    mp.spawn(_worker, args=(2, free_port(), root, ckpt, tmp_path / "two" / "out"), nprocs=2, join=True)

    single, both = _files(tmp_path / "one"), _files(tmp_path / "two" / "out")
    assert sorted(both) == sorted(single) and both == single  # the same names, the same bytes
    assert "same-1_label.png" in single and "sub__clip_overlay.mp4" in single
    assert sum(name.startswith("sub__clip_frames/") for name in single) == 4

    lines = [(tmp_path / "two" / f"stdout-{r}.txt").read_text().splitlines() for r in range(2)]
    done = [{ln.split("  ")[0] for ln in rank_lines if "→" not in ln} for rank_lines in lines]
    assert done[0] and done[1] and not done[0] & done[1]        # both worked, nothing predicted twice
    assert done[0] | done[1] == {ln.split("  ")[0] for ln in one if "→" not in ln}
    assert len(done[0] | done[1]) == 7                           # 6 images (one given twice) + the video
    assert one[-1].startswith("7 image(s), 1 video(s) → ")       # the total over both, once, by rank 0:
    assert lines[0][-1].split(" → ")[0] == one[-1].split(" → ")[0] and not any("→" in ln for ln in lines[1])
