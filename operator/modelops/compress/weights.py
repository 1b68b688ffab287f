"""Per-tensor weight transforms in numpy: pruning, fp16/bf16 rounding, int8 quantization.

Every function takes one weight tensor and returns new arrays, so a model is processed
tensor by tensor. The int8 kernel works on cache-sized row blocks in a few threads (numpy
releases the GIL), which keeps it bound by memory bandwidth rather than by temporaries.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import ml_dtypes
import numpy as np

INT8_MAX = 127
REDUCED_RANGE = 64  # onnxruntime's reduce_range for symmetric int8 weights: [-64, 64]
FP16_MAX = float(np.finfo(np.float16).max)
_BLOCK_BYTES = 1 << 20

T = TypeVar("T")


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def prune_unstructured(weight: np.ndarray, amount: float) -> np.ndarray:
    """Zero the floor(amount × size) entries of smallest magnitude in this tensor."""
    count = int(amount * weight.size)
    pruned = np.array(weight, dtype=weight.dtype, copy=True)
    if count == 0:
        return pruned
    magnitude = np.abs(pruned).reshape(-1)
    threshold = np.partition(magnitude, count - 1)[count - 1]
    flat = pruned.reshape(-1)
    below = magnitude < threshold
    flat[below] = 0
    # Ties at the threshold: zero just enough of them, in index order, to reach `count`.
    remaining = count - int(np.count_nonzero(below))
    if remaining > 0:
        flat[np.flatnonzero(magnitude == threshold)[:remaining]] = 0
    return pruned


def prune_structured(weight: np.ndarray, amount: float, axis: int) -> np.ndarray:
    """Zero whole output channels (slices along `axis`): the floor(amount × channels) of lowest L2 norm."""
    axis = axis % weight.ndim
    channels = weight.shape[axis]
    count = int(amount * channels)
    pruned = np.array(weight, dtype=weight.dtype, copy=True)
    if count == 0:
        return pruned
    other_axes = tuple(i for i in range(weight.ndim) if i != axis)
    norms = np.sqrt(np.sum(np.square(weight, dtype=np.float64), axis=other_axes))
    weakest = np.argsort(norms, kind="stable")[:count]
    index: list[slice | np.ndarray] = [slice(None)] * weight.ndim
    index[axis] = weakest
    pruned[tuple(index)] = 0
    return pruned


def to_fp16(weight: np.ndarray) -> np.ndarray:
    """Round to float16, saturating instead of overflowing to infinity.

    Works in 1 MiB chunks through an aligned scratch buffer, so the only full-size array is
    the float16 result (weights inside a protobuf are often unaligned, which numpy's fast
    loops need).
    """
    source = np.ascontiguousarray(weight, dtype=np.float32).reshape(-1)
    result = np.empty(source.shape, dtype=np.float16)
    step = _BLOCK_BYTES // 4
    scratch = np.empty(min(step, source.size), dtype=np.float32)
    for start in range(0, source.size, step):
        chunk = scratch[: min(step, source.size - start)]
        np.copyto(chunk, source[start : start + step])
        np.clip(chunk, -FP16_MAX, FP16_MAX, out=chunk)
        np.copyto(result[start : start + step], chunk, casting="same_kind")
    return result.reshape(weight.shape)


def to_bf16(weight: np.ndarray) -> np.ndarray:
    """Round to bfloat16 (round to nearest even); bfloat16 has float32's range."""
    return weight.astype(ml_dtypes.bfloat16)


def _blocks(rows: int, row_bytes: int) -> list[tuple[int, int]]:
    step = max(1, _BLOCK_BYTES // max(1, row_bytes))
    return [(start, min(start + step, rows)) for start in range(0, rows, step)]


def _run_split(blocks: list[tuple[int, int]], work: Callable[[list[tuple[int, int]]], T], threads: int) -> list[T]:
    """Run `work` on interleaved shares of `blocks`, one share per thread."""
    threads = max(1, min(threads, len(blocks)))
    shares = [blocks[i::threads] for i in range(threads)]
    if threads == 1:
        return [work(shares[0])]
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="int8") as pool:
        return list(pool.map(work, shares))


