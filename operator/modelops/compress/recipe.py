"""The compressor's view of a recipe and of an evaluation request.

Both are the API's models (`Compression`, `Evaluation`); this module only normalises them and
says which recipes a source format can take. Choices and bounds live in `modelops.api`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from modelops.api.model import Calibration, Compression, Evaluation
from modelops.api.version import ArtifactFormat
from modelops.cachekey import InvalidRecipe, field_error, normalize_recipe, recipe_hash

__all__ = ["SOURCE_FORMATS", "Evaluation", "Recipe", "UnsupportedRecipe", "check_supported", "parse_evaluation"]

SOURCE_FORMATS: tuple[str, ...] = tuple(ArtifactFormat)


@dataclass(frozen=True)
class Recipe:
    """A normalised recipe with flat names for the compression code."""

    compression: Compression

    @classmethod
    def of(cls, recipe: Compression | dict[str, Any] | str | None) -> Recipe:
        return cls(normalize_recipe(recipe))

    from_dict = of

    @property
    def quantization(self) -> str:
        return str(self.compression.quantization)

    @property
    def pruning_method(self) -> str:
        assert self.compression.pruning is not None  # normalised
        return str(self.compression.pruning.method)

    @property
    def pruning_amount(self) -> float:
        assert self.compression.pruning is not None
        return float(self.compression.pruning.amount or 0.0)

    @property
    def target_format(self) -> str:
        return str(self.compression.target_format)

    @property
    def block_size(self) -> int | None:
        """Weights per scale for the int4 quantizations; None for every other quantization."""
        return self.compression.block_size

    @property
    def method(self) -> str | None:
        """How int4 weights are rounded (rtn or gptq); None where no int4 is written."""
        return str(self.compression.method) if self.compression.method else None

    @property
    def asymmetric(self) -> bool:
        """Whether int4 blocks carry a zero point."""
        return bool(self.compression.asymmetric)

    @property
    def calibration(self) -> Calibration | None:
        """The calibration dataset the recipe names, where its quantization reads one."""
        return self.compression.calibration

    @property
    def objective(self) -> str | None:
        """What `auto` optimises; None for every other quantization."""
        return str(self.compression.objective) if self.compression.objective else None

    def to_dict(self) -> dict[str, Any]:
        return self.compression.wire()

    @property
    def hash(self) -> str:
        return recipe_hash(self.compression)


def parse_evaluation(value: str | bytes | dict[str, Any] | Evaluation) -> Evaluation:
    """An evaluation from JSON text or a dict, validated by the API model; errors name the field."""
    if isinstance(value, Evaluation):
        return value
    try:
        if isinstance(value, (str, bytes)):
            return Evaluation.model_validate_json(value)
        return Evaluation.model_validate(value)
    except ValidationError as err:
        raise field_error(err, "evaluation") from None


class UnsupportedRecipe(InvalidRecipe):
    """A valid recipe that this source format or target format cannot take."""


def check_supported(recipe: Recipe, source_format: str) -> None:
    if source_format not in SOURCE_FORMATS:
        raise InvalidRecipe(f"source-format: {source_format!r} is not one of {', '.join(SOURCE_FORMATS)}")
    if recipe.target_format == "torchscript" and source_format == "onnx":
        raise UnsupportedRecipe("targetFormat: an ONNX source cannot be converted to TorchScript; use onnx")
    if recipe.target_format == "torchscript" and (recipe.quantization.startswith("int") or recipe.quantization == "fp16-compute"):
        raise UnsupportedRecipe(
            f"quantization: {recipe.quantization} is produced as ONNX only (onnxruntime kernels); "
            "use targetFormat onnx"
        )
