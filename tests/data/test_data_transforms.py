"""Joint transforms and padded batching."""
import pytest
import torch
from torch.utils.data import DataLoader

from fcnseg.data import (
    ColorJitter,
    Compose,
    RandomCrop,
    RandomHorizontalFlip,
    RandomScale,
    Resize,
    build_dataset,
    collate_pad,
)
from fcnseg.data.fixtures import write_camvid


def _pair(h=6, w=8, c=3):
    image = torch.arange(c * h * w, dtype=torch.float32).reshape(c, h, w) % 256
    label = torch.arange(h * w).reshape(h, w) % 11
    return image, label


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_random_scale_nearest_labels():
    image, label = _pair()
    out_i, out_l = RandomScale(2.0, 2.0)(image, label)
    assert out_i.shape == (3, 12, 16) and out_l.shape == (12, 16) and out_l.dtype == torch.int64
    assert torch.equal(out_l[::2, ::2], label)  # nearest: no new label values
    small_i, small_l = RandomScale(0.5, 0.5)(image, {"semantic": label, "geometric": label})
    assert small_i.shape == (3, 3, 4) and small_l["geometric"].shape == (3, 4)


def test_random_crop_pads_with_fill_and_ignore():
    image, label = _pair(4, 5)
    out_i, out_l = RandomCrop((6, 7), fill=(1.0, 2.0, 3.0), generator=_gen())(image, label)
    assert out_i.shape == (3, 6, 7) and out_l.shape == (6, 7)
    assert torch.equal(out_i[:, :4, :5], image) and torch.equal(out_l[:4, :5], label)
    assert (out_l[4:] == 255).all() and (out_l[:, 5:] == 255).all()
    assert out_i[0, 5, 6] == 1 and out_i[2, 5, 6] == 3
    crop_i, crop_l = RandomCrop(3, generator=_gen())(*_pair(6, 8))
    assert crop_i.shape == (3, 3, 3) and crop_l.shape == (3, 3)
    # the crop is the same window in image and label
    full_i, full_l = _pair(6, 8)
    hits = [(yy, xx) for yy in range(4) for xx in range(6)
            if torch.equal(full_i[:, yy:yy + 3, xx:xx + 3], crop_i)]
    assert len(hits) == 1 and torch.equal(full_l[hits[0][0]:hits[0][0] + 3, hits[0][1]:hits[0][1] + 3], crop_l)


def test_flip_and_determinism():
    image, label = _pair()
    out_i, out_l = RandomHorizontalFlip(p=1.0)(image, label)
    assert torch.equal(out_i, image.flip(-1)) and torch.equal(out_l, label.flip(-1))
    assert RandomHorizontalFlip(p=0.0)(image, label)[1] is label

    def run(seed):
        g = _gen(seed)
        t = Compose([RandomScale(0.5, 2.0, generator=g), RandomCrop(5, generator=g),
                     RandomHorizontalFlip(generator=g), ColorJitter(0.3, 0.3, 0.3, generator=g)])
        return t(image, label)

    a, b = run(1), run(1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    torch.manual_seed(3)
    c = RandomCrop(3)(image, label)
    torch.manual_seed(3)
    assert torch.equal(RandomCrop(3)(image, label)[0], c[0])


def test_color_jitter_image_only():
    image, label = _pair(c=4)
    out_i, out_l = ColorJitter(0.5, 0.5, 0.5, generator=_gen())(image, label)
    assert out_l is label and torch.equal(out_i[3], image[3])
    assert not torch.equal(out_i[:3], image[:3]) and out_i.min() >= 0 and out_i.max() <= 255
    gray = torch.full((3, 2, 2), 100.0)
    assert torch.allclose(ColorJitter(saturation=0.9, generator=_gen())(gray, label)[0], gray)
    depth = torch.rand(1, 2, 2)
    assert ColorJitter(0.5)(depth, label)[0] is depth


def test_resize():
    image, label = _pair(6, 8)
    out_i, out_l = Resize(scale=0.5)(image, label)
    assert out_i.shape == (3, 3, 4) and out_l.shape == (3, 4)
    assert set(out_l.unique().tolist()) <= set(label.unique().tolist())
    assert Resize(size=(2, 2))(image, label)[0].shape == (3, 2, 2)
    with pytest.raises(ValueError):
        Resize()


def test_collate_pad():
    a, b = _pair(4, 5), _pair(6, 3)
    images, labels = collate_pad([a, b])
    assert images.shape == (2, 3, 6, 5) and labels.shape == (2, 6, 5) and labels.dtype == torch.int64
    assert torch.equal(images[0, :, :4, :5], a[0]) and (images[0, :, 4:] == 0).all()
    assert (labels[0, 4:] == 255).all() and (labels[1, :, 3:] == 255).all()
    d_images, d_labels = collate_pad([(a[0], {"semantic": a[1], "geometric": a[1]}),
                                      (b[0], {"semantic": b[1], "geometric": b[1]})])
    assert d_labels["semantic"].shape == (2, 6, 5) and torch.equal(d_labels["geometric"], labels)


def test_dataloader_with_transforms(tmp_path):
    root = write_camvid(tmp_path, {"train": 3}, size=(6, 8))
    ds = build_dataset("camvid", root, "train", transform=Compose([RandomScale(0.5, 1.5), RandomHorizontalFlip()]))
    images, labels = next(iter(DataLoader(ds, batch_size=3, collate_fn=collate_pad)))
    assert images.shape[:2] == (3, 3) and labels.shape[0] == 3 and images.shape[-2:] == labels.shape[-2:]
