"""The content-addressed cache key: normalisation and stability."""

from __future__ import annotations

import hashlib
import json

import pytest

from modelops.cachekey import (
    COMPRESSOR_VERSION,
    InvalidRecipe,
    compressed_prefix,
    compression_cache_key,
    normalize_recipe,
    recipe_hash,
)

pytestmark = pytest.mark.unit

SHA = "ab" * 32
DEFAULT = {"quantization": "none", "pruning": {"method": "none", "amount": 0.0}, "targetFormat": "onnx"}


@pytest.mark.parametrize(
    ("recipe", "expected"),
    [
        (None, DEFAULT),
        ({}, DEFAULT),
        ({"quantization": "int8-weight-only"}, {**DEFAULT, "quantization": "int8-weight-only"}),
        ({"pruning": {"method": "none"}}, DEFAULT),
        # Spellings the apiserver refuses are refused here too, naming the field.
        ({"pruning": {"method": "unstructured", "amount": 0}}, None),
        ({"pruning": {"method": "none", "amount": 0.5}}, None),
        (
            {"pruning": {"method": "structured", "amount": 0.3}, "targetFormat": "torchscript", "quantization": "fp16"},
            {"quantization": "fp16", "pruning": {"method": "structured", "amount": 0.3}, "targetFormat": "torchscript"},
        ),
        ({"pruning": {"method": "unstructured", "amount": 1}}, None),
    ],
)
def test_normalize_recipe(recipe, expected) -> None:
    if expected is None:
        with pytest.raises(InvalidRecipe, match="pruning.amount"):
            normalize_recipe(recipe)
    else:
        assert normalize_recipe(recipe).wire() == expected


@pytest.mark.parametrize(
    ("recipe", "field"),
    [
        ({"quantization": "int4"}, "quantization"),
        ({"pruning": {"method": "random", "amount": 0.1}}, "pruning.method"),
        ({"pruning": {"method": "unstructured", "amount": "half"}}, "pruning.amount"),
        ({"pruning": {"method": "unstructured", "amount": True}}, "pruning.amount"),
        ({"pruning": {"method": "unstructured", "amount": -0.1}}, "pruning.amount"),
        ({"pruning": {"method": "unstructured"}}, "pruning.amount"),
        ({"pruning": "heavy"}, "pruning"),
        ({"targetFormat": "tflite"}, "targetFormat"),
        ([], "recipe"),
    ],
)
def test_invalid_recipes_name_the_field(recipe, field: str) -> None:
    with pytest.raises(InvalidRecipe) as info:
        normalize_recipe(recipe)
    assert str(info.value).startswith(f"{field}:")


def test_recipes_are_the_api_model_and_json_text_parses_the_same() -> None:
    from modelops.api.model import Compression

    text = '{"quantization": "fp16", "pruning": {"method": "structured", "amount": 0.25}}'
    assert normalize_recipe(text) == normalize_recipe(Compression.model_validate_json(text))
    assert isinstance(normalize_recipe(text), Compression)
    assert recipe_hash(text) == recipe_hash({"quantization": "fp16", "pruning": {"method": "structured", "amount": 0.25}})


def test_equivalent_recipes_share_a_key_and_the_key_is_a_hex_sha256() -> None:
    spelled_out = {"quantization": "int8-dynamic", "pruning": {"method": "none", "amount": 0.0}, "targetFormat": "onnx"}
    key = compression_cache_key(SHA, {"quantization": "int8-dynamic"})
    assert key == compression_cache_key(SHA.upper(), spelled_out)
    expected_material = {"compressor": COMPRESSOR_VERSION, "recipe": normalize_recipe(spelled_out).wire(), "source": SHA}
    canonical = json.dumps(expected_material, sort_keys=True, separators=(",", ":"))
    assert key == hashlib.sha256(canonical.encode()).hexdigest()


@pytest.mark.parametrize(
    "changed",
    [
        {"source_sha256": "cd" * 32},
        {"recipe": {"quantization": "int8-weight-only"}},
        {"recipe": {"quantization": "int8-dynamic", "pruning": {"method": "unstructured", "amount": 0.5}}},
        {"recipe": {"quantization": "int8-dynamic", "targetFormat": "torchscript"}},
        {"compressor_version": "999"},
    ],
)
def test_any_input_change_changes_the_key(changed) -> None:
    base = {"source_sha256": SHA, "recipe": {"quantization": "int8-dynamic"}, "compressor_version": COMPRESSOR_VERSION}
    assert compression_cache_key(**base) != compression_cache_key(**{**base, **changed})


def test_recipe_hash_ignores_spelling_of_defaults() -> None:
    assert recipe_hash({}) == recipe_hash(DEFAULT)
    assert recipe_hash({}) != recipe_hash({"quantization": "fp16"})


def test_bad_source_digest_is_named() -> None:
    with pytest.raises(ValueError, match="source_sha256"):
        compression_cache_key("abc", {})


def test_compressed_prefix_layout() -> None:
    key = compression_cache_key(SHA, {})
    assert compressed_prefix("models", key) == f"s3://models/modelops-cache/{key}/"
    with pytest.raises(ValueError, match="key"):
        compressed_prefix("models", "../escape")
    with pytest.raises(ValueError, match="bucket"):
        compressed_prefix("", key)


def test_block_size_is_part_of_an_int4_recipe_only() -> None:
    from modelops.cachekey import DEFAULT_BLOCK_SIZE

    assert normalize_recipe({"quantization": "int4-weight-only"}).wire()["blockSize"] == DEFAULT_BLOCK_SIZE
    assert normalize_recipe({"quantization": "int4-weight-only", "blockSize": 32}).wire()["blockSize"] == 32
    assert "blockSize" not in normalize_recipe({"quantization": "int8-weight-only", "blockSize": 32}).wire()
    with pytest.raises(InvalidRecipe, match="^blockSize: "):
        normalize_recipe({"quantization": "int4-weight-only", "blockSize": 48})
