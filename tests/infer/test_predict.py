import gc
import os
import resource

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import fcnseg
from fcnseg.data import voc_colormap
from fcnseg.errors import FcnsegError
from fcnseg.infer.predict import (
    ImageReadError,
    ImageTooLargeError,
    _starts,
    format_summary,
    load_image,
    predict_labels,
    predict_paths,
)
from fcnseg.models.base import ModelSpec, SegmentationModel
from fcnseg.models.preprocessing import Preprocessing

PALETTE = voc_colormap(256)[:5]


def _tiny(k=5):
    torch.manual_seed(0)
    return fcnseg.create_model("fcn8s", k, width=1 / 16, fc_channels=32).eval()


def _varied_fcn32s(k=4):
    """Tiny FCN-32s with variance-preserving random weights, so its predictions vary over the image."""
    torch.manual_seed(0)
    m = fcnseg.create_model("fcn32s", k, width=1 / 16, fc_channels=512).eval()
    for mod in m.backbone.modules():
        if isinstance(mod, nn.Conv2d):
            nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
            nn.init.zeros_(mod.bias)
    nn.init.normal_(m.score.out.fc7.weight)
    return m


class PixelConv(SegmentationModel):
    """A 1×1 conv: every output pixel depends on its input pixel only. Claims output stride 8."""

    output_stride = 8
    in_channels = 3

    def __init__(self, k=4):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, k, 1)
        self.heads = {"out": k}
        self.spec = ModelSpec("pixelconv", k, "none")
        self.preprocessing = Preprocessing(bgr=False, scale=1 / 255, mean=(0.5, 0.5, 0.5))

    def features(self, x):
        return {"x": x}

    def forward_features(self, features, size):
        return {"out": self.conv(features["x"])}


