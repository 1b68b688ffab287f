"""The evaluation dataset: an .npz with one array per model input, and optional `labels`.

A single-input model may name its array `inputs` instead of the input's name (the original
form). Every array holds the same number of samples along its first axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelops.compress.accuracy import DatasetError
from modelops.compress.runtime import EVAL_BATCH, Feeds, InputSpec

SINGLE_INPUT = "inputs"
LABELS = "labels"

# Element kinds that may be cast into each other without changing what the values mean.
_KINDS = {"f": "float", "i": "integer", "u": "integer", "b": "bool"}


@dataclass(frozen=True)
class Dataset:
    arrays: dict[str, np.ndarray]
    labels: np.ndarray | None

    @classmethod
    def from_npz(cls, path: Path) -> Dataset:
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except Exception as exc:  # noqa: BLE001 - numpy raises several types for a bad archive
            raise DatasetError(f"the evaluation dataset is not a readable .npz file: {exc}") from exc
        labels = arrays.pop(LABELS, None)
        if not arrays:
            raise DatasetError("the evaluation dataset has no input arrays (an .npz with one array per model input)")
        for name, array in arrays.items():
            if array.ndim < 1 or len(array) == 0 or array.dtype.kind not in _KINDS:
                raise DatasetError(f"array {name!r} must be a non-empty numeric array; got {array.dtype} {array.shape}")
        if labels is not None and (labels.dtype.kind not in "iu" or labels.ndim != 1):
            raise DatasetError(f"'labels' must be a 1-D integer array; got {labels.dtype} {labels.shape}")
        return cls(arrays=arrays, labels=labels)

    @property
    def samples(self) -> int:
        return len(next(iter(self.arrays.values())))

    def feeds(self, inputs: Sequence[InputSpec]) -> tuple[Feeds, int]:
        """The arrays for `inputs`, cast to the model's types, and the evaluation batch size.

        Raises DatasetError naming every input that is missing and the first type or shape
        that does not fit.
        """
        required = [spec for spec in inputs if not spec.optional]
        arrays = dict(self.arrays)
        sole = required if required else list(inputs)
        if len(sole) == 1 and sole[0].name not in arrays and SINGLE_INPUT in arrays:
            arrays[sole[0].name] = arrays.pop(SINGLE_INPUT)
        missing = [spec.name for spec in required if spec.name not in arrays]
        if missing:
            raise DatasetError(
                f"the evaluation dataset has no array for input{'s' if len(missing) > 1 else ''} "
                f"{', '.join(repr(n) for n in missing)} (it has: {', '.join(repr(n) for n in sorted(self.arrays))})"
            )
        feeds: Feeds = {}
        samples = len(arrays[required[0].name]) if required else self.samples
        batch = EVAL_BATCH
        for spec in inputs:
            if spec.name not in arrays:
                continue  # an input with a default value
            array = arrays[spec.name]
            data_kind, model_kind = _KINDS.get(array.dtype.kind), _KINDS.get(spec.dtype.kind)
            if data_kind != model_kind:
                raise DatasetError(f"input {spec.name!r}: the dataset holds {array.dtype}; the model takes {spec.dtype}")
            if len(array) != samples:
                raise DatasetError(f"input {spec.name!r}: {len(array)} samples; the other inputs have {samples}")
            if spec.dims is not None:
                if array.ndim != len(spec.dims):
                    raise DatasetError(
                        f"input {spec.name!r}: the dataset's shape {list(array.shape)} has rank {array.ndim}; "
                        f"the model takes rank {len(spec.dims)} {list(spec.dims)}"
                    )
                for axis, (want, have) in enumerate(zip(spec.dims, array.shape, strict=True)):
                    if axis == 0 and want != -1:
                        batch = want  # a fixed first dimension: evaluate in batches of exactly that size
                        if samples % want:
                            raise DatasetError(
                                f"input {spec.name!r}: the model's first dimension is fixed to {want}, "
                                f"so the sample count must be a multiple of it; the dataset has {samples}"
                            )
                    elif axis > 0 and want != -1 and want != have:
                        raise DatasetError(
                            f"input {spec.name!r}: the dataset's shape {list(array.shape)} differs from the model's "
                            f"{list(spec.dims)} at dimension {axis}"
                        )
            feeds[spec.name] = array.astype(spec.dtype, copy=False)
        if not feeds:
            names = ", ".join(repr(spec.name) for spec in inputs) or "none"
            raise DatasetError(f"the evaluation dataset feeds none of the model's inputs ({names})")
        if self.labels is not None and len(self.labels) != samples:
            raise DatasetError(f"'labels' has {len(self.labels)} entries; the inputs have {samples} samples")
        return feeds, batch
