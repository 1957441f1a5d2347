"""The training loop on tiny CamVid-layout data: logs, checkpoints, exact resume, SIGINT, SIGKILL,
non-finite losses, frozen-trunk feature cache, staged initialisation, accumulation, multi-head."""
import math
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from support.datasets import make_camvid

from fcnseg import create_model
from fcnseg.config import load_config
from fcnseg.data import build_dataset
from fcnseg.errors import FcnsegError
from fcnseg.models.checkpoint import load_checkpoint, model_from_checkpoint
from fcnseg.train.loop import train
from fcnseg.train.model import init_from_checkpoint

H, W = 32, 40


BASE = ["data.dataset=camvid", "model.name=fcn8s", "model.width=0.0625", "model.fc_channels=64",
        "model.alignment=same", "train.progress=false", "train.eval_every=0", "train.log_every=1",
        "data.batch_size=2", "train.lr=1e-3", "train.iterations=4", "data.val_split=null"]


def cfg_for(root, out, *extra):
    return load_config(None, [*BASE, f"data.root={root}", f"out={out}", *extra])


def weights(path):
    return load_checkpoint(path)["model"]


def assert_same(a, b):
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"differ: {diff[:5]}"


class Wrap(torch.utils.data.Dataset):
    """Forwards to a dataset; ``hook(call_number, item)`` may alter the item or raise a signal."""

    def __init__(self, ds, hook):
        self.ds, self.hook, self.calls = ds, hook, 0

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        self.calls += 1
        return self.hook(self.calls, self.ds[i])

    def __getattr__(self, name):
        if name in ("ds", "hook", "calls"):
            raise AttributeError(name)
        return getattr(self.ds, name)


def test_run_writes_log_checkpoints_and_evaluates(blocky_camvid, tmp_path):
    out = tmp_path / "run"
    cfg = cfg_for(blocky_camvid, out, "data.val_split=val", "train.eval_every=2", "train.checkpoint_every=2",
                  "train.class_weights=median-frequency", "train.tensorboard=true", "train.amp=fp16",
                  "train.channels_last=true", "train.deterministic=true")
    with pytest.warns(UserWarning) as rec:
        res = train(cfg)
    msgs = " ".join(str(w.message) for w in rec)
    if "tensorboard" not in sys.modules:
        assert "tensorboard is not installed" in msgs
    assert "CUDA only" in msgs
    assert res["iterations"] == 4 and not res["interrupted"] and math.isfinite(res["loss"])
    assert res["best_checkpoint"] and 0 <= res["best_mean_iu"] <= 1 and "mean_iu" in res["metrics"]
    rows = (out / "log.csv").read_text().splitlines()
    assert rows[0] == "iter,epoch,loss,lr,img_per_s,elapsed" and len(rows) == 5
    assert (out / "eval.csv").read_text().count("\n") == 3 and (out / "config.yaml").is_file()
    model, ckpt = model_from_checkpoint(out / "last.pt")
    assert ckpt["iteration"] == 4 and ckpt["run_config"]["train"]["lr"] == 1e-3 and ckpt["world_size"] == 1
    assert model.spec.name == "fcn8s" and set(ckpt["optimizer"]) == {"state", "param_groups"}
    assert ckpt["config"] == model.spec.to_dict() == load_checkpoint(out / "last.pt")["config"]
    assert list(ckpt) == ["format", "model", "config", "preprocessing", "checksum", "optimizer", "scheduler", "scaler",
                          "iteration", "epoch", "rng_per_rank", "world_size", "sampler", "run_config", "best_mean_iu",
                          "elapsed", "metrics", "classes", "palette"]   # the layout a resume and predict read
    assert load_checkpoint(out / "best.pt")["best_mean_iu"] == res["best_mean_iu"]
    assert not torch.are_deterministic_algorithms_enabled()  # global flags restored


def test_best_checkpoint_keeps_the_highest_val_mean_iu(blocky_camvid, tmp_path, monkeypatch):
    """Val mean IU goes down, up, down again: best.pt is the iteration of the maximum, not of the minimum."""
    from fcnseg.evaluate import scoring as ev
    from fcnseg.train import loop

    script, real = iter([0.30, 0.10, 0.50, 0.20]), ev.evaluate

    def scripted(*args, **kwargs):  # the real evaluation, with the mean IU taken from the script
        return {**real(*args, **kwargs), "mean_iu": next(script)}

    monkeypatch.setattr(loop, "evaluate", scripted)
    res = train(cfg_for(blocky_camvid, tmp_path / "run", "data.val_split=val", "train.eval_every=1",
                        "model.fc_channels=16"))
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert (best["iteration"], best["best_mean_iu"], res["best_mean_iu"]) == (3, 0.50, 0.50)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["iteration"] == 4


