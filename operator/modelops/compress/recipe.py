"""The compressor's view of a recipe and of an evaluation request, parsed from the CRD's dicts."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from modelops.cachekey import InvalidRecipe, normalize_recipe, recipe_hash
from modelops.storage import InvalidS3Uri, parse_s3_uri

METRICS = ("top1-accuracy", "top1-agreement", "cosine-similarity", "max-abs-error")
SOURCE_FORMATS = ("onnx", "torchscript", "exported-program")


@dataclass(frozen=True)
class Recipe:
    quantization: str
    pruning_method: str
    pruning_amount: float
    target_format: str
    objective: str | None = None  # only for quantization "auto"

    @classmethod
    def from_dict(cls, recipe: dict[str, Any] | None) -> Recipe:
        normalized = normalize_recipe(recipe)
        return cls(
            quantization=normalized["quantization"],
            pruning_method=normalized["pruning"]["method"],
            pruning_amount=normalized["pruning"]["amount"],
            target_format=normalized["targetFormat"],
            objective=normalized.get("objective"),
        )

    def to_dict(self) -> dict[str, Any]:
        recipe: dict[str, Any] = {
            "quantization": self.quantization,
            "pruning": {"method": self.pruning_method, "amount": self.pruning_amount},
            "targetFormat": self.target_format,
        }
        if self.objective is not None:
            recipe["objective"] = self.objective
        return recipe

    @property
    def hash(self) -> str:
        return recipe_hash(self.to_dict())


@dataclass(frozen=True)
class Evaluation:
    """An accuracy gate.

    Thresholds: top1-accuracy allows at most `threshold` percentage points of drop;
    top1-agreement (a fraction in [0, 1]) and cosine-similarity need at least `threshold`;
    max-abs-error allows at most `threshold`.
    """

    dataset_uri: str
    metric: str
    threshold: float

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> Evaluation:
        if not isinstance(spec, dict):
            raise InvalidRecipe(f"evaluation: must be an object, got {type(spec).__name__}")
        unknown = sorted(set(spec) - {"datasetUri", "metric", "threshold"})
        if unknown:
            raise InvalidRecipe(f"evaluation.{unknown[0]}: unknown field")
        uri = spec.get("datasetUri")
        try:
            parse_s3_uri(uri)
        except InvalidS3Uri as exc:
            raise InvalidRecipe(f"evaluation.datasetUri: {exc}") from None
        metric = spec.get("metric", "top1-accuracy")
        if metric not in METRICS:
            raise InvalidRecipe(f"evaluation.metric: {metric!r} is not one of {', '.join(METRICS)}")
        threshold = spec.get("threshold")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
            raise InvalidRecipe(f"evaluation.threshold: {threshold!r} is not a number")
        if threshold < 0 or (metric in ("top1-agreement", "cosine-similarity") and threshold > 1):
            raise InvalidRecipe(f"evaluation.threshold: {threshold} is out of range for {metric}")
        return cls(dataset_uri=uri, metric=metric, threshold=float(threshold))

    def to_dict(self) -> dict[str, Any]:
        return {"datasetUri": self.dataset_uri, "metric": self.metric, "threshold": self.threshold}


class UnsupportedRecipe(InvalidRecipe):
    """A valid recipe that this source format or target format cannot take."""


def check_supported(recipe: Recipe, source_format: str) -> None:
    if source_format not in SOURCE_FORMATS:
        raise InvalidRecipe(f"source-format: {source_format!r} is not one of {', '.join(SOURCE_FORMATS)}")
    if recipe.target_format == "torchscript" and source_format == "onnx":
        raise UnsupportedRecipe("targetFormat: an ONNX source cannot be converted to TorchScript; use onnx")
    if recipe.target_format == "torchscript" and recipe.quantization.startswith("int8"):
        raise UnsupportedRecipe(
            f"quantization: {recipe.quantization} is produced as ONNX (DequantizeLinear / onnxruntime kernels); "
            "use targetFormat onnx"
        )
