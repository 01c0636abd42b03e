"""The ClassSR losses and the PSNR metrics against values computed by hand."""

import math

import numpy as np
import pytest
import torch

from classsr_cli.metrics import psnr, psnr_y, rgb_to_y
from classsr_cli.pixels import unit_to_uint8
from classsr_cli.train.losses import LossWeights, average_loss, class_loss, classsr_loss


def probs(*rows):
    return torch.tensor(rows, dtype=torch.float32)


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([[1, 0, 0]], 0.0),  # one-hot: all three pairs differ by 1, 1, 0 -> (3-1) - 2
        ([[1 / 3, 1 / 3, 1 / 3]], 2.0),  # uniform: no spread -> M-1
        ([[0.5, 0.5, 0]], 1.0),  # |0| + |0.5| + |0.5| = 1
        ([[0.9, 0.05, 0.05]], 2.0 - (0.85 + 0.85 + 0.0)),
        ([[1, 0, 0], [1 / 3, 1 / 3, 1 / 3]], 1.0),  # mean over samples
        ([[0.9, 0.1]], 0.2),  # M = 2: 1 - 0.8
        ([[0.25, 0.25, 0.25, 0.25]], 3.0),  # M = 4 uniform -> M-1
        ([[0, 0, 0, 1]], 0.0),
    ],
)
def test_class_loss(rows, expected):
    assert class_loss(probs(*rows)).item() == pytest.approx(expected, abs=1e-6)


def test_average_loss():
    # B = 6, M = 3, everything in class 0: sums (6, 0, 0), B/M = 2 -> (4 + 2 + 2) / (4 * 2) = 1
    assert average_loss(probs(*[[1, 0, 0]] * 6)).item() == pytest.approx(1.0)
    # two sub-images per class, or uniform probabilities: perfectly balanced
    assert average_loss(probs(*[[1, 0, 0], [0, 1, 0], [0, 0, 1]] * 2)).item() == pytest.approx(0.0)
    assert average_loss(probs(*[[1 / 3] * 3] * 5)).item() == pytest.approx(0.0, abs=1e-6)
    # B = 4, M = 2, all in class 1: (2 + 2) / (4 * 2) = 0.5, i.e. (M-1)/2 for any B
    assert average_loss(probs(*[[0, 1]] * 4)).item() == pytest.approx(0.5)
    # B = 4, M = 2, sums (3, 1): (1 + 1) / 8
    assert average_loss(probs(*[[1, 0]] * 3, [0, 1])).item() == pytest.approx(0.25)


def test_weighted_sum_and_terms():
    sr, hr = torch.zeros(2, 3, 4, 4), torch.full((2, 3, 4, 4), 0.1)
    p = probs([1, 0, 0], [1, 0, 0])  # class 0, average (2 - 2/3 + 2 * 2/3) / (8/3) = 1
    total, terms = classsr_loss(sr, hr, p, LossWeights())
    assert terms["l1"].item() == pytest.approx(0.1)
    assert terms["class"].item() == pytest.approx(0.0)
    assert terms["average"].item() == pytest.approx(1.0)
    assert total.item() == pytest.approx(2000 * 0.1 + 0 + 6 * 1.0, rel=1e-6)
    # the official weights 1000:0.5:3 are the same ratio: exactly half the loss
    half, _ = classsr_loss(sr, hr, p, LossWeights(1000, 0.5, 3))
    assert half.item() == pytest.approx(total.item() / 2, rel=1e-6)


def test_losses_give_gradients_to_the_probabilities():
    logits = torch.randn(8, 3, requires_grad=True)
    p = torch.softmax(logits, dim=1)
    (class_loss(p) + average_loss(p)).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_psnr_by_hand():
    a = np.zeros((12, 12, 3), np.uint8)
    b = np.ones((12, 12, 3), np.uint8)
    assert psnr(a, b, border=0) == pytest.approx(20 * math.log10(255))  # MSE 1
    assert psnr(a, a) == math.inf
    # a difference only in the 4-pixel border is cropped away
    c = a.copy()
    c[:4] = 200
    assert psnr(a, c, border=4) == math.inf
    assert psnr(a, c, border=0) < 20
    # float images are [0, 1]: the same numbers as their 8-bit versions
    assert psnr(a.astype(np.float32), b.astype(np.float32) / 255, border=0) == pytest.approx(
        48.1308, abs=1e-4
    )
    with pytest.raises(ValueError):
        psnr(a, b[:10])


def test_psnr_y_and_conversion():
    white, black = np.full((9, 9, 3), 255, np.uint8), np.zeros((9, 9, 3), np.uint8)
    assert rgb_to_y(white)[0, 0] == pytest.approx(235.0, abs=1e-3)  # MATLAB rgb2ycbcr: 16..235
    assert rgb_to_y(black)[0, 0] == pytest.approx(16.0)
    assert psnr_y(white, black, border=0) == pytest.approx(20 * math.log10(255 / 219), abs=1e-4)
    assert unit_to_uint8(np.array([-0.1, 0.0, 0.5, 1.0, 1.2])).tolist() == [0, 0, 128, 255, 255]


def test_label_guidance_is_cross_entropy_and_off_by_default():
    sr = torch.zeros(2, 3, 4, 4)
    hr = torch.zeros(2, 3, 4, 4)
    probs = torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]])
    labels = torch.tensor([0, 2])
    plain, terms = classsr_loss(sr, hr, probs, LossWeights(), labels=labels)
    assert "label" not in terms
    guided, terms = classsr_loss(sr, hr, probs, LossWeights(labels=3.0), labels=labels)
    expected = -(math.log(0.5) + math.log(0.8)) / 2
    assert terms["label"].item() == pytest.approx(expected, rel=1e-6)
    assert (guided - plain).item() == pytest.approx(3.0 * expected, rel=1e-6)
