"""Content-addressed cache keys for compression outputs.

The key is a sha256 over (source artifact digest, normalised recipe, compressor version), so
re-applying the same manifests finds the existing output instead of compressing again, and
recipes that mean the same thing (defaults spelled out or left out) share one entry.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any

# Bump when a change in the compressor changes its output for the same input and recipe.
COMPRESSOR_VERSION = "1.0.0"

QUANTIZATIONS = ("none", "fp16", "bf16", "int8-weight-only", "int8-dynamic", "auto")
# What `quantization: auto` optimises among the candidates that pass the gate.
OBJECTIVES = ("size", "latency")
PRUNING_METHODS = ("none", "unstructured", "structured")
TARGET_FORMATS = ("onnx", "torchscript")
MAX_PRUNING_AMOUNT = 0.95

CACHE_ROOT = "modelops-cache"

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class InvalidRecipe(ValueError):
    """A recipe field has a wrong name, type or value; the message names the field."""


def _choice(value: Any, field: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise InvalidRecipe(f"{field}: {value!r} is not one of {', '.join(allowed)}")
    return value


def _amount(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidRecipe(f"pruning.amount: {value!r} is not a number")
    if not 0.0 <= value <= MAX_PRUNING_AMOUNT:
        raise InvalidRecipe(f"pruning.amount: {value} is outside [0, {MAX_PRUNING_AMOUNT}]")
    # Six decimals are far below any meaningful difference in sparsity and keep keys stable.
    return round(float(value), 6)


def _mapping(value: Any, field: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidRecipe(f"{field}: must be an object, got {type(value).__name__}")
    return value


def _reject_unknown(value: dict[str, Any], field: str, known: set[str]) -> None:
    unknown = sorted(set(value) - known)
    if unknown:
        where = f"{field}." if field else ""
        raise InvalidRecipe(f"{where}{unknown[0]}: unknown field (known: {', '.join(sorted(known))})")


def normalize_recipe(recipe: dict[str, Any] | None) -> dict[str, Any]:
    """Return the canonical recipe: every default filled in, no-op pruning spelled one way.

    Pruning with amount 0 and pruning with method "none" mean the same thing, so both become
    {"method": "none", "amount": 0.0}.
    """
    recipe = _mapping(recipe, "recipe")
    _reject_unknown(recipe, "", {"quantization", "pruning", "targetFormat", "objective"})
    quantization = _choice(recipe.get("quantization", "none"), "quantization", QUANTIZATIONS)
    objective = _choice(recipe.get("objective") or "size", "objective", OBJECTIVES)
    pruning = _mapping(recipe.get("pruning"), "pruning")
    _reject_unknown(pruning, "pruning", {"method", "amount"})
    method = _choice(pruning.get("method", "none"), "pruning.method", PRUNING_METHODS)
    amount = _amount(pruning.get("amount", 0.0))
    if method != "none" and "amount" not in pruning:
        raise InvalidRecipe(f"pruning.amount: required when pruning.method is {method!r}")
    if method == "none" or amount == 0.0:
        method, amount = "none", 0.0
    target = _choice(recipe.get("targetFormat", "onnx"), "targetFormat", TARGET_FORMATS)
    normalized: dict[str, Any] = {
        "quantization": quantization,
        "pruning": {"method": method, "amount": amount},
        "targetFormat": target,
    }
    # The objective only steers `auto`; an explicit recipe keeps the key it always had.
    if quantization == "auto":
        normalized["objective"] = objective
    return normalized


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def recipe_hash(recipe: dict[str, Any] | None) -> str:
    """sha256 of the normalised recipe alone (reported beside the output)."""
    return hashlib.sha256(canonical_json(normalize_recipe(recipe)).encode()).hexdigest()


def compression_cache_key(
    source_sha256: str, recipe: dict[str, Any] | None, compressor_version: str = COMPRESSOR_VERSION
) -> str:
    source = source_sha256.strip().lower() if isinstance(source_sha256, str) else ""
    if not _SHA256_HEX.match(source):
        raise ValueError(f"source_sha256: {source_sha256!r} is not a sha256 hex digest (64 hex characters)")
    if not isinstance(compressor_version, str) or not compressor_version:
        raise ValueError("compressor_version: must be a non-empty string")
    material = {"source": source, "recipe": normalize_recipe(recipe), "compressor": compressor_version}
    return hashlib.sha256(canonical_json(material).encode()).hexdigest()


def compressed_prefix(bucket: str, key: str) -> str:
    """Where the output of cache key `key` lives: s3://<bucket>/modelops-cache/<key>/."""
    if not bucket or "/" in bucket:
        raise ValueError(f"bucket: {bucket!r} is not a bucket name")
    if not _SHA256_HEX.match(key or ""):
        raise ValueError(f"key: {key!r} is not a cache key (64 hex characters)")
    return f"s3://{bucket}/{CACHE_ROOT}/{key}/"
