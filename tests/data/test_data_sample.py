"""The bundled CamVid sample loads with the camvid loader."""
import torch

from fcnseg.data import build_dataset, collate_pad, sample_root


def test_sample_layout_and_size():
    root = sample_root()
    assert (root / "README.md").read_text().count("Brostow") >= 1
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert total <= 5 * 1024 * 1024
    assert (root / "train.txt").read_text().startswith("/SegNet/CamVid/train/")


def test_sample_items():
    root = sample_root()
    train, val = build_dataset("camvid", root, "train"), build_dataset("camvid", root, "val")
    assert (len(train), len(val)) == (60, 20)
    seen = set()
    for ds in (train, val):
        for i in (0, len(ds) - 1):
            image, label = ds[i]
            assert image.shape == (3, 180, 240) and image.dtype == torch.float32
            assert label.shape == (180, 240) and label.dtype == torch.int64
            seen |= set(label.unique().tolist())
    assert seen <= set(range(11)) | {255} and len(seen) >= 8
    images, labels = collate_pad([train[0], val[0]])
    assert images.shape == (2, 3, 180, 240) and labels.shape == (2, 180, 240)
