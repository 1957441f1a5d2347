"""Datasets with MATLAB .mat labels: SBD, SIFT Flow, NYUDv2, PASCAL-Context."""
import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from fcnseg.data import (
    NYUD_LOG_DEPTH_MEAN,
    NYUD_MEANS,
    SIFTFLOW_ABSENT_IN_TEST,
    DatasetError,
    build_dataset,
    collate_pad,
    nyud_channel_means,
)
from fcnseg.data.fixtures import SIFT_SUBDIR, write_context, write_nyud, write_sbd, write_siftflow
from fcnseg.data.io import package_list


def _mat(path, key):
    return scipy.io.loadmat(str(path))[key]


# --- SBD --------------------------------------------------------------------------------------------
def test_sbd(tmp_path):
    base = write_sbd(tmp_path)
    for root in (base, base.parent):
        ds = build_dataset("sbd", root, "train")
    assert len(ds) == 2 and ds.num_classes == 21 and ds.classes[0] == "background"
    image, label = ds[1]
    expect = _mat(base / "cls" / "2008_000003.mat", "GTcls")["Segmentation"][0, 0]
    assert image.shape == (3, 6, 8) and torch.equal(label, torch.from_numpy(expect.astype(np.int64)))
    assert build_dataset("sbd", base, "val").ids == ["2008_000007"]


def test_sbd_mat_errors(tmp_path):
    base = write_sbd(tmp_path)
    scipy.io.savemat(str(base / "cls" / "2008_000002.mat"), {"GTcls": {"Boundaries": np.zeros((2, 2))}})
    scipy.io.savemat(str(base / "cls" / "2008_000003.mat"), {"other": np.zeros((6, 8))})
    ds = build_dataset("sbd", base, "train")
    with pytest.raises(DatasetError, match=r"sbd: cannot read label .*2008_000002\.mat: 'GTcls' has no field "
                                           r"'Segmentation'"):
        ds[0]
    with pytest.raises(DatasetError, match=r"2008_000003\.mat: no variable 'GTcls'"):
        ds[1]
    (base / "cls" / "2008_000003.mat").write_bytes(b"MATLAB 5.0 MAT-file truncated")
    with pytest.raises(DatasetError, match=r"cannot read label .*2008_000003\.mat"):
        ds[1]


# --- SIFT Flow --------------------------------------------------------------------------------------
def test_siftflow_constants():
    from fcnseg.data.siftflow import SIFTFLOW_CLASSES, SIFTFLOW_GEO_CLASSES

    assert len(SIFTFLOW_CLASSES) == 33 and SIFTFLOW_CLASSES[0] == "awning" and SIFTFLOW_CLASSES[-1] == "window"
    assert SIFTFLOW_GEO_CLASSES == ["sky", "horizontal", "vertical"]
    assert SIFTFLOW_ABSENT_IN_TEST == (8, 10, 15)
    assert [SIFTFLOW_CLASSES[i] for i in SIFTFLOW_ABSENT_IN_TEST] == ["cow", "desert", "moon"]
    assert len(package_list("siftflow", "trainval.txt").read_text().split()) == 2486
    assert len(package_list("siftflow", "test.txt").read_text().split()) == 200


def test_siftflow_labels(tmp_path):
    base = write_siftflow(tmp_path)
    ds = build_dataset("siftflow", base, "trainval")
    image, label = ds[0]
    assert image.shape == (3, 8, 8) and set(label) == {"semantic", "geometric"}
    sem = _mat(base / "SemanticLabels" / SIFT_SUBDIR / "coast_arnat59.mat", "S").astype(np.int64)
    geo = _mat(base / "GeoLabels" / SIFT_SUBDIR / "coast_arnat59.mat", "S").astype(np.int64)
    assert torch.equal(label["semantic"], torch.from_numpy(np.where(sem == 0, 255, sem - 1)))
    assert torch.equal(label["geometric"], torch.from_numpy(np.where(geo <= 0, 255, geo - 1)))
    images, labels = collate_pad([ds[0], ds[1]])
    assert images.shape == (2, 3, 8, 8) and labels["geometric"].shape == (2, 8, 8)
    geo_ds = build_dataset("siftflow", base, "test", task="geometric")
    assert geo_ds.classes == ["sky", "horizontal", "vertical"] and geo_ds[0][1].shape == (8, 8)
    assert build_dataset("siftflow", base, "test", task="semantic").num_classes == 33
    with pytest.raises(ValueError, match="task"):
        build_dataset("siftflow", base, "test", task="depth")


