"""One image reader for datasets and predict: the same pixels, the same limits."""
import numpy as np
import pytest
from PIL import Image
from support.fault_corpus import png_bytes

from fcnseg.data.camvid import CamVid
from fcnseg.data.fixtures import write_camvid
from fcnseg.data.io import DatasetError, read_rgb
from fcnseg.infer.predict import ImageTooLargeError, read_rgb_uint8

VALUES = np.array([[0, 255, 256, 1000], [32896, 40000, 65280, 65535]], dtype=np.uint16)


def _gray16(path):
    Image.fromarray(VALUES).save(path)  # a 16-bit grey PNG
    assert Image.open(path).mode.startswith("I")
    return path


def test_16bit_grey_png_reads_the_same_in_datasets_and_predict(tmp_path):
    root = write_camvid(tmp_path / "camvid", {"val": 1}, size=VALUES.shape)
    image = next((root / "val").glob("*.png"))
    _gray16(image)
    from_dataset = CamVid(root, "val").load(0)[0].numpy().transpose(1, 2, 0)
    from_predict = read_rgb_uint8(image)
    assert np.array_equal(from_dataset, from_predict)
    assert np.array_equal(read_rgb(image, "test"), from_predict)
    expected = (VALUES >> 8).astype(np.uint8)  # 16 → 8 bit keeps the high byte (x257 inverted)
    assert np.array_equal(from_predict, np.repeat(expected[:, :, None], 3, axis=2))


def test_one_pixel_limit_for_datasets_and_predict(tmp_path):
    from fcnseg.data.io import DATASET_MAX_PIXELS, DEFAULT_MAX_PIXELS

    path = tmp_path / "big.png"
    path.write_bytes(png_bytes(12000, 8000, 8, 2))  # 96 MP declared in the header, no pixel data
    with pytest.raises(DatasetError, match="above max_pixels"):  # refused from the header, as predict does
        read_rgb(path, "test")
    with pytest.raises(ImageTooLargeError, match="above max_pixels"):
        read_rgb_uint8(path)
    mid = tmp_path / "photo.png"
    mid.write_bytes(png_bytes(5000, 4000, 8, 2))  # 20 MP: a large photo, fine for a dataset, tiled in predict
    assert DEFAULT_MAX_PIXELS < 20_000_000 < DATASET_MAX_PIXELS
    with pytest.raises(DatasetError) as e:  # decoded (and found truncated), not refused by size
        read_rgb(mid, "test")
    assert "above max_pixels" not in str(e.value)
    with pytest.raises(ImageTooLargeError, match="above max_pixels"):
        read_rgb_uint8(mid)


def test_size_guard_counts_the_networks_padded_compute(tmp_path):
    import torch

    import fcnseg
    from fcnseg.data.io import DEFAULT_MAX_PIXELS, padded_pixels
    from fcnseg.infer.predict import predict_paths

    torch.manual_seed(0)
    caffe = fcnseg.create_model("fcn8s", 3, width=1 / 16, fc_channels=16).eval()
    same = fcnseg.create_model("fcn8s", 3, width=1 / 16, fc_channels=16, alignment="same").eval()
    assert caffe.input_padding == 100 and same.input_padding < 100
    assert padded_pixels(100000, 1, 100) == 100200 * 201 > DEFAULT_MAX_PIXELS > 100000  # the 1×100000 image
    Image.fromarray(np.zeros((1, 600, 3), np.uint8)).save(tmp_path / "strip.png")
    run = dict(palette=np.zeros((3, 3), np.uint8), max_pixels=20_000, overlay_format=None)
    with pytest.raises(ImageTooLargeError, match=r"600x1 \(0.0 MP; 0.2 MP with the network's 100 px padding\)"):
        list(predict_paths(caffe, [tmp_path / "strip.png"], tmp_path / "a", **run))  # 600 px, 160800 computed
    assert len(list(predict_paths(same, [tmp_path / "strip.png"], tmp_path / "b", **run))) == 1
    tiled = list(predict_paths(caffe, [tmp_path / "strip.png"], tmp_path / "c", tile=256, **run))
    assert tiled[0]["tiled"] and tiled[0]["size"] == (1, 600)
