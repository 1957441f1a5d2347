"""Per-pixel loss: reductions, void, class weights, multi-head, patch sampling."""
import pytest
import torch
import torch.nn.functional as F

from fcnseg.train.losses import (
    apply_patch_sampling,
    check_labels,
    loss_denominator,
    patch_mask,
    pixel_loss_sum,
    segmentation_loss,
)


def batch(n=2, k=4, h=6, w=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(n, k, h, w, generator=g)
    labels = torch.randint(0, k, (n, h, w), generator=g)
    labels[:, 0, :] = 255
    return scores, labels


def test_sum_is_per_image_pixel_sum_and_mean_is_per_labelled_pixel():
    s, y = batch()
    per_pixel = F.cross_entropy(s, y, ignore_index=255, reduction="none")
    assert segmentation_loss(s, y, "sum") == pytest.approx(float(per_pixel.sum() / 2), rel=1e-6)
    assert segmentation_loss(s, y, "mean") == pytest.approx(float(per_pixel[y != 255].mean()), rel=1e-6)
    assert loss_denominator(y, "mean") == float((y != 255).sum())
    assert loss_denominator(y, "sum") == 2.0


def test_void_pixels_do_not_count():
    s, y = batch()
    s2 = s.clone()
    s2[:, :, 0, :] = 1e6  # scores under void labels are irrelevant
    assert segmentation_loss(s, y, "sum") == pytest.approx(float(segmentation_loss(s2, y, "sum")), rel=1e-6)


def test_class_weights_match_torch_weighted_mean():
    s, y = batch()
    w = torch.tensor([0.5, 1.0, 2.0, 0.0])
    ref = F.cross_entropy(s, y, weight=w, ignore_index=255)
    assert segmentation_loss(s, y, "mean", w) == pytest.approx(float(ref), rel=1e-5)
    assert pixel_loss_sum(s, y, w) == pytest.approx(float(F.cross_entropy(s, y, weight=w, ignore_index=255,
                                                                            reduction="sum")), rel=1e-6)


def test_multi_head_sums_heads():
    s1, y1 = batch(k=3, seed=1)
    s2, y2 = batch(k=5, seed=2)
    both = segmentation_loss({"a": s1, "b": s2}, {"a": y1, "b": y2}, "mean")
    assert both == pytest.approx(float(segmentation_loss(s1, y1) + segmentation_loss(s2, y2)), rel=1e-6)
    with pytest.raises(ValueError, match="heads"):
        segmentation_loss({"a": s1}, {"b": y1})


def test_patch_mask_keeps_whole_stride32_cells():
    m = patch_mask(70, 100, 0.5, torch.Generator().manual_seed(0))
    assert m.shape == (70, 100)
    for y0 in range(0, 70, 32):
        for x0 in range(0, 100, 32):
            cell = m[y0:y0 + 32, x0:x0 + 32]
            assert cell.all() or not cell.any()
    many = patch_mask(32 * 40, 32 * 40, 0.3, torch.Generator().manual_seed(1))
    assert 0.2 < many.float().mean() < 0.4


def test_apply_patch_sampling_voids_dropped_cells_in_every_head():
    y = torch.zeros(160, 160, dtype=torch.long)
    out = apply_patch_sampling({"a": y, "b": y + 1}, 0.5, torch.Generator().manual_seed(3))
    assert torch.equal(out["a"] == 255, out["b"] == 255)
    assert (out["a"] == 255).any() and (out["a"] == 0).any()
    assert apply_patch_sampling(y, 1.0) is y
    yb = apply_patch_sampling(torch.zeros(3, 40, 40, dtype=torch.long), 0.5, torch.Generator().manual_seed(0))
    assert yb.shape == (3, 40, 40)


def test_check_labels_names_the_bad_value():
    check_labels(torch.tensor([[0, 3, 255]]), 4)
    with pytest.raises(ValueError, match="label value 7 is not a class"):
        check_labels(torch.tensor([[0, 7, 255]]), 4, where="x")
    with pytest.raises(ValueError, match="head 'g'"):
        check_labels({"s": torch.tensor([1]), "g": torch.tensor([3])}, {"s": 2, "g": 3})


def test_image_mean_is_the_mean_of_per_image_pixel_means():
    """voc-fcn-alexnet's SoftmaxWithLoss normalize: true on batches of one: each image's loss is its
    per-labelled-pixel mean; unlike "mean", an image with few labelled pixels weighs as much as any."""
    s, y = batch(n=3)
    y[1, 1:4] = 255  # image 1 has fewer labelled pixels
    per_image = [F.cross_entropy(s[i:i + 1], y[i:i + 1], ignore_index=255) for i in range(3)]
    expected = float(sum(per_image) / 3)
    assert segmentation_loss(s, y, "image-mean") == pytest.approx(expected, rel=1e-6)
    assert segmentation_loss(s, y, "mean") != pytest.approx(expected, rel=1e-4)
    assert loss_denominator(y, "image-mean") == 3.0


def test_image_mean_gradient_equals_caffe_iter_size_accumulation():
    """Caffe's iter_size 20 with batch 1: gradients of 20 per-image normalised losses summed, then
    divided by iter_size. One batch of 20 under "image-mean" gives the same gradient."""
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 4, 3, padding=1)
    x = torch.randn(20, 3, 6, 7)
    s, y = batch(n=20, k=4)
    y[::3, 2:] = 255  # uneven labelled-pixel counts
    for i in range(20):
        segmentation_loss(net(x[i:i + 1]), y[i:i + 1], "mean").backward()
    accumulated = [p.grad.clone() / 20 for p in net.parameters()]
    net.zero_grad()
    segmentation_loss(net(x), y, "image-mean").backward()
    for a, p in zip(accumulated, net.parameters()):
        torch.testing.assert_close(p.grad, a, rtol=1e-5, atol=1e-7)
    net.zero_grad()
    segmentation_loss(net(x), y, "mean").backward()  # the pixel mean over the batch is another step
    assert not torch.allclose(next(net.parameters()).grad, accumulated[0], rtol=1e-3, atol=1e-6)
