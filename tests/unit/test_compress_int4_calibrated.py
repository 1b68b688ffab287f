"""Data-aware int4: the cache key of calibrated recipes, the refusal of the evaluation dataset as
calibration, GPTQ and asymmetric blocks, and int4-mixed's per-layer precision."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from modelops.api.version import SAME_DATASETS_MESSAGE, ModelVersionSpec
from modelops.cachekey import InvalidRecipe, compression_cache_key, normalize_recipe
from modelops.compress import weights as W

pytestmark = pytest.mark.unit

SHA = "ab" * 32
CALIBRATION = {"datasetUri": "s3://data/calibration.npz", "sha256": "c" * 64}
EVALUATION = {"datasetUri": "s3://data/eval.npz", "metric": "cosine-similarity", "threshold": 0.98}


def _key(**recipe: object) -> str:
    return compression_cache_key(SHA, {"quantization": "int4-weight-only", **recipe})


def test_the_cache_key_includes_the_calibration_digest_and_the_method() -> None:
    calibrated = _key(calibration=CALIBRATION)
    assert calibrated != _key(calibration={**CALIBRATION, "sha256": "d" * 64}), "other calibration bytes, another key"
    assert calibrated != _key(calibration={**CALIBRATION, "datasetUri": "s3://data/other.npz"})
    assert calibrated != _key(calibration=CALIBRATION, method="rtn"), "gptq (the default with calibration) and rtn differ"
    assert calibrated == _key(calibration=CALIBRATION, method="gptq")
    assert _key() != _key(calibration=CALIBRATION)
    assert _key(asymmetric=True) != _key()
    assert _key(blockSize=32) != _key(blockSize=64)


def test_calibration_is_dropped_where_nothing_reads_it() -> None:
    assert "calibration" not in normalize_recipe({"quantization": "int8-weight-only", "calibration": CALIBRATION}).wire()
    auto = normalize_recipe({"quantization": "auto", "calibration": CALIBRATION}).wire()
    assert auto["calibration"] == CALIBRATION


def test_the_first_int4_form_keeps_its_key() -> None:
    """Round to nearest, symmetric: the recipe spelled as before, so earlier cache entries still match."""
    assert normalize_recipe({"quantization": "int4-weight-only", "method": "rtn", "asymmetric": False}).wire() == {
        "quantization": "int4-weight-only",
        "blockSize": 128,
        "pruning": {"method": "none", "amount": 0.0},
        "targetFormat": "onnx",
    }


def test_int4_mixed_defaults_and_requirements() -> None:
    mixed = normalize_recipe({"quantization": "int4-mixed", "calibration": CALIBRATION}).wire()
    assert (mixed["blockSize"], mixed["method"], mixed["asymmetric"]) == (32, "gptq", True)
    with pytest.raises(InvalidRecipe, match="^calibration: "):
        normalize_recipe({"quantization": "int4-mixed"})
    with pytest.raises(InvalidRecipe, match="^method: gptq"):
        normalize_recipe({"quantization": "int4-weight-only", "method": "gptq"})


def _spec(calibration_uri: str) -> dict[str, object]:
    return {
        "model": "m",
        "version": 1,
        "artifact": {"uri": "s3://data/model.onnx", "format": "onnx", "sha256": SHA},
        "compression": {"quantization": "int4-mixed", "calibration": {**CALIBRATION, "datasetUri": calibration_uri}},
        "evaluation": EVALUATION,
    }


def test_the_evaluation_dataset_is_refused_as_calibration_naming_both_fields() -> None:
    with pytest.raises(ValidationError) as refused:
        ModelVersionSpec.model_validate(_spec(EVALUATION["datasetUri"]))  # type: ignore[arg-type]
    assert "compression.calibration.datasetUri and evaluation.datasetUri" in str(refused.value)
    assert ModelVersionSpec.model_validate(_spec(CALIBRATION["datasetUri"])).compression is not None
    rules = ModelVersionSpec.model_json_schema()["x-kubernetes-validations"]
    assert any(rule["message"] == SAME_DATASETS_MESSAGE for rule in rules), "the apiserver refuses it too"


def _unpack(blocks: W.Int4Blocks, channels: int, depth: int, block_size: int) -> np.ndarray:
    levels = np.stack([blocks.packed & 15, blocks.packed >> 4], axis=-1).reshape(channels, -1, block_size).astype(float)
    if blocks.zero_points is None:
        zeros = np.full(blocks.scales.shape, 8.0)
    else:
        zeros = np.stack([blocks.zero_points & 15, blocks.zero_points >> 4], -1).reshape(channels, -1)[:, : blocks.scales.shape[1]]
    return ((levels - zeros[..., None]) * blocks.scales[..., None]).reshape(channels, -1)[:, :depth]


@pytest.mark.parametrize("block_size", [16, 32, 64, 128, 256])
def test_symmetric_round_to_nearest_matches_the_first_int4_kernel(block_size: int) -> None:
    weight = np.random.default_rng(0).standard_normal((300, 40)).astype(np.float32)
    packed, scales = W.quantize_int4_blocks(weight, block_size, rows_are_channels=False)
    blocks = W.quantize_int4(weight, block_size, rows_are_channels=False)
    assert np.array_equal(blocks.packed, packed) and np.allclose(blocks.scales, scales)


def test_asymmetric_blocks_fit_shifted_weights_better() -> None:
    weight = (np.random.default_rng(1).random((128, 32)) + 0.5).astype(np.float32)  # all positive
    symmetric = W.quantize_int4(weight, 32, rows_are_channels=False)
    asymmetric = W.quantize_int4(weight, 32, rows_are_channels=False, asymmetric=True)
    assert asymmetric.zero_points is not None and asymmetric.zero_points.shape == (32 * 2,)
    assert asymmetric.error < symmetric.error / 2
    restored = _unpack(asymmetric, 32, 128, 32).T
    assert np.abs(restored - weight).max() <= asymmetric.scales.max() / 2 + 1e-6


def test_gptq_lowers_the_output_error_on_correlated_activations() -> None:
    rng = np.random.default_rng(2)
    depth, channels = 128, 48
    mixing = rng.standard_normal((depth, depth)) * 0.3 + np.eye(depth)
    activations = rng.standard_normal((4096, depth)) @ mixing  # correlated features, as in real layers
    hessian = (activations.T @ activations / len(activations)).astype(np.float32)
    weight = rng.standard_normal((depth, channels)).astype(np.float32)
    for asymmetric in (False, True):
        nearest = W.quantize_int4(weight, 32, False, asymmetric)
        gptq = W.quantize_int4(weight, 32, False, asymmetric, hessian)

        def output_error(blocks: W.Int4Blocks) -> float:
            restored = _unpack(blocks, channels, depth, 32).T
            return float(np.linalg.norm(activations @ (restored - weight)) / np.linalg.norm(activations @ weight))

        assert output_error(gptq) < 0.8 * output_error(nearest)
        assert gptq.error == pytest.approx(output_error(gptq) ** 2, rel=0.05), "error is the relative output error"


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    from models.transformer import TransformerConfig, export, write_eval_npz

    folder = tmp_path_factory.mktemp("encoder")
    config = TransformerConfig(vocab=500, hidden=64, layers=2, heads=2, intermediate=128, sequence=16, max_positions=32)
    return (
        export(folder / "model.onnx", config),
        write_eval_npz(folder / "calibration.npz", config, samples=32, seed=2),
        write_eval_npz(folder / "eval.npz", config, samples=32, seed=1),
    )


def _compress(encoder: tuple[Path, Path, Path], tmp_path: Path, recipe: dict[str, object], threshold: float):  # type: ignore[no-untyped-def]
    from modelops.compress.pipeline import Dataset, compress_artifact
    from modelops.compress.recipe import Recipe, parse_evaluation

    source, calibration, evaluation = encoder
    return compress_artifact(
        source, "onnx", Recipe.of({**recipe, "calibration": CALIBRATION}), tmp_path,
        parse_evaluation({**EVALUATION, "threshold": threshold}), Dataset.from_npz(evaluation), None,
        Dataset.from_npz(calibration),
    )  # fmt: skip


def test_gptq_in_the_pipeline_rounds_from_the_calibration_set(encoder, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    recipe = {"quantization": "int4-weight-only", "blockSize": 32, "asymmetric": True}
    nearest = _compress(encoder, tmp_path / "rtn", {**recipe, "method": "rtn"}, 0.0)
    gptq = _compress(encoder, tmp_path / "gptq", {**recipe, "method": "gptq"}, 0.0)
    assert any(note.startswith("gptq: 13 MatMul weights") for note in gptq.notes), gptq.notes
    assert nearest.output_path.read_bytes() != gptq.output_path.read_bytes()
    assert any(note.startswith("calibrated on 32 samples") for note in gptq.notes)


def test_int4_mixed_keeps_sensitive_groups_at_int8_until_the_gate_passes(encoder, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    plain = _compress(encoder, tmp_path / "plain", {"quantization": "int4-weight-only", "blockSize": 32, "asymmetric": True}, 0.0)
    strict = 0.5 * (1 + plain.metric.compressed)  # halfway between plain int4 and a perfect copy
    result = _compress(encoder, tmp_path / "mixed", {"quantization": "int4-mixed"}, strict)
    assert result.outcome == "Passed" and result.metric is not None and result.metric.compressed >= strict
    precisions = {layer.precision for layer in result.layers.values()}
    assert precisions == {"int4", "int8"}, "some weights stay int4, the most sensitive go to int8"
    assert result.output_path.stat().st_size < encoder[0].stat().st_size / 2.5
    assert any(note.startswith("int4-mixed: ") for note in result.notes)
    files = sorted(p.relative_to(tmp_path / "mixed") for p in (tmp_path / "mixed").rglob("*.onnx"))
    assert len(files) == 1, f"only the chosen build stays on disk: {files}"


def test_auto_with_calibration_tries_int4_mixed_and_reports_every_candidate(encoder, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from modelops.compress.pipeline import AUTO_CANDIDATES

    result = _compress(encoder, tmp_path, {"quantization": "auto"}, 0.9999)
    assert [c.quantization for c in result.candidates or []] == list(AUTO_CANDIDATES)
    on_disk = [c for c in result.candidates or [] if c.output_path is not None]
    assert len(on_disk) <= 1, "only the best candidate is kept"
    assert all(c.runner is None for c in result.candidates or []), "no candidate stays loaded"


def test_the_operator_passes_calibration_and_the_int4_fields_to_the_job() -> None:
    """The recipe the operator keys and hands to the Job keeps the version's (or the Model's) calibration."""
    from modelops.api.model import ModelSpec
    from modelops.core.versions import effective_recipe

    model = ModelSpec.model_validate(
        {
            "storage": {"bucket": "models"},
            "signature": {"inputs": [{"name": "x", "dataType": "FP32", "dims": [4]}], "outputs": [{"name": "y", "dataType": "FP32", "dims": [4]}]},
            "versionDefaults": {"compression": {"calibration": CALIBRATION, "asymmetric": False}},
        }
    )
    own = ModelVersionSpec.model_validate(_spec(CALIBRATION["datasetUri"]) | {"compression": {"quantization": "int4-mixed", "method": "rtn"}})
    recipe = effective_recipe(own, model).wire()
    assert (recipe["calibration"], recipe["method"], recipe["asymmetric"]) == (CALIBRATION, "rtn", False)


def test_the_termination_message_keeps_each_layers_precision_and_the_calibration_digest() -> None:
    import json

    from modelops.compress import report

    layers = [{"name": f"encoder.layer.{i}.weight", "precision": "int8" if i < 3 else "int4", "bytes": 1 << 20, "sensitivity": 0.001234}
              for i in range(40)]  # fmt: skip
    full = {"outcome": "Passed", "message": "ok", "layers": layers, "calibration": {"uri": "s3://d/c.npz", "sha256": "c" * 64, "samples": 32}}
    short = json.loads(report.compact(full))
    assert short["calibration"]["sha256"] == "c" * 64
    assert [(layer["name"], layer["precision"]) for layer in short["layers"]] == [(layer["name"], layer["precision"]) for layer in layers]
    assert len(report.compact(full)) <= report.TERMINATION_LIMIT
