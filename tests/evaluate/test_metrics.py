import math

import numpy as np
import pytest
import torch

from fcnseg.evaluate.metrics import ConfusionMatrix, compute_metrics

# rows: ground truth, columns: prediction. Class 2 is absent from labels and predictions (IU NaN,
# left out of the means); class 3 is predicted once but never labelled (IU 0, counted; accuracy NaN).
HIST = np.array([[3, 1, 0, 0],
                 [1, 2, 0, 1],
                 [0, 0, 0, 0],
                 [0, 0, 0, 0]])


def _pairs(hist):
    labels, preds = [], []
    for i, j in zip(*np.nonzero(hist)):
        labels += [i] * hist[i, j]
        preds += [j] * hist[i, j]
    return torch.tensor(labels), torch.tensor(preds)


def test_hand_computed_metrics():
    m = compute_metrics(HIST)
    assert m["pixel_accuracy"] == pytest.approx(5 / 8)
    # accuracy per class: 3/4, 2/4, NaN, NaN
    assert m["mean_accuracy"] == pytest.approx((3 / 4 + 2 / 4) / 2)
    # IU: 3/(4+4-3), 2/(4+3-2), NaN, 0/(0+1-0)
    assert m["per_class_iu"][:2] == pytest.approx([3 / 5, 2 / 5])
    assert math.isnan(m["per_class_iu"][2]) and m["per_class_iu"][3] == 0.0
    assert math.isnan(m["per_class_accuracy"][2]) and math.isnan(m["per_class_accuracy"][3])
    assert m["mean_iu"] == pytest.approx((3 / 5 + 2 / 5 + 0) / 3)
    # freq = 4/8, 4/8, 0, 0
    assert m["fw_iu"] == pytest.approx(0.5 * 3 / 5 + 0.5 * 2 / 5)
    assert m["class_pixels"] == [4, 4, 0, 0] and m["pixels"] == 8 and m["num_classes"] == 4


def test_exclude_leaves_classes_out_of_means_only():
    m = compute_metrics(HIST, exclude=[3])
    assert m["mean_iu"] == pytest.approx(0.5)
    assert m["mean_accuracy"] == pytest.approx(0.625)
    assert m["pixel_accuracy"] == pytest.approx(0.625)
    assert m["fw_iu"] == pytest.approx(0.5)
    assert m["excluded"] == [3] and m["per_class_iu"][3] == 0.0
    with pytest.raises(ValueError, match="outside"):
        compute_metrics(HIST, exclude=[4])


def test_exclude_leaves_a_class_with_pixels_out_of_fw_iu():
    # class 2 is labelled and predicted (IU 3/5) but excluded: it counts in pixel accuracy only
    hist = np.array([[3, 1, 0],
                     [1, 2, 1],
                     [0, 1, 3]])
    m = compute_metrics(hist, exclude=[2])
    # IU 3/5, 2/6, 3/5; freq = row sums / all counted pixels = 4/12 each (score.py), summed over kept classes
    assert m["fw_iu"] == pytest.approx(4 / 12 * 3 / 5 + 4 / 12 * 2 / 6)
    assert m["mean_iu"] == pytest.approx((3 / 5 + 2 / 6) / 2)
    assert m["mean_accuracy"] == pytest.approx((3 / 4 + 2 / 4) / 2)
    assert m["pixel_accuracy"] == pytest.approx(8 / 12)
    assert compute_metrics(hist)["fw_iu"] == pytest.approx(4 / 12 * (3 / 5 + 2 / 6 + 3 / 5))


def test_update_ignores_void_and_out_of_range_labels():
    label, pred = _pairs(HIST)
    label = torch.cat([label, torch.tensor([255, 4, 7, -1])])
    pred = torch.cat([pred, torch.tensor([0, 1, 2, 3])])
    cm = ConfusionMatrix(4)
    cm.update(pred[:5].reshape(1, 5), label[:5].reshape(1, 5))  # any shape, several calls
    cm.update(pred[5:], label[5:])
    assert cm.matrix.dtype == torch.int64 and cm.matrix.tolist() == HIST.tolist()
    assert cm.compute()["mean_iu"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="shape"):
        cm.update(pred[:3], label[:4])
    with pytest.raises(ValueError, match="predictions outside"):
        cm.update(torch.tensor([4]), torch.tensor([0]))


def _reference_score(hist):
    """The formulas of the FCN reference's score.py, written out independently."""
    hist = hist.astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = np.diag(hist).sum() / hist.sum()
        cls_acc = np.nanmean(np.diag(hist) / hist.sum(1))
        iu = np.diag(hist) / (hist.sum(1) + hist.sum(0) - np.diag(hist))
    freq = hist.sum(1) / hist.sum()
    return acc, cls_acc, np.nanmean(iu), (freq[freq > 0] * iu[freq > 0]).sum()


def test_matches_reference_formulas_on_random_data():
    g = torch.Generator().manual_seed(0)
    label = torch.randint(0, 6, (3, 17, 23), generator=g)
    label[label == 5] = 255
    pred = torch.randint(0, 7, (3, 17, 23), generator=g)
    cm = ConfusionMatrix(7)
    cm.update(pred, label)
    hist = np.zeros((7, 7), int)
    for lab, p in zip(label.flatten().tolist(), pred.flatten().tolist()):
        if lab < 7:
            hist[lab, p] += 1
    assert cm.matrix.numpy().tolist() == hist.tolist()
    m = cm.compute()
    got = (m["pixel_accuracy"], m["mean_accuracy"], m["mean_iu"], m["fw_iu"])
    assert got == pytest.approx(_reference_score(hist))


def test_merge_and_all_reduce():
    label, pred = _pairs(HIST)
    a, b = ConfusionMatrix(4), ConfusionMatrix(4)
    a.update(pred, label)
    b.update(pred, label)
    assert a.merge(b).matrix.tolist() == (2 * HIST).tolist()
    a.all_reduce(lambda t: t * 3)                 # reducer returning the sum
    assert a.matrix.tolist() == (6 * HIST).tolist()

    def in_place(t):                               # in-place reducer returning None
        t.mul_(2)

    a.all_reduce(in_place)
    assert a.matrix.tolist() == (12 * HIST).tolist()
    assert a.all_reduce(None) is a
    with pytest.raises(ValueError, match="merge"):
        a.merge(ConfusionMatrix(3))


def test_empty_matrix_gives_nan():
    m = ConfusionMatrix(3).compute()
    assert all(math.isnan(m[k]) for k in ("pixel_accuracy", "mean_accuracy", "mean_iu", "fw_iu"))