AUGMENTED = ["train.schedule=poly", "train.momentum=0.9", "data.flip=true", "data.crop=24",
             "data.scale_range=[0.75, 1.25]", "data.jitter=0.2", "train.patch_p=0.7", "train.iterations=6",
             "train.checkpoint_every=100"]


def test_sigint_saves_and_resume_is_bit_identical(blocky_camvid, tmp_path, capsys):
    """Train 2K straight == train K (stopped by SIGINT), resume, train the rest: same weights exactly
    (dropout, random augmentation, patch sampling, momentum and a poly schedule all in play)."""
    ref = train(cfg_for(blocky_camvid, tmp_path / "ref", *AUGMENTED))
    ds = build_dataset("camvid", blocky_camvid, "train")

    def sigint_at_step_4(call, item):  # 2 items per step: call 7 is loaded by step 4
        if call == 7:
            signal.raise_signal(signal.SIGINT)
        return item

    cut = train(cfg_for(blocky_camvid, tmp_path / "cut", *AUGMENTED), train_set=Wrap(ds, sigint_at_step_4))
    assert cut["interrupted"] and cut["iterations"] == 3 + 1
    assert "stopped at iteration 4/6" in capsys.readouterr().err
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["iteration"] == 4
    done = train(cfg_for(blocky_camvid, tmp_path / "cut", *AUGMENTED, "train.resume=auto"))
    assert done["iterations"] == 6 and not done["interrupted"]
    assert_same(weights(tmp_path / "ref" / "last.pt"), weights(tmp_path / "cut" / "last.pt"))
    assert ref["loss"] == done["loss"]
    iters = [r.split(",")[0] for r in (tmp_path / "cut" / "log.csv").read_text().splitlines()[1:]]
    assert iters == ["1", "2", "3", "4", "5", "6"]


_CHILD = r"""
import sys, time, torch
from fcnseg.config import load_config
from fcnseg.data import build_dataset
from fcnseg.train.loop import train

class Slow(torch.utils.data.Dataset):
    def __init__(self, ds): self.ds = ds
    def __len__(self): return len(self.ds)
    def __getitem__(self, i):
        time.sleep(0.05)
        return self.ds[i]
    def __getattr__(self, n):
        if n == "ds": raise AttributeError(n)
        return getattr(self.ds, n)

cfg = load_config(None, sys.argv[2:])
train(cfg, train_set=Slow(build_dataset("camvid", sys.argv[1], "train")))
"""


@pytest.mark.slow
def test_sigkill_loses_at_most_the_steps_since_the_last_checkpoint(blocky_camvid, tmp_path):
    args = [*BASE, *AUGMENTED, f"data.root={blocky_camvid}", "train.iterations=24", "train.checkpoint_every=3"]
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(blocky_camvid), *args, f"out={out}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (out / "last.pt").is_file():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.05)
        time.sleep(random.uniform(0.0, 0.5))
    finally:
        proc.kill()
        proc.wait()
    saved = load_checkpoint(out / "last.pt")["iteration"]
    assert saved % 3 == 0 and 3 <= saved < 24
    res = train(load_config(None, [*args, f"out={out}", "train.resume=auto"]))
    assert res["iterations"] == 24
    train(load_config(None, [*args, f"out={tmp_path / 'whole'}"]))
    assert_same(weights(tmp_path / "whole" / "last.pt"), weights(out / "last.pt"))


def poison_step_4(call, item):  # the first item of step 4 holds an inf pixel
    image, label = item
    if call == 7:
        image = image.clone()
        image[:, 0, 0] = math.inf
    return image, label


