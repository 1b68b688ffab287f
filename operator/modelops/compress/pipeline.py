"""Compress one local artifact and evaluate it against its parent (no object storage here)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
import numpy as np

from modelops.compress import runtime
from modelops.compress.metrics import DatasetError, MetricResult, evaluate_gate
from modelops.compress.onnx_compress import compress_onnx
from modelops.compress.recipe import Evaluation, Recipe, UnsupportedRecipe, check_supported
from modelops.compress.weights import default_threads

OUTPUT_FILES = {"onnx": "model.onnx", "torchscript": "model.pt"}


@dataclass(frozen=True)
class Dataset:
    inputs: np.ndarray
    labels: np.ndarray | None

    @classmethod
    def from_npz(cls, path: Path) -> Dataset:
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except Exception as exc:  # noqa: BLE001 - numpy raises several types for a bad archive
            raise DatasetError(f"the evaluation dataset is not a readable .npz file: {exc}") from exc
        inputs = arrays.get("inputs")
        if inputs is None:
            raise DatasetError(
                f"the evaluation dataset has no array 'inputs' (it has: {', '.join(sorted(arrays)) or 'none'})"
            )
        if inputs.ndim < 1 or len(inputs) == 0 or inputs.dtype.kind not in "fiub":
            raise DatasetError(f"'inputs' must be a non-empty numeric array; got {inputs.dtype} {inputs.shape}")
        labels = arrays.get("labels")
        if labels is not None and (labels.dtype.kind not in "iu" or labels.shape != (len(inputs),)):
            raise DatasetError(
                f"'labels' must be integers of shape ({len(inputs)},); got {labels.dtype} {labels.shape}"
            )
        return cls(inputs=inputs, labels=labels)


@dataclass(frozen=True)
class Options:
    """Settings the recipe does not carry: tensor names and an input shape for torch sources."""

    input_names: list[str] | None = None
    output_names: list[str] | None = None
    input_shape: tuple[int, ...] | None = None
    threads: int | None = None


@dataclass
class CompressionResult:
    output_path: Path
    output_format: str
    outcome: str  # "Passed" or "Rejected"
    message: str
    device: str
    metric: MetricResult | None
    latency_ms_before: float | None
    latency_ms_after: float | None
    runtimes: dict[str, str]
    weights: dict[str, int]
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def _example_batch(dataset: Dataset | None, options: Options, fallback: np.ndarray | None) -> np.ndarray | None:
    if dataset is not None:
        return np.ascontiguousarray(dataset.inputs[: runtime.LATENCY_BATCH]).astype(np.float32, copy=False)
    if options.input_shape is not None:
        return np.zeros(options.input_shape, dtype=np.float32)
    return fallback


def compress_artifact(
    source_path: Path,
    source_format: str,
    recipe: Recipe,
    workdir: Path,
    evaluation: Evaluation | None = None,
    dataset: Dataset | None = None,
    options: Options | None = None,
) -> CompressionResult:
    options = options or Options()
    check_supported(recipe, source_format)
    if evaluation is not None and dataset is None:
        raise ValueError("an evaluation needs its dataset")
    threads = options.threads or default_threads()
    workdir.mkdir(parents=True, exist_ok=True)
    output = workdir / OUTPUT_FILES[recipe.target_format]
    device = runtime.select_device(onnx_runtime_needed=recipe.target_format == "onnx")
    seconds: dict[str, float] = {}
    notes: list[str] = []
    parent_outputs: np.ndarray | None = None
    latency_before: float | None = None

    started = time.perf_counter()
    if source_format == "onnx":
        from modelops.compress.onnx_stream import OnnxFile

        with OnnxFile(source_path):  # a cheap, early format check with a clear error
            pass
        parent = runtime.onnx_runner(source_path, device, threads)
        example = _example_batch(dataset, options, runtime.onnx_example_batch(source_path))
        module = None
    else:
        from modelops.compress import torch_models

        module, input_names, recorded_example = torch_models.load(source_path, source_format, device)
        parent = runtime.torch_runner(module, device)
        example = _example_batch(dataset, options, recorded_example)
        if example is None:
            raise UnsupportedRecipe(
                "input-shape: a TorchScript source needs an example input; pass --input-shape or an evaluation dataset"
            )
        input_names = options.input_names or input_names or ["input"]
    seconds["load"] = time.perf_counter() - started

    # The parent is measured before compression, which may change a torch module in place.
    if dataset is not None:
        parent_outputs = runtime.run_all(parent, dataset.inputs)
    if example is not None:
        latency_before = runtime.median_latency_ms(parent, example)

    started = time.perf_counter()
    weights: dict[str, int] = {}
    if recipe.target_format == "onnx":
        onnx_source = source_path
        if module is not None:
            onnx_source = workdir / "parent.onnx"
            torch_models.export_onnx(module, example, onnx_source, input_names, options.output_names or ["output"])
            notes.append(f"{source_format} exported to ONNX opset {torch_models.ONNX_OPSET} before compression")
        stats = compress_onnx(onnx_source, output, recipe, threads)
        weights = {
            "tensors": stats.tensors_total,
            "pruned": stats.tensors_pruned,
            "quantized": stats.tensors_quantized,
            "cast": stats.tensors_cast,
        }
        notes.extend(stats.notes)
        if recipe.quantization in ("fp16", "bf16"):
            notes.append(
                f"weights stored as {recipe.quantization} and cast to float32 in the graph; the model computes in float32"
            )
        compressed = runtime.onnx_runner(output, device, threads)
    else:
        weights = {"pruned": torch_models.prune(module, recipe)}
        torch_models.save_torchscript(module, recipe, example, output)
        if recipe.quantization in ("fp16", "bf16"):
            notes.append(f"the TorchScript module computes in {recipe.quantization} with float32 inputs and outputs")
        compressed = runtime.torch_runner(torch_models.load_saved_torchscript(output, device), device)
    seconds["compress"] = time.perf_counter() - started

    metric: MetricResult | None = None
    started = time.perf_counter()
    if evaluation is not None:
        metric = evaluate_gate(
            evaluation.metric,
            evaluation.threshold,
            parent_outputs,
            runtime.run_all(compressed, dataset.inputs),
            dataset.labels,
        )
    latency_after = runtime.median_latency_ms(compressed, example) if example is not None else None
    seconds["evaluate"] = time.perf_counter() - started
    if example is None:
        notes.append("latency not measured: no example input (give an evaluation dataset)")

    outcome = "Passed" if metric is None or metric.passed else "Rejected"
    message = metric.explain() if metric is not None else "compressed; no evaluation requested"
    return CompressionResult(
        output_path=output,
        output_format=recipe.target_format,
        outcome=outcome,
        message=message,
        device=device,
        metric=metric,
        latency_ms_before=latency_before,
        latency_ms_after=latency_after,
        runtimes={"before": parent.runtime, "after": compressed.runtime},
        weights=weights,
        notes=notes,
        seconds={k: round(v, 3) for k, v in seconds.items()},
    )


def evaluate_compressed(
    source_path: Path,
    source_format: str,
    compressed_path: Path,
    recipe: Recipe,
    evaluation: Evaluation,
    dataset: Dataset,
    options: Options | None = None,
) -> CompressionResult:
    """Evaluate an earlier compression output against its parent, without compressing again."""
    options = options or Options()
    threads = options.threads or default_threads()
    device = runtime.select_device(onnx_runtime_needed="onnx" in (source_format, recipe.target_format))
    started = time.perf_counter()
    if source_format == "onnx":
        parent = runtime.onnx_runner(source_path, device, threads)
    else:
        from modelops.compress import torch_models

        module, _, _ = torch_models.load(source_path, source_format, device)
        parent = runtime.torch_runner(module, device)
    if recipe.target_format == "onnx":
        compressed = runtime.onnx_runner(compressed_path, device, threads)
    else:
        from modelops.compress import torch_models

        compressed = runtime.torch_runner(torch_models.load_saved_torchscript(compressed_path, device), device)
    seconds = {"load": time.perf_counter() - started}
    started = time.perf_counter()
    metric = evaluate_gate(
        evaluation.metric,
        evaluation.threshold,
        runtime.run_all(parent, dataset.inputs),
        runtime.run_all(compressed, dataset.inputs),
        dataset.labels,
    )
    example = _example_batch(dataset, options, None)
    seconds["evaluate"] = time.perf_counter() - started
    return CompressionResult(
        output_path=compressed_path,
        output_format=recipe.target_format,
        outcome="Passed" if metric.passed else "Rejected",
        message=metric.explain(),
        device=device,
        metric=metric,
        latency_ms_before=runtime.median_latency_ms(parent, example) if example is not None else None,
        latency_ms_after=runtime.median_latency_ms(compressed, example) if example is not None else None,
        runtimes={"before": parent.runtime, "after": compressed.runtime},
        weights={},
        notes=["evaluated an earlier compression of the same artifact and recipe; nothing was compressed again"],
        seconds={k: round(v, 3) for k, v in seconds.items()},
    )
