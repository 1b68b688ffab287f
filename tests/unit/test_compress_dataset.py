"""Evaluation datasets: one array per model input (or `inputs` for one input), and `labels`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelops.compress.accuracy import DatasetError
from modelops.compress.dataset import Dataset
from modelops.compress.runtime import EVAL_BATCH, InputSpec

pytestmark = pytest.mark.unit

BERT = (
    InputSpec("input_ids", np.dtype(np.int64), (-1, -1)),
    InputSpec("attention_mask", np.dtype(np.int64), (-1, -1)),
    InputSpec("token_type_ids", np.dtype(np.int64), (-1, -1)),
)


def npz(tmp_path: Path, **arrays: np.ndarray) -> Dataset:
    path = tmp_path / "eval.npz"
    np.savez(path, **arrays)
    return Dataset.from_npz(path)


def tokens(n: int = 6, length: int = 16, dtype=np.int64) -> np.ndarray:
    return np.arange(n * length, dtype=dtype).reshape(n, length) % 100


def test_every_input_is_fed_from_its_own_array(tmp_path) -> None:
    dataset = npz(tmp_path, input_ids=tokens(), attention_mask=np.ones((6, 16), np.int32),
                  token_type_ids=np.zeros((6, 16), np.int64), labels=np.arange(6))
    feeds, batch = dataset.feeds(BERT)
    assert set(feeds) == {"input_ids", "attention_mask", "token_type_ids"} and batch == EVAL_BATCH
    assert feeds["attention_mask"].dtype == np.int64, "int32 data is cast to the model's int64"
    assert dataset.samples == 6 and list(dataset.labels) == list(range(6))


def test_the_single_input_form_keeps_working(tmp_path) -> None:
    dataset = npz(tmp_path, inputs=np.ones((4, 64), np.float64))
    feeds, _ = dataset.feeds((InputSpec("input", np.dtype(np.float32), (-1, 64)),))
    assert list(feeds) == ["input"] and feeds["input"].dtype == np.float32


def test_every_missing_input_is_named(tmp_path) -> None:
    dataset = npz(tmp_path, input_ids=tokens())
    with pytest.raises(DatasetError, match="no array for inputs 'attention_mask', 'token_type_ids' \\(it has: 'input_ids'\\)"):
        dataset.feeds(BERT)


def test_an_input_with_a_default_may_be_left_out(tmp_path) -> None:
    dataset = npz(tmp_path, input_ids=tokens(), attention_mask=tokens())
    optional = (*BERT[:2], InputSpec("token_type_ids", np.dtype(np.int64), (-1, -1), optional=True))
    feeds, _ = dataset.feeds(optional)
    assert set(feeds) == {"input_ids", "attention_mask"}


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"attention_mask": np.ones((6, 16), np.float32)}, "input 'attention_mask': the dataset holds float32; the model takes int64"),
        ({"attention_mask": np.ones((6, 16, 1), np.int64)}, "input 'attention_mask': the dataset's shape [6, 16, 1] has rank 3; the model takes rank 2"),
        ({"attention_mask": np.ones((5, 16), np.int64)}, "input 'attention_mask': 5 samples; the other inputs have 6"),
        ({"labels": np.arange(5)}, "'labels' has 5 entries; the inputs have 6 samples"),
    ],
)
def test_type_shape_and_count_mismatches_are_named(tmp_path, arrays, message) -> None:
    base = {"input_ids": tokens(), "attention_mask": tokens(), "token_type_ids": tokens()}
    dataset = npz(tmp_path, **(base | arrays))
    with pytest.raises(DatasetError) as raised:
        dataset.feeds(BERT)
    assert message in str(raised.value)


def test_fixed_dimensions_must_match_and_a_fixed_batch_sets_the_evaluation_batch(tmp_path) -> None:
    spec = (InputSpec("x", np.dtype(np.float32), (-1, 64)),)
    with pytest.raises(DatasetError, match="differs from the model's \\[-1, 64\\] at dimension 1"):
        npz(tmp_path, x=np.ones((3, 32), np.float32)).feeds(spec)
    fixed = (InputSpec("x", np.dtype(np.float32), (2, 64)),)
    assert npz(tmp_path, x=np.ones((4, 64), np.float32)).feeds(fixed)[1] == 2
    with pytest.raises(DatasetError, match="multiple of it; the dataset has 3"):
        npz(tmp_path, x=np.ones((3, 64), np.float32)).feeds(fixed)


def test_unreadable_and_empty_datasets_are_refused(tmp_path) -> None:
    path = tmp_path / "bad.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="not a readable .npz"):
        Dataset.from_npz(path)
    with pytest.raises(DatasetError, match="no input arrays"):
        npz(tmp_path, labels=np.arange(3))
    with pytest.raises(DatasetError, match="'labels' must be a 1-D integer array"):
        npz(tmp_path, x=np.ones((3, 2)), labels=np.ones(3))


def test_the_single_input_form_feeds_a_sole_input_that_has_a_default(tmp_path) -> None:
    dataset = npz(tmp_path, inputs=np.ones((4, 64), np.float32))
    feeds, _ = dataset.feeds((InputSpec("input", np.dtype(np.float32), (-1, 64), optional=True),))
    assert list(feeds) == ["input"]
    with pytest.raises(DatasetError, match="feeds none of the model's inputs \\('x'\\)"):
        npz(tmp_path, other=np.ones((4, 64), np.float32)).feeds((InputSpec("x", np.dtype(np.float32), (-1, 64), optional=True),))
