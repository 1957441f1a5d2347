"""PASCAL VOC loader (fixtures + the real VOC example) and the VOC colour map."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fcnseg.data import DatasetError, build_dataset, colorize, voc_colormap
from fcnseg.data.fixtures import write_voc
from fcnseg.data.io import package_list

DEMO = Path("/work/shared/datasets/fcn-reference/voc-demo")


def test_voc_colormap():
    cmap = voc_colormap()
    assert cmap.shape == (256, 3) and cmap.dtype == np.uint8
    assert cmap[:4].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    assert cmap[15].tolist() == [192, 128, 128] and cmap[255].tolist() == [224, 224, 192]
    assert colorize(torch.tensor([[1, 255]]), cmap[:21]).tolist() == [[[128, 0, 0], [0, 0, 0]]]


def test_fixture_items(tmp_path):
    write_voc(tmp_path)
    for root in (tmp_path, tmp_path / "VOCdevkit", tmp_path / "VOCdevkit" / "VOC2012"):
        ds = build_dataset("voc", root, "train")
        assert ds.root == tmp_path / "VOCdevkit" / "VOC2012"
    assert len(ds) == 2 and ds.num_classes == 21 and ds.classes[15] == "person"
    assert ds.palette.shape == (21, 3)
    image, label = ds[0]
    assert image.shape == (3, 6, 8) and label.shape == (6, 8) and label.dtype == torch.int64
    assert set(label.unique().tolist()) <= {0, 1, 15, 20, 255}
    assert len(build_dataset("voc", tmp_path, "trainval")) == 3


def test_seg11valid_is_shipped(tmp_path):
    ids = package_list("seg11valid.txt").read_text().split()
    assert len(ids) == 736 and ids[0] == "2007_000033"
    write_voc(tmp_path, {"val": ["2007_000033", "2007_000042"]}, year="VOC2011")
    with pytest.raises(DatasetError, match=r"missing image file .*2007_000061\.jpg"):
        build_dataset("voc", tmp_path, "seg11valid")
    with pytest.warns(UserWarning):
        ds = build_dataset("voc", tmp_path, "seg11valid", skip_bad=True)
    assert ds.ids == ["2007_000033", "2007_000042"]


def test_real_voc_example(tmp_path):
    if not DEMO.is_dir():
        pytest.skip("VOC demo example not present")
    base = tmp_path / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / d).mkdir(parents=True)
    shutil.copy(DEMO / "image.jpg", base / "JPEGImages" / "2007_000129.jpg")
    shutil.copy(DEMO / "label.png", base / "SegmentationClass" / "2007_000129.png")
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000129\n")
    image, label = build_dataset("voc", tmp_path, "val")[0]
    assert image.shape == (3, 500, 334) and label.shape == (500, 334)
    assert set(label.unique().tolist()) == {0, 2, 15, 255}
    pal = np.array(Image.open(DEMO / "label.png").getpalette()[:63]).reshape(21, 3)
    assert (pal == voc_colormap(21)).all()


def test_rgb_label_rejected(tmp_path):
    base = write_voc(tmp_path)
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(base / "SegmentationClass" / "2007_000032.png")
    with pytest.raises(DatasetError, match=r"voc: cannot read label .*2007_000032\.png: expected a single"):
        build_dataset("voc", tmp_path, "train")[0]
    with pytest.raises(DatasetError, match=r"no list for split 'test'"):
        build_dataset("voc", tmp_path, "test")
