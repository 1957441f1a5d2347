"""The CUDA path, checked on a GPU (skipped without one; `scripts/gpu_session.sh` runs it first).

Small nets at small sizes: CUDA scores against the CPU's, the lossy engines close, CUDA graphs and
the trimmed net exact against eager CUDA, evaluation's confusion matrix on the device, and a few
training steps under bf16 autocast.
"""
import math

import pytest
import torch
from support.nets import reference_scores as _cpu_scores

from fcnseg.config import load_config
from fcnseg.data import build_dataset, sample_root
from fcnseg.evaluate.scoring import evaluate
from fcnseg.infer.engines import TorchEngine, choose_engine
from fcnseg.models.base import single
from fcnseg.models.checkpoint import load_checkpoint
from fcnseg.train.loop import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def _no_tf32():
    """fp32 means fp32 here: PyTorch's default lets cuDNN convolutions use TF32."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("kwargs", [{}, {"channels_last": False}, {"trim": True}])
def test_cuda_fp32_matches_cpu(kwargs, tiny_fcn, random_images):
    m = tiny_fcn()
    ref = {s: _cpu_scores(m, random_images(2, *s, i)) for i, s in enumerate([(64, 80), (97, 51)])}
    engine = TorchEngine(tiny_fcn(), "cuda", **kwargs)
    for i, s in enumerate(ref):
        out = single(engine.predict_scores(random_images(2, *s, i)))
        assert out.is_cuda and out.dtype == torch.float32
        assert (out.cpu() - ref[s]).abs().max() <= 1e-3 * max(1.0, ref[s].abs().max().item())


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_cuda_half_precision_is_close(dtype, tiny_fcn, random_images):
    m = tiny_fcn()
    x = random_images(2, 64, 80)
    ref = _cpu_scores(m, x)
    out = single(TorchEngine(tiny_fcn(), "cuda", dtype=dtype, trim=True).predict_scores(x)).cpu()
    assert not TorchEngine(tiny_fcn(), "cuda", dtype=dtype).exact
    assert (out - ref).abs().max() <= 0.05 * ref.abs().max()
    assert (out.argmax(1) == ref.argmax(1)).float().mean() > 0.9


@pytest.mark.parametrize("trim", [False, True])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_cuda_graphs_replay_equals_eager(trim, dtype, tiny_fcn, random_images):
    eager = TorchEngine(tiny_fcn(), "cuda", dtype=dtype, trim=trim)
    graphs = TorchEngine(tiny_fcn(), "cuda", dtype=dtype, trim=trim, cuda_graphs=True)
    # fp32: the same function to fp32 rounding; bf16: cuDNN may pick other kernels for the capture, and
    # each bf16 op rounds to 8 bits (2**-8 relative), so a few bf16 steps apart
    tol = 1e-3 if dtype == "fp32" else 2 ** -5
    for i, s in enumerate([(64, 80), (64, 80), (50, 70)]):  # a repeat replays; a new size captures again
        x = random_images(2, *s, i)
        a, b = single(eager.predict_scores(x)), single(graphs.predict_scores(x))
        assert (a - b).abs().max() <= tol * max(1.0, a.abs().max().item())
    assert len(graphs._graphs) == 2


def test_cuda_graphs_follow_new_weights(tiny_fcn, random_images):
    """Graphs read the tensors captured: new weights (refresh() for the trimmed net's constants) drop them,
    and the replayed scores are the new weights' scores."""
    x = random_images(2, 64, 80)
    graphs = TorchEngine(tiny_fcn(), "cuda", trim=True, cuda_graphs=True)
    before = single(graphs.predict_scores(x))
    with torch.no_grad():
        for p in graphs.model.parameters():
            p.mul_(1.5)
    graphs.refresh()
    after = single(graphs.predict_scores(x))
    ref = TorchEngine(tiny_fcn(), "cuda", trim=True)
    with torch.no_grad():
        for p in ref.model.parameters():
            p.mul_(1.5)
    ref.refresh()
    want = single(ref.predict_scores(x))
    assert not torch.allclose(before, after)
    assert (after - want).abs().max() <= 1e-3 * max(1.0, want.abs().max().item())


def test_choose_engine_on_cuda(tiny_fcn):
    fast, exact = choose_engine(tiny_fcn(), "cuda"), choose_engine(tiny_fcn(), "cuda", exact=True)
    assert (fast.dtype, fast.channels_last, fast.exact) == ("bf16", True, False)
    assert (exact.dtype, exact.exact) == ("fp32", True)


def test_evaluate_on_cuda_equals_cpu(tiny_fcn):
    ds = torch.utils.data.Subset(build_dataset("camvid", sample_root(), "val"), range(3))
    m = tiny_fcn(classes=11)
    cpu = evaluate(m, ds, device="cpu", progress=False)
    gpu = evaluate(tiny_fcn(classes=11).cuda(), ds, device="cuda", progress=False)
    assert abs(cpu["mean_iu"] - gpu["mean_iu"]) <= 1e-3
    assert abs(cpu["pixel_accuracy"] - gpu["pixel_accuracy"]) <= 1e-3


def test_training_steps_on_cuda_with_bf16_autocast(tmp_path):
    cfg = load_config(None, ["data.dataset=camvid", f"data.root={sample_root()}", "model.name=fcn8s",
                             "model.width=0.0625", "model.fc_channels=64", "train.progress=false",
                             "train.eval_every=0", "data.batch_size=2", "train.iterations=4", "train.amp=bf16",
                             "train.device=cuda", "train.channels_last=true", "data.val_split=val",
                             f"out={tmp_path / 'run'}"])
    res = train(cfg)
    assert res["iterations"] == 4 and math.isfinite(res["loss"]) and 0 <= res["metrics"]["mean_iu"] <= 1
    assert load_checkpoint(tmp_path / "run" / "last.pt")["iteration"] == 4