def _aligned(block: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """numpy's fast loops need aligned data; weights inside a protobuf often are not."""
    if block.flags.aligned:
        return block
    view = scratch[: block.shape[0]]
    np.copyto(view, block)
    return view


def _scale_from_absmax(absmax: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    scale = (absmax / levels).astype(np.float32)
    scale[scale == 0] = 1.0  # an all-zero channel quantizes to zeros with any scale
    return scale, (np.float32(1.0) / scale).astype(np.float32)


def _quantize_rows(matrix: np.ndarray, threads: int, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """One scale per row of a 2-D matrix."""
    rows, cols = matrix.shape
    blocks = _blocks(rows, cols * 4)
    quantized = np.empty((rows, cols), dtype=np.int8)
    scale = np.empty(rows, dtype=np.float32)

    def work(share: list[tuple[int, int]]) -> None:
        scratch = np.empty((blocks[0][1] - blocks[0][0], cols), dtype=np.float32)
        product = np.empty_like(scratch)
        for start, end in share:
            block = _aligned(matrix[start:end], scratch)
            absmax = np.maximum(block.max(axis=1), -block.min(axis=1))
            block_scale, inverse = _scale_from_absmax(absmax, levels)
            scale[start:end] = block_scale
            out = product[: end - start]
            np.multiply(block, inverse[:, None], out=out)
            np.rint(out, out=out)
            np.copyto(quantized[start:end], out, casting="unsafe")

    _run_split(blocks, work, threads)
    return quantized, scale


def _quantize_columns(
    matrix: np.ndarray, threads: int, per_column: bool, levels: int
) -> tuple[np.ndarray, np.ndarray]:
    """One scale per column of a 2-D matrix (or one for the whole matrix)."""
    rows, cols = matrix.shape
    blocks = _blocks(rows, cols * 4)
    block_rows = blocks[0][1] - blocks[0][0]

    def absmax_of(share: list[tuple[int, int]]) -> np.ndarray:
        scratch = np.empty((block_rows, cols), dtype=np.float32)
        high = np.full(cols, -np.inf, dtype=np.float32)
        low = np.full(cols, np.inf, dtype=np.float32)
        for start, end in share:
            block = _aligned(matrix[start:end], scratch)
            np.maximum(high, block.max(axis=0), out=high)
            np.minimum(low, block.min(axis=0), out=low)
        return np.maximum(high, -low)

    absmax = np.maximum.reduce(_run_split(blocks, absmax_of, threads))
    if not per_column:
        absmax = np.array([absmax.max()], dtype=np.float32)
    scale, inverse = _scale_from_absmax(absmax, levels)
    quantized = np.empty((rows, cols), dtype=np.int8)

    def quantize(share: list[tuple[int, int]]) -> None:
        product = np.empty((block_rows, cols), dtype=np.float32)
        for start, end in share:
            out = product[: end - start]
            np.multiply(matrix[start:end], inverse, out=out)
            np.rint(out, out=out)
            np.copyto(quantized[start:end], out, casting="unsafe")

    _run_split(blocks, quantize, threads)
    return quantized, scale


def quantize_int8(
    weight: np.ndarray, axis: int | None, threads: int | None = None, levels: int = INT8_MAX
) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 quantization: q = round(w / scale), scale = max|w| / levels.

    `levels` is 127 for the full int8 range; REDUCED_RANGE (64) keeps |q| <= 64, the 7-bit
    weights that onnxruntime's U8S8 kernels cannot saturate with.

    With `axis`, there is one scale per slice along that axis (per output channel); with None,
    one scale for the tensor. Returns (int8 array of the same shape, float32 scales).
    """
    threads = threads or default_threads()
    if weight.dtype != np.float32:
        raise TypeError(f"int8 quantization expects float32 weights, got {weight.dtype}")
    if weight.ndim == 0 or weight.size == 0:
        raise ValueError("int8 quantization needs a non-empty tensor with at least one dimension")
    if axis is None:
        quantized, scale = _quantize_columns(weight.reshape(1, -1), threads, per_column=False, levels=levels)
        return quantized.reshape(weight.shape), scale.reshape(())
    axis = axis % weight.ndim
    if axis == 0:
        quantized, scale = _quantize_rows(weight.reshape(weight.shape[0], -1), threads, levels)
        return quantized.reshape(weight.shape), scale
    if axis == weight.ndim - 1:
        quantized, scale = _quantize_columns(
            weight.reshape(-1, weight.shape[-1]), threads, per_column=True, levels=levels
        )
        return quantized.reshape(weight.shape), scale
    moved = np.ascontiguousarray(np.moveaxis(weight, axis, 0))
    quantized, scale = _quantize_rows(moved.reshape(moved.shape[0], -1), threads, levels)
    return np.moveaxis(quantized.reshape(moved.shape), 0, axis), scale



INT4_MAX = 7
INT4_LEVELS_BELOW_ZERO = 8
INT4_ZERO_POINT = 8  # onnxruntime's default zero point for unsigned 4-bit blocks


def quantize_int4_blocks(
    weight: np.ndarray, block_size: int, rows_are_channels: bool, threads: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric block-wise int4, in onnxruntime's MatMulNBits / GatherBlockQuantized layout.

    The channels (N) are the rows of `weight` when `rows_are_channels` (an embedding table
    [vocab, hidden], a Gemm weight with transB) and its columns otherwise (a MatMul weight
    [K, N]). Each channel's K values are split into blocks of `block_size` (the last one padded
    with zeros); a block has one float32 scale = v / -8, where v is its value of largest
    magnitude (so the scale may be negative, as in onnxruntime's own quantizer), and values
    clip(round(w / scale), -8, 7) + 8 in [0, 15], two to a byte, the first in the low nibble.
    Returns (uint8 [N, blocks, block_size / 2], float32 scales [N, blocks]).
    """
    threads = threads or default_threads()
    if weight.dtype != np.float32 or weight.ndim != 2:
        raise TypeError(f"int4 quantization expects a 2-D float32 weight, got {weight.dtype} {weight.shape}")
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"block size {block_size} is not a power of two >= 16")
    channels, depth = weight.shape if rows_are_channels else weight.shape[::-1]
    blocks = -(-depth // block_size)
    packed = np.empty((channels, blocks, block_size // 2), dtype=np.uint8)
    scales = np.empty((channels, blocks), dtype=np.float32)
    step = max(1, _BLOCK_BYTES // max(1, blocks * block_size * 4))
    spans = [(start, min(start + step, channels)) for start in range(0, channels, step)]

    def work(share: list[tuple[int, int]]) -> None:
        padded = np.zeros((step, blocks * block_size), dtype=np.float32)
        for start, end in share:
            rows = padded[: end - start]
            rows[:, :depth] = weight[start:end] if rows_are_channels else weight[:, start:end].T
            grouped = rows.reshape(end - start, blocks, block_size)
            # The block's largest-magnitude value maps to -8 exactly, so all 16 levels are used.
            largest = np.take_along_axis(grouped, np.argmax(np.abs(grouped), axis=2)[:, :, None], axis=2)[:, :, 0]
            scale = (largest / -INT4_LEVELS_BELOW_ZERO).astype(np.float32)
            scale[scale == 0] = 1.0
            scales[start:end] = scale
            values = np.rint(grouped / scale[:, :, None])
            np.clip(values, -INT4_LEVELS_BELOW_ZERO, INT4_MAX, out=values)
            nibbles = (values + INT4_ZERO_POINT).astype(np.uint8)
            packed[start:end] = nibbles[:, :, 0::2] | (nibbles[:, :, 1::2] << 4)

    _run_split(spans, work, threads)
    return packed, scales


INT4_LEVELS = 15  # the largest 4-bit value


@dataclass(frozen=True)
class Int4Blocks:
    """Block-wise int4 in MatMulNBits' layout: values [N, blocks, block_size / 2] (two to a
    byte, the first in the low nibble), float32 scales [N, blocks], and, for asymmetric blocks,
    zero points packed two to a byte [N, ceil(blocks / 2)]; `error` is the relative error of
    the layer's output on the calibration set (with a Hessian) or of the weight (without)."""

    packed: np.ndarray
    scales: np.ndarray
    zero_points: np.ndarray | None
    error: float

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes + self.scales.nbytes + (0 if self.zero_points is None else self.zero_points.nbytes)


def _int4_parameters(grouped: np.ndarray, asymmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """(scale, zero point) of each block along the last axis; value = (q - zero) × scale."""
    if asymmetric:
        high = np.maximum(grouped.max(axis=-1), 0.0)
        low = np.minimum(grouped.min(axis=-1), 0.0)
        scale = (high - low) / INT4_LEVELS
        scale[scale == 0] = 1.0
        zero = np.clip(np.rint(-low / scale), 0, INT4_LEVELS)
        return scale, zero
    largest = np.take_along_axis(grouped, np.argmax(np.abs(grouped), axis=-1)[..., None], axis=-1)[..., 0]
    scale = largest / -INT4_LEVELS_BELOW_ZERO
    scale[scale == 0] = 1.0
    return scale, np.full(scale.shape, INT4_ZERO_POINT, dtype=scale.dtype)


def _int4_round(values: np.ndarray, scale: np.ndarray, zero: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values / scale) + zero, 0, INT4_LEVELS)


def _pack_nibbles(values: np.ndarray) -> np.ndarray:
    """uint8 pairs along the last axis (padded with a zero nibble), the first in the low nibble."""
    values = values.astype(np.uint8)
    if values.shape[-1] % 2:
        values = np.concatenate([values, np.zeros((*values.shape[:-1], 1), dtype=np.uint8)], axis=-1)
    return values[..., 0::2] | (values[..., 1::2] << 4)


def quantize_int4(
    weight: np.ndarray,
    block_size: int,
    rows_are_channels: bool,
    asymmetric: bool = False,
    hessian: np.ndarray | None = None,
    damp: float = 0.01,
) -> Int4Blocks:
    """Block-wise int4 of a 2-D weight, symmetric or asymmetric, rounded to nearest or by GPTQ.

    With `hessian` (X^T X of the layer's input activations on the calibration set, [K, K]),
    the columns of each channel are rounded in order and each rounding error is spread over the
    columns not yet rounded, weighted by the inverse Hessian (GPTQ, Frantar et al. 2022), so
    that X·W changes least; a block's scale is fixed when the block is reached. Without it,
    every value is rounded to nearest. The layout and conventions are those of
    `quantize_int4_blocks`; symmetric blocks have the implied zero point 8.
    """
    if weight.dtype != np.float32 or weight.ndim != 2:
        raise TypeError(f"int4 quantization expects a 2-D float32 weight, got {weight.dtype} {weight.shape}")
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"block size {block_size} is not a power of two >= 16")
    matrix = np.array(weight if rows_are_channels else weight.T, dtype=np.float64)  # [N, K]
    channels, depth = matrix.shape
    blocks = -(-depth // block_size)
    padded_depth = blocks * block_size
    work = np.zeros((channels, padded_depth), dtype=np.float64)
    work[:, :depth] = matrix
    levels = np.empty((channels, padded_depth), dtype=np.float64)
    scales = np.empty((channels, blocks), dtype=np.float64)
    zeros = np.empty((channels, blocks), dtype=np.float64)
    if hessian is None:
        grouped = work.reshape(channels, blocks, block_size)
        scale, zero = _int4_parameters(grouped, asymmetric)
        levels[:] = _int4_round(grouped, scale[..., None], zero[..., None]).reshape(channels, padded_depth)
        scales[:], zeros[:] = scale, zero
    else:
        if hessian.shape != (depth, depth):
            raise ValueError(f"the Hessian has shape {hessian.shape}; the weight's depth is {depth}")
        h = np.eye(padded_depth, dtype=np.float64)
        h[:depth, :depth] = hessian
        dead = np.diag(h) <= 0
        h[dead, dead] = 1.0
        work[:, dead] = 0.0
        h[np.diag_indices(padded_depth)] += damp * float(np.mean(np.diag(h)))
        # The upper Cholesky factor of H^-1: row i holds how column i's error moves the later ones.
        upper = np.linalg.cholesky(np.linalg.inv(h)).T
        for start in range(0, padded_depth, block_size):
            end = start + block_size
            block = work[:, start:end].copy()
            scale, zero = _int4_parameters(block, asymmetric)
            scales[:, start // block_size], zeros[:, start // block_size] = scale, zero
            errors = np.empty_like(block)
            inner = upper[start:end, start:end]
            for i in range(block_size):
                column = block[:, i]
                q = _int4_round(column, scale, zero)
                levels[:, start + i] = q
                errors[:, i] = (column - (q - zero) * scale) / inner[i, i]
                block[:, i:] -= np.outer(errors[:, i], inner[i, i:])
            work[:, end:] -= errors @ upper[start:end, end:]
    dequantized = ((levels.reshape(channels, blocks, block_size) - zeros[..., None]) * scales[..., None]).reshape(
        channels, padded_depth
    )[:, :depth]
    difference = dequantized - matrix
    if hessian is None:
        error = float(np.sum(difference**2) / max(np.sum(matrix**2), 1e-30))
    else:
        h64 = hessian.astype(np.float64)
        error = float(np.sum((difference @ h64) * difference) / max(np.sum((matrix @ h64) * matrix), 1e-30))
    packed = _pack_nibbles(levels.reshape(channels, blocks, block_size))
    zero_points = _pack_nibbles(zeros).reshape(-1) if asymmetric else None
    return Int4Blocks(packed, scales.astype(np.float32), zero_points, error)
