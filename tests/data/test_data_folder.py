"""Generic images/ + masks/ folder dataset."""
import numpy as np
import pytest
import torch
from PIL import Image

from fcnseg.data import DatasetError, build_dataset
from fcnseg.data.fixtures import write_folder


@pytest.mark.parametrize("palette_masks", [False, True])
def test_all_items(tmp_path, palette_masks):
    root = write_folder(tmp_path, palette_masks=palette_masks)
    ds = build_dataset("folder", root, None)
    assert ds.classes == ["bg", "cat", "dog"] and ds.num_classes == 3 and ds.palette.shape == (3, 3)
    assert ds.ids == ["item0", "item1", "item2"]
    image, label = ds[2]
    assert image.shape == (3, 6, 8) and label.dtype == torch.int64
    assert torch.equal(label, torch.from_numpy(np.array(Image.open(root / "masks" / "item2.png")).astype(np.int64)))


def test_split_lists(tmp_path):
    root = write_folder(tmp_path, splits={"train": ["item2", "item0"], "val": ["item1"]})
    assert build_dataset("folder", root, "train").ids == ["item2", "item0"]
    assert build_dataset("folder", root, "val").ids == ["item1"]
    with pytest.warns(UserWarning, match="no split list"):
        assert len(build_dataset("folder", root, "test")) == 3
    (root / "val.txt").write_text("item9\n")
    with pytest.raises(DatasetError, match=r"missing image file .*item9"):
        build_dataset("folder", root, "val")


def test_errors(tmp_path):
    root = write_folder(tmp_path)
    Image.fromarray(np.full((6, 8), 3, np.uint8)).save(root / "masks" / "item1.png")
    ds = build_dataset("folder", root, "all")
    with pytest.raises(DatasetError, match=r"folder: cannot read label .*item1\.png: invalid label values \[3\]"):
        ds[1]
    (root / "masks" / "item2.png").unlink()
    with pytest.raises(DatasetError, match=r"missing label file .*item2\.png"):
        build_dataset("folder", root, "all")
    (root / "classes.txt").unlink()
    with pytest.raises(DatasetError, match=r"missing class list .*classes\.txt"):
        build_dataset("folder", root, "all")
