"""``fcnseg predict clip.mp4``: the overlay video keeps frame count, size and rate; per-frame label PNGs
equal predicting the decoded frames as images; bad videos are one-line errors; nothing half-written."""
import numpy as np
import pytest
from PIL import Image
from support.nets import tiny_fcn
from support.video import decoded_frames, video_info, write_clip

from fcnseg.cli.main import main
from fcnseg.data import voc_colormap
from fcnseg.infer.predict import predict_labels
from fcnseg.infer.video import VideoReader, VideoReadError, predict_video
from fcnseg.models.checkpoint import save_checkpoint


@pytest.fixture
def ckpt(tmp_path):
    return str(save_checkpoint(tmp_path / "c.pt", tiny_fcn(classes=5)))


def _predict(*args) -> int:
    return main(["predict", *map(str, args), "--engine", "torch"])


def _labels(path):
    return np.asarray(Image.open(path))


def test_video_overlay_and_frame_labels(tmp_path, ckpt, capsys):
    src = tmp_path / "in"
    src.mkdir()
    write_clip(src / "clip.mp4", n=8, size=(48, 64), fps=5)
    Image.fromarray(decoded_frames(src / "clip.mp4")[0]).save(src / "still.png")  # mixed inputs
    out = tmp_path / "out"
    assert _predict(src, "--checkpoint", ckpt, "--out", out, "--frames", "--batch-size", "3") == 0
    text, err = capsys.readouterr()
    assert "in/clip.mp4  48x64  8 frames at 5 fps" in text and "1 image(s), 1 video(s)" in text, text
    assert "frame/s" in err  # the progress bar's rate
    assert video_info(out / "clip_overlay.mp4") == {"frames": 8, "width": 64, "height": 48, "fps": 5}
    assert sorted(p.name for p in (out / "clip_frames").iterdir()) == [f"{i:06d}_label.png" for i in range(8)]
    assert (out / "still_label.png").is_file() and (out / "still_overlay.png").is_file()

    # the same frames, decoded and predicted as images, give the same label maps
    as_images = tmp_path / "frames"
    as_images.mkdir()
    for i, f in enumerate(decoded_frames(src / "clip.mp4")):
        Image.fromarray(f).save(as_images / f"{i:06d}.png")
    assert _predict(as_images, "--checkpoint", ckpt, "--out", tmp_path / "ref", "--overlay", "none") == 0
    varied = set()
    for i in range(8):
        got = _labels(out / "clip_frames" / f"{i:06d}_label.png")
        assert np.array_equal(got, _labels(tmp_path / "ref" / f"{i:06d}_label.png")), i
        varied |= set(np.unique(got).tolist())
    assert len(varied) > 1
    assert np.array_equal(_labels(out / "still_label.png"), _labels(out / "clip_frames" / "000000_label.png"))
    # the overlay video shows the overlay predict writes for an image, up to H.264's loss (compared in luma:
    # 4:2:0 halves the colour resolution; measured 1.7 grey levels off the overlay, 48 off the plain frame)
    luma = lambda a: np.asarray(a, float) @ [0.299, 0.587, 0.114]  # noqa: E731
    first = luma(decoded_frames(out / "clip_overlay.mp4")[0])
    assert np.abs(first - luma(Image.open(out / "still_overlay.png"))).mean() < 4
    assert np.abs(first - luma(decoded_frames(src / "clip.mp4")[0])).mean() > 20


def test_odd_size_and_no_frames_option(tmp_path, ckpt, capsys):
    write_clip(tmp_path / "odd.mov", n=3, size=(33, 47), fps=12)
    assert _predict(tmp_path / "odd.mov", "--checkpoint", ckpt, "--out", tmp_path / "o", "--no-progress") == 0
    assert video_info(tmp_path / "o" / "odd_overlay.mp4") == {"frames": 3, "width": 47, "height": 33, "fps": 12}
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["odd_overlay.mp4"]
    assert capsys.readouterr().err == ""  # --no-progress: no bar


@pytest.mark.parametrize("content", [b"not a video at all\n", "truncated", b""])
def test_bad_video_is_one_line_naming_it(tmp_path, ckpt, capsys, content):
    good = write_clip(tmp_path / "good.mp4", n=2)
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(good.read_bytes()[:400] if content == "truncated" else content)
    out = tmp_path / "o"
    assert _predict(bad, good, "--checkpoint", ckpt, "--out", out) == 2
    err = capsys.readouterr().err.strip()
    assert f"cannot read video {bad}" in err and "\n" not in err and "Traceback" not in err, err
    assert not out.exists() or not list(out.iterdir())  # nothing of it written, not even a temporary file
    assert _predict(bad, good, "--checkpoint", ckpt, "--out", out, "--skip-bad", "--no-progress") == 0
    text, err = capsys.readouterr()
    assert err.startswith(f"fcnseg: warning: cannot read video {bad}") and err.strip().endswith("skipped"), err
    assert sorted(p.name for p in out.iterdir()) == ["good_overlay.mp4"] and "→" in text and "1 video(s) →" in text


def test_a_failure_midway_leaves_nothing_and_frames_stream(tmp_path, monkeypatch):
    write_clip(tmp_path / "c.mp4", n=7)
    model, seen, decoded = tiny_fcn(classes=5), [], []
    frames_of = VideoReader.__iter__

    def counted(self):
        for f in frames_of(self):
            decoded.append(1)
            yield f

    monkeypatch.setattr(VideoReader, "__iter__", counted)

    def labels_of(batch):
        seen.append(len(batch))
        assert len(decoded) == sum(seen)  # decoded as needed: one batch in memory, never the whole video
        if len(seen) == 2:
            raise RuntimeError("engine failed")
        return [predict_labels(model, f) for f in batch]

    (tmp_path / "o").mkdir()
    with pytest.raises(RuntimeError, match="engine failed"):
        predict_video(labels_of, tmp_path / "c.mp4", tmp_path / "o", "c", palette=voc_colormap(), frames=True,
                      batch_size=3)
    assert seen == [3, 3] and list((tmp_path / "o").iterdir()) == []
    seen.clear()
    res = predict_video(lambda b: [predict_labels(model, f) for f in b if not seen.append(len(b))],
                        tmp_path / "c.mp4", tmp_path / "o", "c", palette=voc_colormap(), frames=True, batch_size=3)
    assert res["frames"] == 7 and res["counts"].sum() == 7 * 48 * 64 and set(seen) == {3, 1}
    with pytest.raises(VideoReadError, match=r"c.mp4 has 64x48 frames, above max_pixels=1000"):
        predict_video(labels_of, tmp_path / "c.mp4", tmp_path / "o", "c", palette=voc_colormap(), max_pixels=1000)