def test_nonfinite_stop_keeps_last_good_checkpoint(blocky_camvid, tmp_path):
    out = tmp_path / "nan"
    ds = Wrap(build_dataset("camvid", blocky_camvid, "train"), poison_step_4)
    cfg = cfg_for(blocky_camvid, out, "train.checkpoint_every=2", "train.iterations=6")
    with pytest.raises(FcnsegError, match="non-finite loss at iteration 4") as e:
        train(cfg, train_set=ds)
    assert "\n" not in str(e.value) and "last.pt" in str(e.value)
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["iteration"] == 2 and not (out / "best.pt").exists()
    assert [r.split(",")[0] for r in (out / "log.csv").read_text().splitlines()[1:]] == ["1", "2", "3"]


def test_nonfinite_skip_warns_and_continues(blocky_camvid, tmp_path):
    ds = Wrap(build_dataset("camvid", blocky_camvid, "train"), poison_step_4)
    cfg = cfg_for(blocky_camvid, tmp_path / "skip", "train.nonfinite=skip", "train.iterations=6")
    with pytest.warns(UserWarning, match="non-finite loss at iteration 4: step skipped"):
        res = train(cfg, train_set=ds)
    assert res["iterations"] == 6 and res["skipped_steps"] == 1
    assert all(torch.isfinite(v).all() for v in weights(tmp_path / "skip" / "last.pt").values())


def cached_and_plain(blocky_camvid, tmp_path, capsys, *common, store=None):
    """Train with and without train.cache_features; assert equal weights; return them and the cached run's log."""
    train(cfg_for(blocky_camvid, tmp_path / "cached", *common, "train.cache_features=true"), store=store)
    err = capsys.readouterr().err
    train(cfg_for(blocky_camvid, tmp_path / "plain", *common))
    a, b = weights(tmp_path / "cached" / "last.pt"), weights(tmp_path / "plain" / "last.pt")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
    return a, b, err


def test_frozen_trunk_with_feature_cache_matches_uncached(blocky_camvid, tmp_path, capsys):
    common = ["train.freeze_backbone=true", "data.resize=2", "model.dropout=0", "train.lr=1e-2"]
    a, _, err = cached_and_plain(blocky_camvid, tmp_path, capsys, *common)
    assert "cached pool3/pool4/pool5 features of 8 images" in err
    torch.manual_seed(1337)
    init = create_model("fcn8s", 11, width=0.0625, fc_channels=64, alignment="same").state_dict()
    trunk = [k for k in a if k.startswith("backbone.stages.") and not k.startswith("backbone.stages.fc7")]
    assert trunk and all(torch.equal(a[k], init[k]) for k in trunk)
    assert not torch.equal(a["backbone.stages.fc7.fc7.weight"], init["backbone.stages.fc7.fc7.weight"])


@pytest.mark.parametrize("flip", [False, True])
def test_validation_from_cached_features_scores_as_uncached(blocky_camvid, tmp_path, capsys, flip):
    """With a frozen trunk and train.cache_features the validation split is scored from its cached
    features (and their mirrors for train.eval_flip): the same metrics as scoring the images."""
    from fcnseg.train.cache import FeatureStore

    common = ["train.freeze_backbone=true", "model.dropout=0", "train.lr=5e-2", "data.val_split=val",
              "train.iterations=12", "train.eval_every=6", f"train.eval_flip={str(flip).lower()}"]
    store = FeatureStore()
    cached = train(cfg_for(blocky_camvid, tmp_path / "cached", *common, "train.cache_features=true"), store=store)
    err = capsys.readouterr().err
    assert "scoring from cached pool3/pool4/pool5 features of 3 validation images" in err
    assert ("and their mirrors" in err.split("validation images")[1].splitlines()[0]) == flip
    plain = train(cfg_for(blocky_camvid, tmp_path / "plain", *common))
    assert cached["metrics"]["confusion"] == plain["metrics"]["confusion"]
    assert len(store.entries) == 2   # the training split's cache and the validation split's, in the caller's store


