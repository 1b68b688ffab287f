"""Accuracy-gate metrics (pure numpy): compare the parent's and the compressed model's outputs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Float noise must not turn "exactly at the threshold" into a rejection.
_TOLERANCE = 1e-9


class DatasetError(ValueError):
    """The evaluation dataset cannot serve the requested metric."""


@dataclass(frozen=True)
class MetricResult:
    name: str
    threshold: float
    parent: float | None  # the parent's own score, for metrics that have one (top-1 accuracy)
    compressed: float
    drop: float | None  # parent − compressed, in percentage points, for top-1 accuracy
    passed: bool

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "threshold": self.threshold,
            "parent": None if self.parent is None else round(self.parent, 6),
            "compressed": round(self.compressed, 6),
            "drop": None if self.drop is None else round(self.drop, 6),
            "passed": self.passed,
        }

    def explain(self) -> str:
        """One sentence with the measured values, for the report's message."""
        if self.name == "top1-accuracy":
            verb = "dropped" if (self.drop or 0) >= 0 else "rose"
            return (
                f"top-1 accuracy {verb} {abs(self.drop or 0):.2f} points ({self.parent:.2f}% -> {self.compressed:.2f}%); "
                f"allowed drop {self.threshold:g}"
            )
        if self.name == "max-abs-error":
            return f"max-abs-error {self.compressed:.6g}; allowed at most {self.threshold:g}"
        return f"{self.name} {self.compressed:.6f}; required at least {self.threshold:g}"


def top1_accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Percentage of samples whose highest-scoring class is the label."""
    return float(np.mean(_top1(outputs) == labels) * 100.0)


def top1_agreement(parent: np.ndarray, compressed: np.ndarray) -> float:
    """Fraction of samples where both models pick the same class."""
    return float(np.mean(_top1(parent) == _top1(compressed)))


def cosine_similarity(parent: np.ndarray, compressed: np.ndarray) -> float:
    """Mean over samples of the cosine between the two output vectors."""
    a = parent.reshape(len(parent), -1).astype(np.float64)
    b = compressed.reshape(len(compressed), -1).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = np.sum(a * b, axis=1)
    both_zero = (np.linalg.norm(a, axis=1) == 0) & (np.linalg.norm(b, axis=1) == 0)
    cosines = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), np.where(both_zero, 1.0, 0.0))
    return float(np.mean(cosines))


def max_abs_error(parent: np.ndarray, compressed: np.ndarray) -> float:
    return float(np.max(np.abs(parent.astype(np.float64) - compressed.astype(np.float64))))


def _top1(outputs: np.ndarray) -> np.ndarray:
    return outputs.reshape(len(outputs), -1).argmax(axis=1)


def evaluate_gate(
    metric: str, threshold: float, parent: np.ndarray, compressed: np.ndarray, labels: np.ndarray | None
) -> MetricResult:
    if parent.shape != compressed.shape:
        raise DatasetError(f"the models disagree on the output shape: {parent.shape} vs {compressed.shape}")
    if len(parent) == 0:
        raise DatasetError("the evaluation dataset has no samples")
    if metric == "top1-accuracy":
        if labels is None:
            raise DatasetError("metric top1-accuracy needs an array 'labels' in the dataset")
        if labels.shape != (len(parent),):
            raise DatasetError(f"'labels' has shape {labels.shape}; expected ({len(parent)},)")
        before, after = top1_accuracy(parent, labels), top1_accuracy(compressed, labels)
        drop = before - after
        return MetricResult(metric, threshold, before, after, drop, drop <= threshold + _TOLERANCE)
    if metric == "top1-agreement":
        value = top1_agreement(parent, compressed)
        return MetricResult(metric, threshold, None, value, None, value >= threshold - _TOLERANCE)
    if metric == "cosine-similarity":
        value = cosine_similarity(parent, compressed)
        return MetricResult(metric, threshold, None, value, None, value >= threshold - _TOLERANCE)
    if metric == "max-abs-error":
        value = max_abs_error(parent, compressed)
        return MetricResult(metric, threshold, None, value, None, value <= threshold + _TOLERANCE)
    raise ValueError(f"metric: unknown metric {metric!r}")
