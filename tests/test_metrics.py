import math

import pytest

from vqc.metrics import auroc, average_precision


def test_auroc_hand_computed():
    # pairs (defect, good) ranked right: (0.8>0.1) (0.8>0.4) (0.35<0.4) (0.35>0.1) -> 3 of 4
    assert auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert auroc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)  # a tie counts half


def test_average_precision_hand_computed():
    # ranked: 0.8 (defect, P=1, R=.5), 0.4 (good), 0.35 (defect, P=2/3, R=1): AP = .5*1 + .5*2/3
    assert average_precision([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.5 + 1 / 3)


def test_single_class_is_undefined_not_a_crash():
    assert math.isnan(auroc([0, 0, 0], [0.1, 0.2, 0.3]))
    assert math.isnan(average_precision([0, 0], [0.1, 0.2]))