@pytest.mark.parametrize("flip", [False, True])
def test_scoring_cached_items_equals_scoring_images(blocky_camvid, flip):
    """evaluate() on a FeatureCache's items (features, mirrors) gives the confusion matrix of
    evaluate() on the images, for a net whose predictions vary from pixel to pixel."""
    from fcnseg.evaluate.scoring import evaluate
    from fcnseg.train.cache import FeatureCache

    torch.manual_seed(0)
    model = create_model("fcn8s", 11, width=0.0625, fc_channels=64, alignment="same").eval()
    with torch.no_grad():
        for name, prm in model.score.named_parameters():
            prm.normal_(0, 50.0) if name.endswith("weight") else prm.zero_()   # the trunk's features are small
    val = build_dataset("camvid", blocky_camvid, "val")
    frozen = ["pool1", "pool2", "pool3", "pool4", "pool5"]
    cache = FeatureCache(model, val, frozen, torch.device("cpu"), mirror=flip)
    a = evaluate(model, val, progress=False, flip=flip)
    b = evaluate(model, cache.scoring_items(val), progress=False, flip=flip)
    assert sum(1 for col in zip(*a["confusion"]) if any(col)) > 1   # not one class everywhere
    assert a["confusion"] == b["confusion"] and a["mean_iu"] == b["mean_iu"]
    item = cache.scoring_items(val)[0]
    assert set(item) == {"label", "features"} | ({"mirrored"} if flip else set())  # no stand-in image
    batched = evaluate(model, cache.scoring_items(val), batch_size=3, progress=False, flip=flip)
    assert batched["confusion"] == a["confusion"]
    if flip:
        assert a["confusion"] != evaluate(model, val, progress=False)["confusion"]   # flipping changed labels


def test_cache_needs_deterministic_transforms(blocky_camvid, tmp_path, capsys):
    train(cfg_for(blocky_camvid, tmp_path / "r", "train.freeze_backbone=true", "train.cache_features=true",
                  "data.crop=24", "train.iterations=1"))
    assert "training transforms are random" in capsys.readouterr().err


def test_random_flip_with_feature_cache_matches_uncached(blocky_camvid, tmp_path, capsys):
    """The cache holds each image's and its mirror's features and flips exactly the items the
    uncached loader flips, so both runs train the same net."""
    from fcnseg.train.cache import FeatureStore
    from fcnseg.train.data import flipped, item_seed

    common = ["train.freeze_backbone=true", "model.dropout=0", "train.lr=1e-2", "data.flip=true",
              "train.iterations=6"]
    store = FeatureStore()
    a, _, err = cached_and_plain(blocky_camvid, tmp_path, capsys, *common, store=store)
    assert "features of 8 images and their mirrors" in err
    draws = [flipped(item_seed(1337, 0, p)) for p in range(8)]
    assert any(draws) and not all(draws)   # both orientations were trained on
    train(cfg_for(blocky_camvid, tmp_path / "noflip", *common[:-2], "train.iterations=6",
                  "train.cache_features=true"), store=store)
    c = weights(tmp_path / "noflip" / "last.pt")
    assert not torch.equal(a["score.out.fc7.weight"], c["score.out.fc7.weight"])
    [(_, _, cache)] = store.entries
    assert cache.mirrors is not None and not cache.flip   # reused without flipping


def test_staged_init_from_previous_stage(blocky_camvid, tmp_path):
    train(cfg_for(blocky_camvid, tmp_path / "s32", "model.name=fcn32s", "train.iterations=2"))
    path = tmp_path / "s32" / "last.pt"
    m16 = create_model("fcn16s", 11, width=0.0625, fc_channels=64, alignment="same")
    up_before = m16.upsample["out"][0].weight.clone()
    copied, fresh = init_from_checkpoint(m16, str(path))
    src = weights(path)
    assert "score.out.fc7.weight" in copied and all(torch.equal(m16.state_dict()[k], src[k]) for k in copied)
    assert "score.out.pool4.weight" in fresh and not m16.score["out"]["pool4"].weight.any()
    assert torch.equal(m16.upsample["out"][0].weight, up_before)  # 2x kernel: not the 32x one
    res = train(cfg_for(blocky_camvid, tmp_path / "s16", "model.name=fcn16s", f"model.init_from={path}",
                        "train.iterations=1"))
    assert res["iterations"] == 1


