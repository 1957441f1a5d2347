"""Two gloo processes (torch.multiprocessing.spawn) against one process: same global batch and seed
give the same weights up to summation order; resuming a 1-process checkpoint on 2 processes continues
the same run; all_reduce_sum of per-rank confusion matrices equals the 1-process matrix exactly."""
import pytest
import torch
import torch.multiprocessing as mp
from support.datasets import make_camvid
from support.processes import free_port, torchrun_env

from fcnseg.config import load_config
from fcnseg.distributed import all_reduce_sum
from fcnseg.models.checkpoint import load_checkpoint
from fcnseg.train.loop import train

pytestmark = pytest.mark.slow

K = 3
# Global batch 4 (2 per rank), random flip/crop/patch sampling (drawn per item, so identical for any
# world size); dropout off: its masks are drawn per rank and cannot match a 1-process run.
COMMON = ["data.dataset=camvid", "model.name=fcn8s", "model.width=0.0625", "model.fc_channels=64",
          "model.alignment=same", "model.dropout=0", "train.progress=false", "train.eval_every=0",
          "data.val_split=null", "data.batch_size=4", "train.lr=1e-3", "train.momentum=0.9", "data.flip=true",
          "data.crop=24", "train.patch_p=0.7", "train.checkpoint_every=100", "train.log_every=1"]
# Reduction order differs (per-rank gradient sums, then all-reduce) so weights agree to float32
# rounding, not bit for bit.
TOL = 1e-5


def confusion(labels, preds, k):
    return torch.bincount(labels.flatten() * k + preds.flatten(), minlength=k * k).reshape(k, k)


def cm_data():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 5, (10, 6, 7), generator=g), torch.randint(0, 5, (10, 6, 7), generator=g)


def _worker(rank, world, port, root, out):
    torchrun_env(rank, world, port)
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo")
    try:
        base = [*COMMON, f"data.root={root}"]
        res = train(load_config(None, [*base, f"out={out}/ddp", f"train.iterations={K}"]))
        assert res["world_size"] == world
        train(load_config(None, [*base, f"out={out}/resume", f"train.iterations={2 * K}", "train.resume=auto"]))
        labels, preds = cm_data()
        cm = all_reduce_sum(confusion(labels[rank::world], preds[rank::world], 5))
        if rank == 0:
            torch.save(cm, f"{out}/cm.pt")
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


def max_diff(a, b):
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def test_two_processes_match_one(tmp_path):
    root = make_camvid(tmp_path / "camvid")
    base = [*COMMON, f"data.root={root}"]
    one_k = train(load_config(None, [*base, f"out={tmp_path}/resume", f"train.iterations={K}"]))
    assert one_k["world_size"] == 1
    w_one_k = load_checkpoint(tmp_path / "resume" / "last.pt")["model"]
    train(load_config(None, [*base, f"out={tmp_path}/one2k", f"train.iterations={2 * K}"]))
    w_one_2k = load_checkpoint(tmp_path / "one2k" / "last.pt")["model"]

    mp.spawn(_worker, args=(2, free_port(), str(root), str(tmp_path)), nprocs=2, join=True)

    ddp = load_checkpoint(tmp_path / "ddp" / "last.pt")
    assert ddp["world_size"] == 2 and ddp["iteration"] == K
    assert max_diff(ddp["model"], w_one_k) < TOL
    resumed = load_checkpoint(tmp_path / "resume" / "last.pt")
    assert resumed["iteration"] == 2 * K and resumed["world_size"] == 2
    assert max_diff(resumed["model"], w_one_2k) < TOL
    # and the run did move: K more steps changed the weights by far more than the tolerance
    assert max_diff(w_one_2k, w_one_k) > 100 * TOL

    labels, preds = cm_data()
    assert torch.equal(torch.load(tmp_path / "cm.pt"), confusion(labels, preds, 5))