def _rgb(h, w, seed=0):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def _write_images(d):
    """Good images in several modes (some in a sub-folder) and three bad files."""
    (d / "sub").mkdir(parents=True)
    Image.fromarray(_rgb(20, 30)).save(d / "a.png")
    Image.fromarray(_rgb(17, 23, 1)).save(d / "sub" / "b.jpg")
    p = Image.fromarray(np.arange(12 * 9, dtype=np.uint8).reshape(12, 9) % 4).convert("P")
    p.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] * 64)
    p.info["transparency"] = 0
    p.save(d / "sub" / "c.png")
    Image.fromarray(np.full((9, 11), 100, np.uint8)).save(d / "d.png")                  # L
    Image.fromarray(np.dstack([_rgb(8, 8), np.zeros((8, 8), np.uint8)])).save(d / "e.png")  # RGBA
    Image.new("CMYK", (10, 7), (0, 0, 0, 0)).save(d / "f.jpg")
    Image.fromarray(np.full((6, 5), 65535, np.uint16)).save(d / "g.png")               # 16-bit gray
    (d / "notes.txt").write_text("not an image, and not picked up from a folder")
    good = sorted(["a.png", "sub/b.jpg", "sub/c.png", "d.png", "e.png", "f.jpg", "g.png"])
    data = (d / "a.png").read_bytes()
    (d / "m_trunc.png").write_bytes(data[: len(data) // 2])
    (d / "n_empty.png").write_bytes(b"")
    (d / "o_text.jpg").write_text("hello")
    return good, ["m_trunc.png", "n_empty.png", "o_text.jpg"]


def test_load_image_converts_any_mode(tmp_path):
    _write_images(tmp_path)
    t = load_image(tmp_path / "a.png")
    assert t.dtype == torch.float32 and t.shape == (3, 20, 30)
    assert torch.equal(t, torch.from_numpy(_rgb(20, 30)).permute(2, 0, 1).float())
    assert (load_image(tmp_path / "d.png") == 100).all()                    # gray -> RGB
    assert (load_image(tmp_path / "g.png") == 255).all()                    # 16-bit 65535 -> 255
    assert (load_image(tmp_path / "f.jpg") > 250).all()                     # CMYK (0,0,0,0) is white
    rgba = load_image(tmp_path / "e.png")                                   # alpha dropped
    assert torch.equal(rgba, torch.from_numpy(_rgb(8, 8)).permute(2, 0, 1).float())
    im = Image.fromarray(_rgb(4, 6))
    exif = im.getexif()
    exif[0x0112] = 6  # EXIF orientation: rotate 90° clockwise to display
    im.save(tmp_path / "rot.jpg", exif=exif)
    assert load_image(tmp_path / "rot.jpg").shape == (3, 6, 4)
    pal = load_image(tmp_path / "sub" / "c.png")
    assert pal[:, 0, 1].tolist() == [255, 0, 0] and pal[:, 0, 3].tolist() == [0, 0, 255]


@pytest.mark.parametrize("name, reason", [("m_trunc.png", "truncated"), ("n_empty.png", "empty"),
                                          ("o_text.jpg", "not an image"), ("missing.png", "not found")])
def test_load_image_bad_files_one_line_error(tmp_path, name, reason):
    _write_images(tmp_path)
    with pytest.raises(ImageReadError) as err:
        load_image(tmp_path / name)
    msg = str(err.value)
    assert str(tmp_path / name) in msg and reason in msg and "\n" not in msg
    assert isinstance(err.value, FcnsegError) and isinstance(err.value, ValueError)


def test_predict_directory_with_bad_files(tmp_path):
    good, bad = _write_images(tmp_path / "in")
    model = _tiny()
    out = tmp_path / "out"
    with pytest.raises(ImageReadError, match="m_trunc.png"):
        list(predict_paths(model, [tmp_path / "in"], out, palette=PALETTE))
    with pytest.warns(UserWarning) as record:
        results = list(predict_paths(model, [tmp_path / "in"], out, palette=PALETTE, skip_bad=True,
                                     class_names=["bg", "a", "b", "c", "d"]))
    messages = " ".join(str(w.message) for w in record)
    assert all(name in messages for name in bad)
    assert [os.path.relpath(r["path"], tmp_path / "in") for r in results] == good
    a = next(r for r in results if r["path"].endswith("a.png"))
    assert a["size"] == (20, 30) and a["seconds"] >= 0 and not a["tiled"]
    assert sum(f for _, f in a["top"]) == pytest.approx(1.0) and a["top"][0][0] in ("bg", "a", "b", "c", "d")
    label = Image.open(a["label_path"])
    assert label.mode == "P" and label.size == (30, 20)
    expected = predict_labels(model, _rgb(20, 30))
    assert np.array_equal(np.asarray(label), expected)
    assert Image.open(a["overlay_path"]).mode == "RGB"
    assert (out / "sub__b_label.png").is_file() and (out / "sub__c_overlay.png").is_file()
    line = format_summary(a)
    assert "\n" not in line and "20x30" in line and "%" in line


def test_predict_single_files_and_name_clashes(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    for sub in ("x", "y"):
        Image.fromarray(_rgb(8, 8)).save(tmp_path / sub / "same.png")
    res = list(predict_paths(_tiny(), [tmp_path / "x" / "same.png", tmp_path / "y" / "same.png"], tmp_path / "o",
                             palette=PALETTE, overlay_format="jpg"))
    assert [os.path.basename(r["label_path"]) for r in res] == ["same_label.png", "same-1_label.png"]
    assert res[1]["overlay_path"].endswith("same-1_overlay.jpg")
    with pytest.raises(FileNotFoundError, match="nothere"):
        next(predict_paths(_tiny(), [tmp_path / "nothere"], tmp_path / "o", palette=PALETTE))


def test_streams_one_image_at_a_time(tmp_path):
    for i in range(3):
        Image.fromarray(_rgb(10, 12, i)).save(tmp_path / f"{i}.png")
    gen = predict_paths(_tiny(), [tmp_path], tmp_path / "out", palette=PALETTE)
    first = next(gen)
    assert first["path"].endswith("0.png")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["0_label.png", "0_overlay.png"]
    # the output folder lies inside the input folder: its files must not be picked up as inputs
    assert [os.path.basename(r["path"]) for r in gen] == ["1.png", "2.png"]


def test_huge_image_refused_unless_tiled(tmp_path):
    Image.fromarray(_rgb(40, 50)).save(tmp_path / "big.png")
    model = _tiny()
    with pytest.raises(ImageTooLargeError, match=r"big.png is 50x40 .*max_pixels=1000.*tile"):
        next(predict_paths(model, [tmp_path / "big.png"], tmp_path / "o", palette=PALETTE, max_pixels=1000))
    res = next(predict_paths(model, [tmp_path / "big.png"], tmp_path / "o", palette=PALETTE, max_pixels=1000,
                             tile=32, overlap=8))
    assert res["tiled"] and Image.open(res["label_path"]).size == (50, 40)


def test_tile_windows_cover_and_align():
    for length, tile, overlap, align in [(100, 32, 8, 8), (800, 672, 64, 32), (33, 32, 0, 1), (20, 32, 8, 8)]:
        wins = _starts(length, tile, overlap, align)
        assert wins[0][0] == 0 and wins[-1][1] == length
        assert all(a % align == 0 for a, _ in wins)
        assert all(a0 < a1 <= b0 for (a0, b0), (a1, _) in zip(wins, wins[1:]))  # ordered, overlapping or touching
        assert all(b - a <= max(tile + align - 1, length if length <= tile else 0) for a, b in wins)


def test_tiled_equals_whole_exactly_for_pixelwise_model():
    """Stitching is exact: for a per-pixel model every pixel must match, borders included."""
    model, rgb = PixelConv(), _rgb(70, 101)
    whole = predict_labels(model, rgb)
    assert len(np.unique(whole)) > 1
    for tile, overlap in [(32, 8), (16, 0), (50, 30)]:
        assert np.array_equal(predict_labels(model, rgb, tile=tile, overlap=overlap), whole)


def test_tiled_matches_whole_for_real_fcn_with_enough_overlap(monkeypatch):
    """A full-depth (receptive field ~400 px) tiny FCN-32s on a 40×800 image. Windows [0, 672) and
    [128, 800) (or [0, 680) and [96, 800)) split near column 400, ≥ 272 px from either window edge,
    beyond the receptive field, and start on multiples of 32, so each window sees the whole image's
    pooling grid: the labels agree (exactly here; ≤ 0.1 % allowed for float-order noise on other CPUs).
    Starting the second window off the stride-32 grid (at 120) makes ~2 % of pixels differ."""
    model, rgb = _varied_fcn32s(), _rgb(40, 800)
    whole = predict_labels(model, rgb)
    assert len(np.unique(whole)) > 1
    for tile in (672, 680):
        assert (predict_labels(model, rgb, tile=tile, overlap=64) != whole).mean() <= 1e-3
    monkeypatch.setattr(type(model), "output_stride", property(lambda m: 1))
    assert _starts(800, 680, 64, 1)[1][0] == 120
    assert (predict_labels(model, rgb, tile=680, overlap=64) != whole).mean() > 5e-3


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # not Linux: peak RSS (KiB on Linux, bytes on macOS) is the best available
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.slow
def test_memory_flat_over_200_images(tmp_path):
    """Current RSS after image 200 within 15 MB of after image 20 (measured: < 1 MB). Keeping only each
    image's score map (5×128×128 float, 0.3 MB) alive was measured to add ~56 MB over those 180 images."""
    src = tmp_path / "in"
    src.mkdir()
    img = Image.fromarray(_rgb(128, 128))
    for i in range(200):
        img.save(src / f"{i:03d}.png", compress_level=0)
    gen = predict_paths(_tiny(), [src], tmp_path / "out", palette=PALETTE)
    rss = {}
    for i, _ in enumerate(gen, 1):
        if i in (20, 200):
            gc.collect()
            rss[i] = _rss_mb()
    assert len(rss) == 2
    assert rss[200] - rss[20] < 15, rss


def test_colorize_and_overlay(tmp_path):
    from fcnseg.visualize import colorize, overlay

    pal = np.array([[10, 20, 30], [200, 100, 0]], np.uint8)
    label = torch.tensor([[0, 1], [255, 7]])
    im = colorize(label, pal)
    im.save(tmp_path / "l.png")
    back = Image.open(tmp_path / "l.png")
    assert back.mode == "P" and np.asarray(back).tolist() == [[0, 1], [255, 7]]
    rgb = np.asarray(back.convert("RGB"))
    assert rgb[0, 0].tolist() == [10, 20, 30] and rgb[0, 1].tolist() == [200, 100, 0]
    assert rgb[1, 0].tolist() == [0, 0, 0] and rgb[1, 1].tolist() == [0, 0, 0]   # void / unknown: black
    image = torch.full((3, 2, 2), 100.0)
    ov = np.asarray(overlay(image, label, pal, alpha=0.5))
    assert ov[0, 0].tolist() == [55, 60, 65] and ov[0, 1].tolist() == [150, 100, 50]
    assert ov[1, 0].tolist() == [100, 100, 100]                                   # void shows the image
    with pytest.raises(ValueError, match="sizes differ"):
        overlay(image, label[:1], pal)