def test_accumulation_and_global_normalisation(blocky_camvid, tmp_path):
    """Batch 4 in one pass == batch 4 as 2 micro-batches (loss normalised by the global batch)."""
    common = ["data.batch_size=4", "model.dropout=0", "train.patch_p=0.5", "data.flip=true",
              "train.class_weights=[1,2,1,1,1,1,1,1,1,1,0.5]", "train.iterations=3"]
    for red in ("mean", "sum"):
        lr = "1e-3" if red == "mean" else "1e-6"
        train(cfg_for(blocky_camvid, tmp_path / f"one-{red}", *common, f"train.loss_reduction={red}", f"train.lr={lr}"))
        train(cfg_for(blocky_camvid, tmp_path / f"two-{red}", *common, f"train.loss_reduction={red}", f"train.lr={lr}",
                      "train.accumulate=2"))
        a, b = weights(tmp_path / f"one-{red}" / "last.pt"), weights(tmp_path / f"two-{red}" / "last.pt")
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_path_trains_like_fp32(blocky_camvid, tmp_path, monkeypatch, amp):
    """train.amp's autocast + grad-scaler path (CUDA's), run here under CPU autocast: finite losses,
    weights close to (not equal to) an fp32 run's, and with fp16 every step taken by the scaler."""
    import fcnseg.train.loop as tr

    train(cfg_for(blocky_camvid, tmp_path / "fp32"))
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    monkeypatch.setattr(tr, "_amp_dtype", lambda amp, device: dtype)
    res = train(cfg_for(blocky_camvid, tmp_path / amp, "data.val_split=val", "train.eval_every=2"))
    assert math.isfinite(res["loss"]) and 0 <= res["metrics"]["mean_iu"] <= 1
    a, ckpt = weights(tmp_path / "fp32" / "last.pt"), load_checkpoint(tmp_path / amp / "last.pt")
    rel = [((a[k] - v).abs().max() / a[k].abs().max().clamp_min(1e-12)).item()
           for k, v in ckpt["model"].items() if v.is_floating_point()]
    assert 0 < max(rel) < 0.05
    if amp == "fp16":  # four good steps: no overflow skipped, scale untouched
        assert ckpt["scaler"]["_growth_tracker"] == 4 and ckpt["scaler"]["scale"] == 2.0 ** 16
    else:
        assert not ckpt["scaler"]  # bf16 needs no loss scaling


def test_amp_on_the_cpu_auto_stays_fp32_bf16_needs_native_support(monkeypatch):
    import fcnseg.train.loop as tr

    cpu = torch.device("cpu")
    for native in (True, False):
        monkeypatch.setattr(tr, "native_bf16", lambda native=native: native)
        assert tr._amp_dtype("auto", cpu) is None and tr._amp_dtype("off", cpu) is None
        if native:
            assert tr._amp_dtype("bf16", cpu) == torch.bfloat16
        else:
            with pytest.warns(UserWarning, match="no native bf16.*training in float32"):
                assert tr._amp_dtype("bf16", cpu) is None
        with pytest.warns(UserWarning, match="fp16 is for CUDA only"):
            assert tr._amp_dtype("fp16", cpu) is None


def test_cpu_bf16_run_records_its_precision(blocky_camvid, tmp_path, monkeypatch):
    import fcnseg.train.loop as tr

    monkeypatch.setattr(tr, "native_bf16", lambda: True)
    res = train(cfg_for(blocky_camvid, tmp_path / "bf16", "train.amp=bf16", "train.iterations=2"))
    assert res["precision"] == "bf16" and math.isfinite(res["loss"])
    assert train(cfg_for(blocky_camvid, tmp_path / "fp32", "train.iterations=2"))["precision"] == "fp32"


def test_trim_border_trains_as_the_plain_net(blocky_camvid, tmp_path):
    """train.trim_border: the same run (dropout, momentum) to fp32 rounding; refused where nothing is trimmed."""
    common = ["model.alignment=caffe", "train.iterations=3", "model.name=fcn16s"]
    train(cfg_for(blocky_camvid, tmp_path / "plain", *common))
    train(cfg_for(blocky_camvid, tmp_path / "trim", *common, "train.trim_border=true"))
    a, b = weights(tmp_path / "plain" / "last.pt"), weights(tmp_path / "trim" / "last.pt")
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)  # another rounding ...
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6)  # ... the same steps
    with pytest.raises(FcnsegError, match="train.trim_border: fcn8s@vgg16 \\(same alignment\\) has no"):
        train(cfg_for(blocky_camvid, tmp_path / "same", "train.trim_border=true"))


class TwoHeads(torch.utils.data.Dataset):
    heads = {"semantic": 4, "geometric": 3}

    def __len__(self):
        return 4

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return (torch.rand(3, H, W, generator=g) * 255,
                {"semantic": torch.randint(0, 4, (H, W), generator=g),
                 "geometric": torch.randint(0, 3, (H, W), generator=g)})


