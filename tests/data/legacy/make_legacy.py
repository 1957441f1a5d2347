"""Write the legacy-checkpoint fixtures: tiny checkpoints saved by fcnseg before the model contract (issue 15),
with the scores they give on a fixed image. Kept so later code proves it still loads what users saved.
Run once from the repo root: ``python tests/data/legacy/make_legacy.py`` (rerunning overwrites them)."""
from pathlib import Path

import numpy as np
import torch

import fcnseg
from fcnseg.models.checkpoint import save_checkpoint

HERE = Path(__file__).resolve().parent
NETS = {
    "fcn8s-k5": dict(name="fcn8s", num_classes=5),
    "fcn16s-two-heads": dict(name="fcn16s", num_classes={"semantic": 4, "geometric": 3}),
    "fcn32s-late-fusion": dict(name="fcn32s", num_classes=3, streams={"color": 3, "hha": 3}),
}


def image(channels: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(0).integers(0, 256, (channels, 40, 52)).astype(np.float32))


def main() -> None:
    for stem, kw in NETS.items():
        torch.manual_seed(0)
        model = fcnseg.create_model(kw.pop("name"), kw.pop("num_classes"), width=1 / 16, fc_channels=8, **kw).eval()
        with torch.no_grad():  # score layers start at zero: give them values so the labels say something
            for name, p in model.named_parameters():
                if "score" in name:
                    p.normal_(0, 5.0) if name.endswith("weight") else p.zero_()
        save_checkpoint(HERE / f"{stem}.pt", model)
        with torch.no_grad():
            scores = model(model.preprocessing(image(6 if "fusion" in stem else 3)[None]))
        scores = scores if isinstance(scores, dict) else {"out": scores}
        np.savez_compressed(HERE / f"{stem}-scores.npz", **{k: v[0].numpy() for k, v in scores.items()})


if __name__ == "__main__":
    main()
