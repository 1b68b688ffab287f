"""The compression report, built as a `contract.report.JobReport`: the full form written to
report.json, and the compact termination message."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from typing import Any

from modelops.api.version import (
    CalibrationReport,
    CandidateReport,
    CompressedArtifact,
    LayerReport,
    MetricReport,
    ReportOutcome,
    VersionReason,
)
from modelops.cachekey import COMPRESSOR_VERSION, compression_cache_key
from modelops.compress.recipe import Recipe
from modelops.contract.report import JobLatencyReport, JobReason, JobReport, ReportReason, SourceReport

# Kubernetes keeps at most 4096 bytes of a termination message; stay well below.
TERMINATION_LIMIT = 3500
_LIBRARIES = ("torch", "onnx", "onnxruntime", "torchao")
COMPACT_KEYS = (
    "outcome",
    "reason",
    "message",
    "device",
    "artifact",
    "bytesBefore",
    "bytesAfter",
    "ratio",
    "latencyMsBefore",
    "latencyMsAfter",
    "metric",
    "recipeHash",
    "compressorVersion",
    "libraries",
    "latency",
    "objective",
    "chosenQuantization",
    "candidates",
    "calibration",
    "layers",
    "download",
    "timings",
)
# The latency keys that go into the termination message (the full block stays in report.json).
_COMPACT_LATENCY = ("runtime", "device", "cpu", "batch", "spread")


def library_versions() -> dict[str, str | None]:
    """Installed versions, read from package metadata so that nothing heavy is imported."""
    versions: dict[str, str | None] = {}
    for name in _LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


@dataclass(frozen=True)
class Recorded:
    """What the report of a finished compression records besides the pipeline's result: the
    source read, the artifact uploaded, the evaluation asked for and its dataset's sample count,
    the gate's measurement with the dataset object it was taken on, and the calibration dataset."""

    source: dict[str, Any]
    artifact: dict[str, Any]
    evaluation: dict[str, Any] | None
    samples: int | None
    metric: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None


def success_report(result: Any, recorded: Recorded, recipe: Recipe, notes: tuple[str, ...] = ()) -> JobReport:
    """The full report for a compression that ran to the end (outcome Passed or Rejected), as
    an entry of `recipe`'s cache key."""
    source, artifact, metric, calibration = recorded.source, recorded.artifact, recorded.metric, recorded.calibration
    before, after = source["bytes"], artifact["bytes"]
    passed = result.outcome == ReportOutcome.PASSED
    chosen = result.candidates is not None and passed
    return JobReport(
        outcome=result.outcome,
        reason=JobReason.ACCURACY_GATE_PASSED if passed else VersionReason.ACCURACY_GATE_REJECTED,
        message=result.message,
        device=result.device,
        artifact=CompressedArtifact.model_validate(artifact),
        source=SourceReport.model_validate(source),
        bytes_before=before,
        bytes_after=after,
        # Higher is smaller: 4.0 means the output is a quarter of the source.
        ratio=round(before / after, 4) if after else None,
        latency_ms_before=_round(result.latency_ms_before),
        latency_ms_after=_round(result.latency_ms_after),
        latency=JobLatencyReport.model_validate(
            {**result.latency, "runtimeBefore": result.runtimes["before"], "runtimeAfter": result.runtimes["after"]}
        ),
        interface=result.interface,
        objective=result.objective,
        chosen_quantization=result.recipe.quantization if chosen else None,
        resolved_recipe=result.recipe.to_dict() if chosen else None,
        candidates=None if result.candidates is None else [CandidateReport.model_validate(c.to_dict(before)) for c in result.candidates],
        layers=[
            LayerReport(name=name, precision=layer.precision, bytes=layer.bytes, sensitivity=_round(layer.error, 6))
            for name, layer in sorted(result.layers.items())
        ]
        or None,
        metric=MetricReport.model_validate(metric) if metric is not None
        else MetricReport.model_validate(result.metric.to_dict()) if result.metric is not None else None,
        evaluation=None if recorded.evaluation is None else {**recorded.evaluation, "samples": recorded.samples},
        recipe=recipe.to_dict(),
        recipe_hash=recipe.hash,
        cache_key=compression_cache_key(source["sha256"], recipe.compression),
        compressor_version=COMPRESSOR_VERSION,
        libraries=library_versions(),
        weights=result.weights,
        notes=[*result.notes, *notes],
        seconds=result.seconds,
        created_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        calibration=None if calibration is None else CalibrationReport.model_validate(calibration),
    )


def failure_report(
    reason: ReportReason,
    message: str,
    device: str | None = None,
    recipe_hash: str | None = None,
    outcome: ReportOutcome = ReportOutcome.FAILED,
) -> JobReport:
    return JobReport(
        outcome=outcome,
        reason=reason,
        message=message,
        device=device,
        recipe_hash=recipe_hash,
        compressor_version=COMPRESSOR_VERSION,
        libraries=library_versions(),
    )


def compact(report: dict[str, Any]) -> str:
    """The report's contract keys (its `JobReport.record()`) as JSON that fits a termination message."""
    short: dict[str, Any] = {key: report.get(key) for key in COMPACT_KEYS}
    latency, candidates = short.get("latency"), short.get("candidates")
    if isinstance(latency, dict):
        short["latency"] = {k: v for k, v in latency.items() if k in _COMPACT_LATENCY}
    text = json.dumps(short, separators=(",", ":"), sort_keys=True)
    if len(text) > TERMINATION_LIMIT and isinstance(candidates, list):
        # Candidates keep their figures and verdicts; their messages stay in report.json.
        short["candidates"] = [{k: v for k, v in c.items() if k != "message"} for c in candidates]
        text = json.dumps(short, separators=(",", ":"), sort_keys=True)
    layers = short.get("layers")
    if len(text) > TERMINATION_LIMIT and isinstance(layers, list):
        # Each weight keeps its precision; sizes and sensitivities stay in report.json.
        short["layers"] = [{k: v for k, v in layer.items() if k in ("name", "precision")} for layer in layers]
        text = json.dumps(short, separators=(",", ":"), sort_keys=True)
        if len(text) > TERMINATION_LIMIT:  # only the weights not at int4; report.json lists every one
            short["layers"] = [layer for layer in short["layers"] if layer.get("precision") != "int4"] or None
            text = json.dumps(short, separators=(",", ":"), sort_keys=True)
        if len(text) > TERMINATION_LIMIT:
            short["layers"] = None
            text = json.dumps(short, separators=(",", ":"), sort_keys=True)
    message = str(short.get("message") or "")
    while len(text) > TERMINATION_LIMIT and message:
        message = message[: max(0, len(message) - (len(text) - TERMINATION_LIMIT) - 3)]
        short["message"] = message + "..."
        text = json.dumps(short, separators=(",", ":"), sort_keys=True)
    return text