def test_multi_head_training(tmp_path):
    cfg = load_config(None, [*BASE, f"out={tmp_path}", "train.iterations=2", "train.patch_p=0.5"])
    res = train(cfg, train_set=TwoHeads())
    assert res["iterations"] == 2 and math.isfinite(res["loss"])
    w = weights(tmp_path / "last.pt")
    assert "score.semantic.fc7.weight" in w and "score.geometric.pool3.weight" in w


def test_bad_setup_errors_are_one_line(blocky_camvid, tmp_path):
    from fcnseg.errors import CheckpointError, ConfigError

    with pytest.raises(ConfigError, match="larger than the training set"):
        train(cfg_for(blocky_camvid, tmp_path / "a", "data.batch_size=16"))
    with pytest.raises(ConfigError, match="data.root is not set"):
        train(load_config(None, [*BASE, f"out={tmp_path / 'b'}"]))
    with pytest.raises(CheckpointError, match="not found"):
        train(cfg_for(blocky_camvid, tmp_path / "c", f"train.resume={tmp_path / 'none.pt'}"))
    with pytest.raises(ConfigError, match="class_weights needs 11"):
        train(cfg_for(blocky_camvid, tmp_path / "d", "train.class_weights=[1, 2]"))
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            train(cfg_for(blocky_camvid, tmp_path / "f", "train.device=cuda"))
    with pytest.raises(ValueError, match="label value 42"):
        train(cfg_for(blocky_camvid, tmp_path / "e"), train_set=Wrap(build_dataset("camvid", blocky_camvid, "train"),
                                                                 lambda c, it: (it[0], it[1] * 0 + 42)))


def test_feature_cache_is_reused_only_for_the_same_frozen_trunk_and_data():
    """A study training several heads on one frozen trunk computes the features once."""
    import fcnseg
    from fcnseg.data import Resize, build_dataset, sample_root
    from fcnseg.train.cache import FeatureStore
    from fcnseg.train.data import First

    data = First(build_dataset("camvid", sample_root(), "val"), 2)
    store = FeatureStore()
    small = dict(width=1 / 16, fc_channels=16)
    frozen = ["pool1", "pool2", "pool3", "pool4", "pool5"]
    a = fcnseg.create_model("fcn8s", 11, **small)
    b = fcnseg.create_model("fcn32s", 11, **small)
    b.backbone.load_state_dict(a.backbone.state_dict())
    first = store.get(a, data, frozen, torch.device("cpu"), Resize(scale=0.25))
    again = store.get(a, data, frozen, torch.device("cpu"), Resize(scale=0.25))
    assert again is first
    other_taps = store.get(b, data, frozen, torch.device("cpu"), Resize(scale=0.25))
    assert other_taps is first and other_taps.needed == ["pool5"]   # a subset of what is cached
    c = fcnseg.create_model("pool4-only", 11, **small)
    c.backbone.load_state_dict(a.backbone.state_dict(), strict=False)
    sub = store.get(c, data, frozen[:4], torch.device("cpu"), Resize(scale=0.25))
    assert sub is first and sub.needed == ["pool4"]
    _, feats, _, size = sub.batch([(0, 0)], 1.0)
    with torch.no_grad():
        x = c.preprocessing(Resize(scale=0.25)(*data[0])[0][None])
        assert size == tuple(x.shape[-2:])
        assert torch.allclose(c(x)["out"], c.forward_features(feats, size)["out"], atol=1e-5)
    with torch.no_grad():
        b.backbone.stages["pool1"].conv1_1.weight.add_(1.0)
    changed = store.get(b, data, frozen, torch.device("cpu"), Resize(scale=0.25))
    assert changed is not first
    assert store.get(a, data, frozen, torch.device("cpu"), Resize(scale=0.25)) is first  # both caches kept
    assert FeatureStore().get(b, data, frozen, torch.device("cpu"), Resize(scale=0.25)) is not changed  # not global


@pytest.mark.slow
def test_iter_size_20_of_batch_1_equals_one_batch_of_20_image_mean(tmp_path):
    """voc-fcn-alexnet's iter_size 20 (20 micro-batches of one image) takes the step one batch of 20
    takes under the mean of per-image means."""
    root = make_camvid(tmp_path / "cv20", n_train=20, n_val=1, seed=3)
    common = ["data.batch_size=20", "model.dropout=0", "model.name=fcn32s", "train.iterations=1",
              "train.loss_reduction=image-mean", "train.lr=1e-2"]
    train(cfg_for(root, tmp_path / "one", *common))
    train(cfg_for(root, tmp_path / "acc", *common, "train.accumulate=20"))
    a, b = weights(tmp_path / "one" / "last.pt"), weights(tmp_path / "acc" / "last.pt")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
    start = create_model("fcn32s", 11, width=0.0625, fc_channels=64, alignment="same").state_dict()
    assert any(not torch.equal(a[k], start[k]) for k in a if k.startswith("score."))