def test_siftflow_shipped_lists_and_errors(tmp_path):
    base = write_siftflow(tmp_path, {"tmp": ["coast_natu975"]})
    with pytest.raises(DatasetError, match=r"missing image file .*insidecity_art947\.jpg"):  # 2nd id of test.txt
        build_dataset("siftflow", base, "test")
    scipy.io.savemat(str(base / "GeoLabels" / SIFT_SUBDIR / "coast_natu975.mat"), {"S": np.full((8, 8), 7.0)})
    with pytest.raises(DatasetError, match=r"GeoLabels.*coast_natu975\.mat: label values outside \[-1, 3\]"):
        build_dataset("siftflow", base, "tmp")[0]


# --- NYUD -------------------------------------------------------------------------------------------
def test_nyud_modalities(tmp_path):
    base = write_nyud(tmp_path)
    color = np.array(Image.open(base / "data" / "images" / "img_5003.png"))
    hha = np.array(Image.open(base / "data" / "hha" / "img_5003.png"))
    depth = np.array(Image.open(base / "data" / "depth" / "img_5003.png")).astype(np.float64)
    seg = _mat(base / "segmentation" / "img_5003.mat", "segmentation").astype(np.int64)
    expect_c = {"color": 3, "hha": 3, "depth": 1, "rgbd": 4, "color+hha": 6}
    for modality, c in expect_c.items():
        ds = build_dataset("nyud", base, "train", modality=modality)
        image, label = ds[0]
        assert image.shape == (c, 6, 8) and ds.channels == c and len(nyud_channel_means(modality)) == c
    assert torch.equal(label, torch.from_numpy(np.where(seg == 0, 255, seg - 1)))
    assert torch.equal(image[3:], torch.from_numpy(hha).permute(2, 0, 1).float())
    rgbd = build_dataset("nyud", base, "train", modality="rgbd")[0][0]
    assert torch.equal(rgbd[:3], torch.from_numpy(color).permute(2, 0, 1).float())
    logd = rgbd[3].double().numpy()
    assert logd[0, 0] == pytest.approx(NYUD_LOG_DEPTH_MEAN)  # missing depth
    assert np.allclose(logd[1:], np.log(depth[1:]), atol=1e-5) and 6.0 < logd[1:].mean() < 9.3
    assert NYUD_MEANS["log_depth"] == 7.844
    assert nyud_channel_means("rgbd") == (92.318, 97.203, 116.190, 7.844)
    assert len(build_dataset("nyud", base, "trainval")) == 3 and len(build_dataset("nyud", base, "test")) == 1


def test_nyud_shipped_lists_and_errors(tmp_path):
    assert [len(package_list("nyud", f"{s}.txt").read_text().split()) for s in ("train", "val", "test")] == \
        [381, 414, 654]
    base = write_nyud(tmp_path, {"mine": ["5003"]})
    assert build_dataset("nyud", base, "mine").ids == ["5003"]
    with pytest.raises(DatasetError, match=r"missing color file .*img_5449\.png"):
        build_dataset("nyud", base, "train")  # shipped list, data absent
    Image.fromarray(np.zeros((6, 8), np.uint8)).save(base / "data" / "hha" / "img_5003.png")
    with pytest.raises(DatasetError, match=r"nyud: cannot read HHA .*img_5003\.png: expected a 3-channel"):
        build_dataset("nyud", base, "mine", modality="hha")[0]
    Image.fromarray(np.zeros((5, 8), np.uint16)).save(base / "data" / "depth" / "img_5003.png")
    with pytest.raises(DatasetError, match=r"image files of 5003 differ in size"):
        build_dataset("nyud", base, "mine", modality="rgbd")[0]
    with pytest.raises(ValueError, match="modality"):
        build_dataset("nyud", base, "mine", modality="ir")


