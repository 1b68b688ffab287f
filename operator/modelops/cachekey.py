"""Content-addressed cache keys for compression outputs.

The key is a sha256 over (source artifact digest, normalised recipe, compressor version), so
re-applying the same manifests finds the existing output instead of compressing again, and
recipes that mean the same thing (defaults spelled out or left out) share one entry. The recipe
is the API's `Compression` model; its fields, choices and bounds are defined there only.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from pydantic import ValidationError
from pydantic.alias_generators import to_camel

from modelops.api.model import Compression, Int4Method, Objective, Pruning, PruningMethod, Quantization, TargetFormat

# Bump when a change in the compressor changes its output for the same input and recipe.
COMPRESSOR_VERSION = "1.1.0"

CACHE_ROOT = "modelops-cache"

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
# What an unset recipe field means (the compressor's own defaults; a Model's versionDefaults
# are applied before, by the operator).
# Built without validation: the API's bounds on a pruning amount are for a method that prunes.
_NO_PRUNING = Pruning.model_construct(method=PruningMethod.NONE, amount=0.0)
_DEFAULTS = {"quantization": Quantization.NONE, "target_format": TargetFormat.ONNX}
# The int4 quantizations, and their block size, rounding and zero points when the recipe leaves
# them unset.
INT4_QUANTIZATIONS = frozenset({Quantization.INT4_WEIGHT_ONLY, Quantization.INT4_MIXED})
DEFAULT_BLOCK_SIZE = 128
DEFAULT_BLOCK_SIZES = {Quantization.INT4_WEIGHT_ONLY: DEFAULT_BLOCK_SIZE, Quantization.INT4_MIXED: 32}
DEFAULT_ASYMMETRIC = {Quantization.INT4_WEIGHT_ONLY: False, Quantization.INT4_MIXED: True}
# Quantizations that read compression.calibration (auto passes it to its int4 candidates).
CALIBRATED = INT4_QUANTIZATIONS | {Quantization.AUTO}


class InvalidRecipe(ValueError):
    """A recipe or evaluation field has a wrong name, type or value; the message names the field."""


def field_error(err: ValidationError, prefix: str = "") -> InvalidRecipe:
    """The first problem pydantic found, as `field.path: message` in the API's camelCase."""
    first = err.errors()[0]
    path = ".".join(to_camel(str(part)) for part in (prefix, *first["loc"]) if part != "")
    return InvalidRecipe(f"{path or 'recipe'}: {first['msg']}")


def parse_recipe(value: str | bytes | dict[str, Any] | None) -> Compression:
    """A recipe from JSON text or a dict, validated by the API model."""
    try:
        if value is None:
            return Compression()
        if isinstance(value, (str, bytes)):
            return Compression.model_validate_json(value)
        return Compression.model_validate(value)
    except ValidationError as err:
        raise field_error(err) from None


def normalize_recipe(recipe: Compression | str | bytes | dict[str, Any] | None) -> Compression:
    """The canonical recipe: every field set, and no-op pruning spelled one way.

    Pruning with amount 0 and pruning with method "none" mean the same thing, so both become
    {"method": "none", "amount": 0.0}. A pruning method without an amount is an error: it would
    otherwise silently mean no pruning. blockSize, method and asymmetric are kept only for the
    int4 quantizations (the ones they change), with their defaults filled in; auto keeps them as
    given, for its int4 candidates. The calibration dataset (URI and sha256) is kept wherever it
    is read, so a result calibrated on one dataset never stands for another.
    """
    recipe = recipe if isinstance(recipe, Compression) else parse_recipe(recipe)
    pruning = recipe.pruning or _NO_PRUNING
    method = pruning.method or "none"
    if method != "none" and pruning.amount is None:
        raise InvalidRecipe(f"pruning.amount: required when pruning.method is {method!r}")
    # Six decimals are far below any meaningful difference in sparsity and keep keys stable.
    amount = round(float(pruning.amount or 0.0), 6)
    no_op = method == "none" or amount == 0.0
    quantization = recipe.quantization or _DEFAULTS["quantization"]
    calibration = recipe.calibration if quantization in CALIBRATED else None
    if quantization == Quantization.INT4_MIXED and calibration is None:
        raise InvalidRecipe("calibration: int4-mixed measures each layer's sensitivity on a calibration dataset; set compression.calibration")
    if recipe.method == Int4Method.GPTQ and recipe.calibration is None:
        raise InvalidRecipe("method: gptq learns from activations; set compression.calibration")
    int4_method: Int4Method | None = None
    block_size: int | None = None
    asymmetric: bool | None = None
    if quantization in INT4_QUANTIZATIONS:
        int4 = Quantization(quantization)
        block_size = recipe.block_size or DEFAULT_BLOCK_SIZES[int4]
        int4_method = recipe.method or (Int4Method.GPTQ if calibration is not None else Int4Method.RTN)
        asymmetric = DEFAULT_ASYMMETRIC[int4] if recipe.asymmetric is None else recipe.asymmetric
        if int4 == Quantization.INT4_WEIGHT_ONLY and int4_method == Int4Method.RTN and not asymmetric:
            int4_method, asymmetric = None, None  # int4's first form, spelled as before: earlier entries keep their keys
    elif quantization == Quantization.AUTO:
        block_size, int4_method, asymmetric = recipe.block_size, recipe.method, recipe.asymmetric
    # The objective only steers `auto`; an explicit recipe keeps the key it always had.
    objective = (recipe.objective or Objective.SIZE) if quantization == Quantization.AUTO else None
    # model_copy keeps any recipe field this function has no default for.
    return recipe.model_copy(
        update={
            "quantization": quantization,
            "block_size": block_size,
            "method": int4_method,
            "asymmetric": asymmetric,
            "calibration": calibration,
            "objective": objective,
            "pruning": _NO_PRUNING if no_op else Pruning(method=method, amount=amount),
            "target_format": recipe.target_format or _DEFAULTS["target_format"],
        }
    )


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def recipe_hash(recipe: Compression | str | dict[str, Any] | None) -> str:
    """sha256 of the normalised recipe alone (reported beside the output)."""
    return hashlib.sha256(canonical_json(normalize_recipe(recipe).wire()).encode()).hexdigest()


def compression_cache_key(
    source_sha256: str, recipe: Compression | dict[str, Any] | None, compressor_version: str = COMPRESSOR_VERSION
) -> str:
    source = source_sha256.strip().lower() if isinstance(source_sha256, str) else ""
    if not _SHA256_HEX.match(source):
        raise ValueError(f"source_sha256: {source_sha256!r} is not a sha256 hex digest (64 hex characters)")
    if not isinstance(compressor_version, str) or not compressor_version:
        raise ValueError("compressor_version: must be a non-empty string")
    material = {"source": source, "recipe": normalize_recipe(recipe).wire(), "compressor": compressor_version}
    return hashlib.sha256(canonical_json(material).encode()).hexdigest()


def compressed_prefix(bucket: str, key: str) -> str:
    """Where the output of cache key `key` lives: s3://<bucket>/modelops-cache/<key>/."""
    if not bucket or "/" in bucket:
        raise ValueError(f"bucket: {bucket!r} is not a bucket name")
    if not _SHA256_HEX.match(key or ""):
        raise ValueError(f"key: {key!r} is not a cache key (64 hex characters)")
    return f"s3://{bucket}/{CACHE_ROOT}/{key}/"
