"""The accuracy gate's metrics and verdicts."""

from __future__ import annotations

import numpy as np
import pytest

from modelops.compress.accuracy import DatasetError, evaluate_gate

pytestmark = pytest.mark.unit

LABELS = np.array([0, 1, 2, 1])
PARENT = np.array([[9, 0, 0], [0, 9, 0], [0, 0, 9], [0, 9, 0]], dtype=np.float32)  # 100% correct
ONE_WRONG = np.array([[9, 0, 0], [0, 9, 0], [9, 0, 1], [0, 9, 0]], dtype=np.float32)  # 75%


@pytest.mark.parametrize(
    ("metric", "threshold", "compressed", "value", "passed"),
    [
        ("top1-accuracy", 25.0, ONE_WRONG, 75.0, True),
        ("top1-accuracy", 24.9, ONE_WRONG, 75.0, False),
        ("top1-accuracy", 0.0, PARENT, 100.0, True),
        ("top1-agreement", 0.75, ONE_WRONG, 0.75, True),
        ("top1-agreement", 0.76, ONE_WRONG, 0.75, False),
        ("cosine-similarity", 0.99, PARENT * 2, 1.0, True),
        ("cosine-similarity", 0.5, -PARENT, -1.0, False),
        ("max-abs-error", 9.0, ONE_WRONG, 9.0, True),
        ("max-abs-error", 8.9, ONE_WRONG, 9.0, False),
    ],
)
def test_gate(metric, threshold, compressed, value, passed) -> None:
    result = evaluate_gate(metric, threshold, PARENT, compressed, LABELS)
    assert result.compressed == pytest.approx(value)
    assert result.passed is passed
    if metric == "top1-accuracy":
        assert result.parent == 100.0 and result.drop == pytest.approx(100.0 - value)
    else:
        assert result.parent is None and result.drop is None


def test_rejection_message_names_the_drop() -> None:
    result = evaluate_gate("top1-accuracy", 1.0, PARENT, ONE_WRONG, LABELS)
    assert result.explain() == "top-1 accuracy dropped 25.00 points (100.00% -> 75.00%); allowed drop 1"


def test_cosine_of_zero_outputs() -> None:
    zeros = np.zeros((2, 3), dtype=np.float32)
    assert evaluate_gate("cosine-similarity", 1.0, zeros, zeros, None).compressed == 1.0
    assert evaluate_gate("cosine-similarity", 0.1, zeros, np.ones((2, 3), np.float32), None).compressed == 0.0


@pytest.mark.parametrize(
    ("labels", "compressed", "complaint"),
    [
        (None, ONE_WRONG, "needs an array 'labels'"),
        (np.array([0, 1]), ONE_WRONG, "'labels' has shape"),
        (LABELS, ONE_WRONG[:, :2], "output shape"),
    ],
)
def test_dataset_problems_are_explained(labels, compressed, complaint) -> None:
    with pytest.raises(DatasetError, match=complaint):
        evaluate_gate("top1-accuracy", 1.0, PARENT, compressed, labels)