# --- PASCAL-Context ---------------------------------------------------------------------------------
def test_context_lists():
    full = package_list("context", "classes-400.txt").read_text().splitlines()
    assert len(full) == 459 and full[0] == "1: accordion"
    from fcnseg.data.context import CONTEXT_CLASSES

    assert len(CONTEXT_CLASSES) == 60 and CONTEXT_CLASSES[0] == "background" and CONTEXT_CLASSES[59] == "wood"


def test_context_labels(tmp_path):
    base = write_context(tmp_path)
    ds = build_dataset("pascal-context", tmp_path, "train")
    assert ds.root == base and ds.num_classes == 60 and ds.palette.shape == (60, 3)
    _, label = ds[0]
    raw = _mat(base / "trainval" / "2008_000002.mat", "LabelMap").astype(np.int64)
    # full-list index -> 59-class label: aeroplane 2->1, bedclothes 19->52, cloth 80->28, table 397->11
    mapping = {0: 0, 2: 1, 19: 52, 80: 28, 397: 11, 459: 0}
    assert torch.equal(label, torch.from_numpy(np.vectorize(mapping.get)(raw)))
    _, label_ig = build_dataset("pascal-context", tmp_path, "train", ignore_background=True)[0]
    assert torch.equal(label_ig, torch.where(label == 0, 255, label))


def test_context_own_labels_txt_and_errors(tmp_path):
    names = [ln.split(": ", 1)[1] for ln in package_list("context", "classes-400.txt").read_text().splitlines()]
    names[1], names[0] = names[0], names[1]  # swap 1 and 2: aeroplane becomes index 1
    base = write_context(tmp_path, labels_txt="".join(f"{i}: {n}\n" for i, n in enumerate(names, 1)),
                         label_values=(1,))
    assert build_dataset("pascal-context", base, "val")[0][1].unique().tolist() == [1]
    scipy.io.savemat(str(base / "trainval" / "2008_000007.mat"), {"LabelMap": np.full((6, 8), 500.0)})
    with pytest.raises(DatasetError, match=r"2008_000007\.mat: label values outside \[0, 459\]"):
        build_dataset("pascal-context", base, "val")[0]
    scipy.io.savemat(str(base / "trainval" / "2008_000007.mat"), {"LabelMap": np.zeros((2, 2, 2))})
    with pytest.raises(DatasetError, match=r"'LabelMap' is not a 2-D numeric matrix"):
        build_dataset("pascal-context", base, "val")[0]


@pytest.mark.parametrize("layout", ["beside-voc-dir", "beside-vocdevkit", "explicit"])
def test_context_folder_apart_from_vocdevkit(tmp_path, layout):
    """The reference reads data/pascal/VOC2010 and data/pascal-context/{trainval,labels.txt} apart."""
    import shutil
    base = write_context(tmp_path / "data" / "pascal")  # data/pascal/VOCdevkit/VOC2010, trainval inside
    expected = build_dataset("pascal-context", base, "train")[0][1]
    where = {"beside-voc-dir": base.parent / "pascal-context", "beside-vocdevkit": tmp_path / "data" / "pascal-context",
             "explicit": tmp_path / "elsewhere" / "ctx"}[layout]
    where.mkdir(parents=True)
    shutil.move(str(base / "trainval"), str(where / "trainval"))
    options = {"context_dir": str(where)} if layout == "explicit" else {}
    ds = build_dataset("pascal-context", base, "train", **options)
    assert ds.context_dir == where and torch.equal(ds[0][1], expected)


def test_context_without_trainval_names_where_it_looked(tmp_path):
    import shutil
    base = write_context(tmp_path)
    shutil.rmtree(base / "trainval")
    with pytest.raises(DatasetError, match=r"no trainval/ folder .*VOC2010.*context_dir"):
        build_dataset("pascal-context", base, "train")
