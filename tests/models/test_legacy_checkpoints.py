"""Checkpoints saved by earlier fcnseg versions still load and compute what they computed then.

The fixtures in tests/fixtures/legacy/ were written by tests/fixtures/legacy/make_legacy.py with the code as it stood
before the model contract (issue 15); never regenerate them with newer code."""
from pathlib import Path

import numpy as np
import pytest
import torch

from fcnseg.models.checkpoint import model_from_checkpoint

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy"
STEMS = ["fcn8s-k5", "fcn16s-two-heads", "fcn32s-late-fusion"]


def _image(channels: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(0).integers(0, 256, (channels, 40, 52)).astype(np.float32))


@pytest.mark.parametrize("stem", STEMS)
def test_legacy_checkpoint_loads_and_scores_as_saved(stem):
    model, _ = model_from_checkpoint(LEGACY / f"{stem}.pt")
    expected = np.load(LEGACY / f"{stem}-scores.npz")
    with torch.no_grad():
        out = model.eval()(model.preprocessing(_image(6 if "fusion" in stem else 3)[None]))
    out = out if isinstance(out, dict) else {"out": out}
    assert sorted(out) == sorted(expected.files)
    for head in expected.files:
        np.testing.assert_allclose(out[head][0].numpy(), expected[head], rtol=1e-5, atol=1e-6)