def test_score_evaluates_the_net_without_building_a_training_run(blocky_camvid, tmp_path):
    """score() builds the net and evaluates it: no optimizer or batch schedule (a batch larger than the
    training set is no obstacle), nothing written; an earlier run's final net scores as its last evaluation."""
    from fcnseg.train.loop import score

    run = train(cfg_for(blocky_camvid, tmp_path / "run", "data.val_split=val"))
    got = score(cfg_for(blocky_camvid, tmp_path / "score", "data.val_split=val", "data.batch_size=100",
                        f"model.init_from={tmp_path / 'run' / 'last.pt'}"))
    assert got["confusion"] == run["metrics"]["confusion"]
    assert not (tmp_path / "score").exists()
    assert score(cfg_for(blocky_camvid, tmp_path / "none")) is None   # no validation split


def test_score_adapt_scores_the_adapted_net_from_the_built_nets_cached_trunk(blocky_camvid, tmp_path):
    """score(adapt=) builds the net, caches its frozen trunk's features in the caller's store, and
    scores the adapted net (a changed head) from them: as scoring the adapted net on the images."""
    from fcnseg.train.cache import FeatureStore
    from fcnseg.train.loop import score

    def adapt(model):  # new score layers whose predictions vary from pixel to pixel
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, p in model.score.named_parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 50.0 if name.endswith("weight") else torch.zeros_like(p))
        return model

    common = ["data.val_split=val", "train.freeze_backbone=true", "model.dropout=0"]
    store = FeatureStore()
    cached = score(cfg_for(blocky_camvid, tmp_path / "a", *common, "train.cache_features=true"), store=store,
                   adapt=adapt)
    plain = score(cfg_for(blocky_camvid, tmp_path / "b", *common), adapt=adapt)
    unchanged = score(cfg_for(blocky_camvid, tmp_path / "c", *common))
    assert cached["confusion"] == plain["confusion"] != unchanged["confusion"]
    assert len(store.entries) == 1   # the validation split's features, held by the caller


def test_freeze_keeps_the_classifier_stage_the_backbone_declares():
    """Backbone.classifier_tap (fc7 of VGG16 and AlexNet) is what a frozen-trunk run keeps training."""
    from fcnseg.train.model import freeze_backbone

    for backbone in ("vgg16", "alexnet"):
        model = create_model("fcn32s", 11, backbone=backbone, width=0.0625, fc_channels=16)
        assert model.backbone.classifier_tap == "fc7"
        frozen = freeze_backbone(model)
        assert frozen == [n for n in model.backbone.stages if n != "fc7"]
        assert all(p.requires_grad for p in model.backbone.stages["fc7"].parameters())
        assert not any(p.requires_grad for n in frozen for p in model.backbone.stages[n].parameters())
    model = create_model("fcn32s", 11, width=0.0625, fc_channels=16)
    model.backbone.classifier_tap = None   # a backbone without converted classifier: the whole trunk freezes
    assert freeze_backbone(model) == list(model.backbone.stages)


def test_time_limit_ends_the_run_as_at_its_end(blocky_camvid, tmp_path, capsys):
    """train.time_limit: past it the run stops after the step in flight, evaluates and saves as at its
    last iteration, and says so in its summary."""
    res = train(cfg_for(blocky_camvid, tmp_path / "r", "train.time_limit=1e-9", "train.iterations=5",
                        "data.val_split=val"))
    assert res["iterations"] == 1 and res["total_iterations"] == 5 and res["time_limited"]
    assert res["metrics"] is not None and "mean_iu" in res["metrics"]
    assert load_checkpoint(tmp_path / "r" / "last.pt")["iteration"] == 1
    assert "train.time_limit: 1e-09 s reached at iteration 1/5" in capsys.readouterr().err
    full = train(cfg_for(blocky_camvid, tmp_path / "full", "train.iterations=2"))
    assert full["iterations"] == 2 and not full["time_limited"]
