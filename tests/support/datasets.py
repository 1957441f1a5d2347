"""Small datasets written in the on-disk layouts the loaders read."""
from pathlib import Path

import numpy as np
from PIL import Image

H, W = 32, 40


def make_camvid(root: Path, n_train: int = 8, n_val: int = 3, seed: int = 0) -> Path:
    """Blocky random scenes in the SegNet CamVid layout (classes 0..10, 11 = void)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / f"{split}annot").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            lab = np.kron(rng.integers(0, 12, (H // 8, W // 8)), np.ones((8, 8), np.int64)).astype(np.uint8)
            img = (lab[..., None] * np.array([20, 7, 13]) + rng.integers(0, 30, (H, W, 3))).clip(0, 255)
            Image.fromarray(img.astype(np.uint8)).save(root / split / f"{i:03d}.png")
            Image.fromarray(lab).save(root / f"{split}annot" / f"{i:03d}.png")
    return root
