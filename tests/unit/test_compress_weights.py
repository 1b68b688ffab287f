"""Per-tensor weight transforms, checked against straightforward numpy references."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from modelops.compress import weights as W

pytestmark = pytest.mark.unit


def _reference_int8(weight: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    if axis is None:
        absmax = np.abs(weight).max()
        scale = np.float32(absmax / 127) or np.float32(1)
        return np.rint(weight * (np.float32(1) / scale)).astype(np.int8), scale
    other = tuple(i for i in range(weight.ndim) if i != axis % weight.ndim)
    absmax = np.abs(weight).max(axis=other)
    scale = (absmax / 127).astype(np.float32)
    scale[scale == 0] = 1
    shape = [1] * weight.ndim
    shape[axis] = -1
    inverse = (np.float32(1) / scale).astype(np.float32).reshape(shape)
    return np.rint(weight * inverse).astype(np.int8), scale


@pytest.mark.parametrize(
    ("shape", "axis"),
    [
        ((300, 70), 0),
        ((300, 70), 1),
        ((300, 70), -1),
        ((16, 3, 5, 5), 0),
        ((4, 6, 5), 1),
        ((5000, 9), 1),
        ((777,), None),
        ((40, 30), None),
    ],
)
@pytest.mark.parametrize("threads", [1, 2])
def test_int8_matches_reference(shape, axis, threads) -> None:
    weight = np.random.default_rng(1).standard_normal(shape, dtype=np.float32) * 3
    quantized, scale = W.quantize_int8(weight, axis, threads)
    expected_q, expected_scale = _reference_int8(weight, axis)
    assert quantized.dtype == np.int8 and quantized.shape == weight.shape
    np.testing.assert_array_equal(scale, expected_scale)
    np.testing.assert_array_equal(quantized, expected_q)
    assert np.abs(quantized).max() <= 127
    # Round-trip error is at most half a step of the channel's scale.
    shape_b = [1] * weight.ndim
    if axis is not None:
        shape_b[axis] = -1
    error = np.abs(quantized.astype(np.float32) * np.reshape(scale, shape_b if axis is not None else ()) - weight)
    assert np.all(error <= np.reshape(scale, shape_b if axis is not None else ()) * 0.5 + 1e-6)


def test_int8_handles_unaligned_views_and_zero_channels() -> None:
    raw = bytearray(4 * 64 * 33 + 1)
    weight = np.frombuffer(raw, dtype=np.float32, count=64 * 33, offset=1).reshape(64, 33)
    assert not weight.flags.aligned
    values = np.random.default_rng(2).standard_normal((64, 33), dtype=np.float32)
    values[:, 5] = 0
    values[7, :] = 0
    raw[1:] = values.tobytes()
    for axis in (0, 1):
        quantized, scale = W.quantize_int8(weight, axis, threads=2)
        expected_q, expected_scale = _reference_int8(values, axis)
        np.testing.assert_array_equal(quantized, expected_q)
        np.testing.assert_array_equal(scale, expected_scale)
    assert np.all(W.quantize_int8(weight, 1)[0][:, 5] == 0)


def test_int8_rejects_non_float32() -> None:
    with pytest.raises(TypeError, match="float32"):
        W.quantize_int8(np.ones((4, 4), dtype=np.float64), 0)


@pytest.mark.parametrize("amount", [0.0, 0.1, 0.5, 0.9, 0.95])
def test_unstructured_pruning_zeroes_exactly_the_smallest(amount: float) -> None:
    weight = np.random.default_rng(3).standard_normal((50, 40), dtype=np.float32)
    pruned = W.prune_unstructured(weight, amount)
    count = int(amount * weight.size)
    assert np.count_nonzero(pruned == 0) == count
    if count:
        assert np.abs(weight[pruned == 0]).max() <= np.abs(weight[pruned != 0]).min()
    np.testing.assert_array_equal(pruned[pruned != 0], weight[pruned != 0])


def test_unstructured_pruning_breaks_ties_to_the_exact_count() -> None:
    weight = np.array([[1, -1, 1, 2], [1, 3, -1, 4]], dtype=np.float32)
    pruned = W.prune_unstructured(weight, 0.5)
    assert np.count_nonzero(pruned == 0) == 4
    assert set(np.abs(weight[pruned != 0]).tolist()) >= {2.0, 3.0, 4.0}


@pytest.mark.parametrize(("shape", "axis"), [((20, 8), 0), ((20, 8), 1), ((6, 3, 3, 3), 0)])
def test_structured_pruning_zeroes_weakest_channels(shape, axis) -> None:
    rng = np.random.default_rng(4)
    weight = rng.standard_normal(shape, dtype=np.float32)
    moved = np.moveaxis(weight, axis, 0)
    scales = np.arange(1, moved.shape[0] + 1, dtype=np.float32)[::-1].copy()
    weight = np.moveaxis(moved * scales.reshape(-1, *[1] * (moved.ndim - 1)), 0, axis)
    pruned = W.prune_structured(weight, 0.5, axis)
    channels = np.moveaxis(pruned, axis, 0).reshape(shape[axis], -1)
    zero_channels = np.flatnonzero(~channels.any(axis=1))
    norms = np.linalg.norm(np.moveaxis(weight, axis, 0).reshape(shape[axis], -1), axis=1)
    np.testing.assert_array_equal(np.sort(zero_channels), np.sort(np.argsort(norms)[: shape[axis] // 2]))


def test_fp16_saturates_and_bf16_rounds_to_nearest() -> None:
    weight = np.array([1e6, -1e6, 0.1, 1.0], dtype=np.float32)
    half = W.to_fp16(weight)
    assert half.dtype == np.float16 and np.isfinite(half).all()
    assert half[0] == np.float16(65504)
    brain = W.to_bf16(weight)
    assert brain.dtype == ml_dtypes.bfloat16
    assert abs(float(brain[2]) - 0.1) <= 0.1 * 2**-8
    assert float(brain[0]) == pytest.approx(1e6, rel=2**-8)
