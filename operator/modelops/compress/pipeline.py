"""Compress one local artifact and evaluate it against its parent (no object storage here).

With `quantization: auto` every candidate recipe is compressed and gated in turn; a candidate
that passes is timed beside the parent, and the best that passed is kept. Only the parent and
the candidate being judged are loaded, and only the best so far stays on disk beside it.

`int4-mixed` starts from int4 everywhere, ranks the weights by their int4 error on the
calibration set, and keeps the most sensitive at int8 (1, 2, 4, ... of them, then bisection)
until the gate passes on the evaluation set: at most MIXED_MAX_TRIALS builds.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from modelops.api.model import Signature
from modelops.api.types import Step
from modelops.api.version import ArtifactFormat
from modelops.compress import calibrate, runtime
from modelops.compress.accuracy import MetricResult, evaluate_gate
from modelops.compress.dataset import Dataset
from modelops.compress.onnx_compress import Int4Options, LayerStats, compress_onnx
from modelops.compress.onnx_stream import artifact_bytes
from modelops.compress.recipe import Evaluation, InvalidRecipe, Recipe, UnsupportedRecipe, check_supported
from modelops.compress.runtime import read_interface
from modelops.compress.steps import StepClock
from modelops.compress.weights import default_threads
from modelops.contract.formats import artifact_file
from modelops.contract.interface import check_signature

AUTO = "auto"
# The documented candidate list of `quantization: auto`, in the order ties are broken.
# int4-mixed needs a calibration dataset; without one it is reported Unsupported.
AUTO_CANDIDATES = ("int8-dynamic", "int8-weight-only", "int4-weight-only", "int4-mixed", "fp16")
# Builds int4-mixed may try: all int4, then 1, 2, 4, ... weights at int8, then bisection.
MIXED_MAX_TRIALS = 8
# Sensitivity is measured end to end, one build per group, up to this many groups; past it,
# each group's local int4 error ranks it instead.
MIXED_MAX_PROBES = 32
PROBE_SAMPLES = 32
EMBEDDINGS = "embeddings"
_MESSAGE_LIMIT = 240


class Verdict(StrEnum):
    PASSED = "Passed"
    REJECTED = "Rejected"
    UNSUPPORTED = "Unsupported"
    FAILED = "Failed"


__all__ = ["AUTO_CANDIDATES", "Candidate", "CompressionResult", "Dataset", "Options", "Verdict", "compress_artifact"]


@dataclass(frozen=True)
class Options:
    """Settings the recipe does not carry: the Model's signature, tensor names and an input
    shape for torch sources, the thread count, and the clock the Job's steps are timed by."""

    input_names: list[str] | None = None
    output_names: list[str] | None = None
    input_shape: tuple[int, ...] | None = None
    threads: int | None = None
    signature: Signature | None = None
    clock: StepClock = field(default_factory=StepClock)


@dataclass
class Candidate:
    """One recipe's result: its artifact, the gate's verdict, and its latency."""

    quantization: str
    verdict: Verdict
    message: str
    recipe: Recipe | None = None
    output_path: Path | None = None
    bytes: int | None = None
    metric: MetricResult | None = None
    latency: runtime.Latency | None = None
    weights: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    runner: runtime.Runner | None = field(default=None, repr=False)
    runtime: str = ""  # the runner's runtime, kept after the runner is released
    layers: dict[str, LayerStats] = field(default_factory=dict)  # int4-mixed: each weight's precision

    def to_dict(self, source_bytes: int) -> dict[str, object]:
        return {
            "quantization": self.quantization,
            "verdict": str(self.verdict),
            "bytes": self.bytes,
            "ratio": round(source_bytes / self.bytes, 4) if self.bytes else None,
            "latencyMs": None if self.latency is None else round(self.latency.median_ms, 4),
            "metric": None if self.metric is None else self.metric.to_dict(),
            "message": self.message[:_MESSAGE_LIMIT],
        }


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
    recipe: Recipe  # the recipe that produced the artifact (auto's pick, or the one asked for)
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    latency: dict[str, object] = field(default_factory=dict)
    interface: dict[str, object] | None = None
    objective: str | None = None
    candidates: list[Candidate] | None = None
    layers: dict[str, LayerStats] = field(default_factory=dict)
    calibration_samples: int | None = None


def _recipes(recipe: Recipe, source_format: str) -> list[tuple[str, Recipe | InvalidRecipe]]:
    """(quantization, recipe) to compress; for auto, a candidate this compressor cannot
    build keeps its error, so that the report says so instead of dropping it."""
    if recipe.quantization != AUTO:
        check_supported(recipe, source_format)
        return [(recipe.quantization, recipe)]
    if recipe.target_format != "onnx":
        raise UnsupportedRecipe("quantization: auto compares ONNX candidates; use targetFormat onnx")
    base = {k: v for k, v in recipe.to_dict().items() if k != "objective"}
    candidates: list[tuple[str, Recipe | InvalidRecipe]] = []
    for quantization in AUTO_CANDIDATES:
        try:
            candidate = Recipe.from_dict({**base, "quantization": quantization})
            check_supported(candidate, source_format)
        except InvalidRecipe as exc:
            candidates.append((quantization, exc))
        else:
            candidates.append((quantization, candidate))
    return candidates


def _calibrated(recipe: Recipe) -> bool:
    return recipe.quantization == "int4-mixed" or recipe.method == "gptq"


def search_mixed(
    recipe: Recipe,
    outdir: Path,
    build: Callable[[Recipe, Path, Int4Options | None], Candidate],
    hessians: dict[str, np.ndarray],
    keeper: _Keeper,
    activations: dict[str, str] | None = None,
    probe: Callable[[Recipe, Path, Int4Options], float] | None = None,
) -> Candidate:
    """int4-mixed: the fewest most-sensitive groups of weights at int8 with which the gate passes.

    The groups are the embedding tables (together) and the MatMul weights that read the same
    activation (a layer's query, key and value; its attention output; each feed-forward
    MatMul). A group's sensitivity is measured on the calibration set: how much the cosine to
    the parent rises when that group alone is int8 and all else int4 (`probe`, one build per
    group). With more than MIXED_MAX_PROBES groups, or no probe, it is the largest relative
    int4 error of its weights instead: of the layer's output for a MatMul weight
    (tr(E H E^T) / tr(W H W^T), H the Hessian), of the values for a table.

    The first build is all int4; then 1, 2, 4, ... of the most sensitive groups are kept at
    int8 until the gate passes on the evaluation set, and the count is bisected between the
    last rejection and the first pass. Every build goes to `keeper`, which keeps only the best.
    """
    cache: dict[str, object] = {}  # int4 blocks of each weight, computed once for every build
    first = build(recipe, outdir / "int8-0", Int4Options(hessians, frozenset(), cache))
    keeper.offer(first)
    groups: dict[str, list[str]] = {}
    for name in sorted(first.layers):
        group = (activations or {}).get(name) if name in hessians else None
        groups.setdefault(f"matmuls reading {group}" if group else EMBEDDINGS if name not in hessians else name, []).append(name)
    if probe is not None and first.verdict == Verdict.REJECTED and len(groups) <= MIXED_MAX_PROBES:
        base = probe(recipe, outdir / "probe", Int4Options(hessians, frozenset(), cache))
        gain = {
            group: probe(recipe, outdir / "probe", Int4Options(hessians, frozenset(names), cache)) - base
            for group, names in groups.items()
        }
    else:
        gain = {group: max(first.layers[name].error or 0.0 for name in names) for group, names in groups.items()}
    sensitivity = {name: gain[group] for group, names in groups.items() for name in names}
    ranked = sorted(groups, key=lambda group: (-gain[group], group))

    def kept(count: int) -> frozenset[str]:
        return frozenset(name for group in ranked[:count] for name in groups[group])

    order = ranked
    trials: list[tuple[int, Candidate]] = [(0, first)]
    rejected, passed = (0, None) if first.verdict == Verdict.REJECTED else (None, 0)
    while rejected is not None and len(trials) < MIXED_MAX_TRIALS and order:
        count = min(len(order), 2 * rejected or 1) if passed is None else (rejected + passed) // 2
        if count <= rejected or (passed is not None and count >= passed):
            break
        trial = build(recipe, outdir / f"int8-{count}", Int4Options(hessians, kept(count), cache))
        trials.append((count, trial))
        keeper.offer(trial)
        if trial.verdict == Verdict.PASSED:
            passed = count
        elif trial.verdict == Verdict.REJECTED and count < len(order):
            rejected = count
        else:
            break
    passing = [(count, trial) for count, trial in trials if trial.verdict == Verdict.PASSED]
    count, chosen = min(passing, key=lambda entry: entry[1].bytes or 0) if passing else trials[0]
    chosen.layers = {
        name: LayerStats(layer.precision, layer.bytes, sensitivity.get(name)) for name, layer in chosen.layers.items()
    }
    tried = ", ".join(
        f"{k} at int8: {t.verdict}" + (f" ({t.metric.name} {t.metric.compressed:.4f})" if t.metric and t.metric.compressed is not None else "")
        for k, t in trials
    )
    chosen.notes.append(
        f"int4-mixed: {count} of {len(order)} groups at int8 ({', '.join(ranked[:count]) or 'none'}), the rest int4; "
        f"sensitivity {'measured on the calibration set' if probe is not None and len(groups) <= MIXED_MAX_PROBES else 'from local int4 error'}; "
        f"tried {tried}"
    )
    return chosen


def _prober(
    onnx_source: Path, calibration: Dataset, device: str, threads: int
) -> Callable[[Recipe, Path, Int4Options], float]:
    """A function that builds a form, measures its cosine to the parent on the calibration set
    (PROBE_SAMPLES samples), and deletes it."""
    from modelops.compress.accuracy import cosine_similarity

    parent = runtime.onnx_runner(onnx_source, device, threads)
    feeds, batch = calibration.feeds(parent.inputs)
    samples = min(PROBE_SAMPLES, calibration.samples)
    feeds = runtime.slice_feeds(feeds, 0, samples)
    reference = runtime.run_all(parent, feeds, samples, batch)
    del parent

    def probe(recipe: Recipe, outdir: Path, int4_options: Int4Options) -> float:
        outdir.mkdir(parents=True, exist_ok=True)
        output = outdir / artifact_file(ArtifactFormat.ONNX)
        try:
            compress_onnx(onnx_source, output, recipe, threads, providers=None, int4_options=int4_options)
            runner = runtime.onnx_runner(output, device, threads)
            return cosine_similarity(reference, runtime.run_all(runner, feeds, samples, batch))
        finally:
            shutil.rmtree(outdir, ignore_errors=True)

    return probe


def _example(feeds: runtime.Feeds | None, batch: int, parent: runtime.Runner, options: Options) -> runtime.Feeds | None:
    if feeds is not None:
        return runtime.slice_feeds(feeds, 0, batch if batch != runtime.EVAL_BATCH else runtime.LATENCY_BATCH)
    if options.input_shape is not None and len(parent.inputs) == 1:
        return {parent.inputs[0].name: np.zeros(options.input_shape, dtype=np.float32)}
    return runtime.zero_feeds(parent.inputs)


def compress_artifact(
    source_path: Path,
    source_format: str,
    recipe: Recipe,
    workdir: Path,
    evaluation: Evaluation | None = None,
    dataset: Dataset | None = None,
    options: Options | None = None,
    calibration: Dataset | None = None,
) -> CompressionResult:
    """`calibration` is the dataset that data-aware methods (gptq, int4-mixed) learn from;
    `dataset` only judges.

    The phases: check the request, load and measure the parent, calibrate, build and judge
    every candidate (one for an explicit recipe), and report the one kept."""
    options = options or Options()
    recipes = _recipes(recipe, source_format)
    _check_request(recipe, recipes, evaluation, dataset, calibration)
    threads = options.threads or default_threads()
    workdir.mkdir(parents=True, exist_ok=True)
    device = runtime.select_device(onnx_runtime_needed=recipe.target_format == "onnx")
    request = _Request(recipe, source_path, source_format, workdir, evaluation, dataset, options, calibration, threads, device)
    seconds: dict[str, float] = {}
    notes: list[str] = []

    with options.clock.step(Step.COMPRESS):  # the gate's evaluation of each candidate is timed apart
        parent = _load_parent(request, seconds, notes)
        started = time.perf_counter()
        calibrated = _calibrate(request, recipes, parent.onnx_source, notes)
        seconds["calibrate"] = time.perf_counter() - started
        build = _Builder(request, parent)
        keeper = _Keeper(recipe.objective if request.searching else None)
        candidates = [_candidate(request, build, keeper, calibrated, quantization, r) for quantization, r in recipes]
        seconds["compress"] = time.perf_counter() - started  # calibration included

    finished = _Finished(request, parent, candidates, _latency_info(request, parent, build.spreads, notes), notes, seconds)
    chosen = keeper.best if request.searching else candidates[0]
    if request.searching and (chosen is None or chosen.verdict != Verdict.PASSED):
        return _all_rejected(finished, chosen)
    assert chosen is not None
    return _kept(finished, chosen, calibrated)


@dataclass(frozen=True)
class _Request:
    """What `compress_artifact` was asked, with the thread count and device it runs on."""

    recipe: Recipe
    source_path: Path
    source_format: str
    workdir: Path
    evaluation: Evaluation | None
    dataset: Dataset | None
    options: Options
    calibration: Dataset | None
    threads: int
    device: str

    @property
    def searching(self) -> bool:
        return self.recipe.quantization == AUTO


@dataclass
class _Parent:
    """The parent as loaded and measured before compression: its runner (and torch module), the
    ONNX graph that candidates are compressed from, the evaluation feeds and the parent's
    outputs on them, an example input for timing, and its latency once measured."""

    runner: runtime.Runner
    module: Any  # the torch module of a torch source, else None
    onnx_source: Path
    feeds: runtime.Feeds | None
    batch: int
    samples: int
    example: runtime.Feeds | None
    outputs: Any
    latency: runtime.Latency | None


@dataclass(frozen=True)
class _Calibrated:
    """What the calibration set gave: each MatMul weight's Hessian, the activation each reads,
    and the prober that measures a form end to end. Empty when no recipe reads calibration."""

    hessians: dict[str, np.ndarray] | None = None
    activations: dict[str, str] = field(default_factory=dict)
    probe: Callable[[Recipe, Path, Int4Options], float] | None = None


@dataclass(frozen=True)
class _Finished:
    """Every candidate built and judged, with what the report says of the run as a whole."""

    request: _Request
    parent: _Parent
    candidates: list[Candidate]
    latency_info: dict[str, object]
    notes: list[str]
    seconds: dict[str, float]


def _check_request(
    recipe: Recipe,
    recipes: list[tuple[str, Recipe | InvalidRecipe]],
    evaluation: Evaluation | None,
    dataset: Dataset | None,
    calibration: Dataset | None,
) -> None:
    if evaluation is not None and dataset is None:
        raise ValueError("an evaluation needs its dataset")
    if recipe.quantization == AUTO and evaluation is None:
        raise UnsupportedRecipe("quantization: auto gates every candidate, so it needs an evaluation")
    if recipe.quantization == "int4-mixed" and evaluation is None:
        raise UnsupportedRecipe("quantization: int4-mixed keeps layers at int8 until the gate passes, so it needs an evaluation")
    if calibration is None and any(isinstance(r, Recipe) and _calibrated(r) for _, r in recipes):
        raise UnsupportedRecipe("calibration: the recipe reads compression.calibration, but no calibration dataset was given")


def _load_parent(request: _Request, seconds: dict[str, float], notes: list[str]) -> _Parent:
    """Load the parent (its load timed in `seconds`), run it on the evaluation set and, for a
    torch source, time it and export it to ONNX when the target is ONNX."""
    options, device, threads, source_path = request.options, request.device, request.threads, request.source_path
    started = time.perf_counter()
    module = recorded_example = None
    input_names: list[str] = []
    onnx_source = source_path
    if request.source_format == "onnx":
        from modelops.compress.onnx_stream import OnnxFile

        with OnnxFile(source_path):  # a cheap, early format check with a clear error
            pass
        if options.signature is not None:
            check_signature(read_interface(source_path), options.signature)
        parent = runtime.onnx_runner(source_path, device, threads)
    else:
        from modelops.compress import torch_models

        module, loaded_names, recorded_example = torch_models.load(source_path, request.source_format, device)
        input_names = options.input_names or loaded_names or ["input"]
        parent = runtime.torch_runner(module, device, input_names)
    seconds["load"] = time.perf_counter() - started

    dataset = request.dataset
    feeds, batch = dataset.feeds(parent.inputs) if dataset is not None else (None, runtime.EVAL_BATCH)
    samples = 0 if feeds is None else len(next(iter(feeds.values())))
    example = _example(feeds, batch, parent, options)
    if example is None and module is not None and recorded_example is not None:
        example = {parent.inputs[0].name: np.asarray(recorded_example, dtype=np.float32)}
    if example is None and module is not None:
        raise UnsupportedRecipe(
            "input-shape: a TorchScript source needs an example input; pass --input-shape or an evaluation dataset"
        )
    # The parent is measured before compression, which may change a torch module in place.
    outputs = runtime.run_all(parent, feeds, samples, batch) if feeds is not None else None
    latency_before: runtime.Latency | None = None
    if module is not None and example is not None:
        latency_before = runtime.measure_latency({"parent": parent}, example)["parent"]
        if request.recipe.target_format == "onnx":
            onnx_source = request.workdir / "parent.onnx"
            torch_models.export_onnx(
                module, example[parent.inputs[0].name], onnx_source, input_names, options.output_names or ["output"]
            )
            notes.append(f"{request.source_format} exported to ONNX opset {torch_models.ONNX_OPSET} before compression")
    return _Parent(parent, module, onnx_source, feeds, batch, samples, example, outputs, latency_before)


def _calibrate(
    request: _Request, recipes: list[tuple[str, Recipe | InvalidRecipe]], onnx_source: Path, notes: list[str]
) -> _Calibrated:
    """The Hessians and the prober, when a recipe (gptq, int4-mixed) learns from the calibration set."""
    if not any(isinstance(r, Recipe) and _calibrated(r) for _, r in recipes):
        return _Calibrated()
    calibration = request.calibration
    assert calibration is not None  # checked with the request
    calibrated = calibrate.collect(onnx_source, calibration, request.workdir, request.threads, request.device)
    probe = _prober(onnx_source, calibration, request.device, request.threads)
    notes.append(
        f"calibrated on {calibrated.samples} samples of the calibration dataset ({len(calibrated.hessians)} MatMul weights); "
        "the evaluation dataset only judges"
    )
    return _Calibrated(calibrated.hessians, calibrated.activations, probe)


class _Builder:
    """Compress, gate and time one candidate; its runner is released before the next is built.
    The parent's latency is taken beside the first candidate timed, and every timing's spread is kept."""

    def __init__(self, request: _Request, parent: _Parent) -> None:
        self.request = request
        self.parent = parent
        self.spreads: list[float] = []

    def __call__(self, candidate_recipe: Recipe, outdir: Path, int4_options: Int4Options | None = None) -> Candidate:
        request, parent, searching = self.request, self.parent, self.request.searching
        try:
            candidate = _compress_one(request, parent, candidate_recipe, outdir, int4_options)
        except (InvalidRecipe, UnsupportedRecipe) as exc:
            if not searching:
                raise
            return Candidate(candidate_recipe.quantization, Verdict.UNSUPPORTED, str(exc), candidate_recipe)
        except Exception as exc:  # noqa: BLE001 - a candidate that cannot be built or run is reported, not fatal
            if not searching:
                raise
            return Candidate(candidate_recipe.quantization, Verdict.FAILED, f"{type(exc).__name__}: {exc}", candidate_recipe)
        assert candidate.runner is not None
        evaluation, dataset = request.evaluation, request.dataset
        if evaluation is not None:
            assert dataset is not None and parent.feeds is not None and parent.outputs is not None
            with request.options.clock.step(Step.EVALUATE):
                candidate.metric = evaluate_gate(
                    evaluation.metric,
                    evaluation.threshold,
                    parent.outputs,
                    runtime.run_all(candidate.runner, parent.feeds, parent.samples, parent.batch),
                    dataset.labels,
                )
            candidate.verdict = Verdict.PASSED if candidate.metric.passed else Verdict.REJECTED
            candidate.message = candidate.metric.explain()
        if parent.example is not None and (candidate.verdict == Verdict.PASSED or not searching):
            runners = {"candidate": candidate.runner} | ({} if parent.module is not None else {"parent": parent.runner})
            measured = runtime.measure_latency(runners, parent.example)
            candidate.latency = measured["candidate"]
            if parent.latency is None:
                parent.latency = measured.get("parent")
            self.spreads.extend(m.spread for m in measured.values())
        candidate.runtime = candidate.runner.runtime
        candidate.runner = None  # at most the parent and one candidate are loaded at a time
        return candidate


def _candidate(
    request: _Request,
    build: _Builder,
    keeper: _Keeper,
    calibrated: _Calibrated,
    quantization: str,
    candidate_recipe: Recipe | InvalidRecipe,
) -> Candidate:
    """One candidate built and offered to `keeper` (int4-mixed: its search, every build offered)."""
    if isinstance(candidate_recipe, InvalidRecipe):
        return Candidate(quantization, Verdict.UNSUPPORTED, f"not supported by this compressor: {candidate_recipe}")
    outdir = request.workdir / "candidates" / quantization if request.searching else request.workdir
    hessians = calibrated.hessians
    if candidate_recipe.quantization == "int4-mixed":
        assert hessians is not None
        return search_mixed(candidate_recipe, outdir, build, hessians, keeper, calibrated.activations, calibrated.probe)
    candidate = build(candidate_recipe, outdir, None if hessians is None else Int4Options(hessians))
    keeper.offer(candidate)
    return candidate


def _latency_info(request: _Request, parent: _Parent, spreads: list[float], notes: list[str]) -> dict[str, object]:
    """How latency was measured (device, CPU, threads, batch, rounds, spreads), or a note that it was not."""
    info: dict[str, object] = {"device": request.device, "cpu": runtime.cpu_description(), "threads": request.threads}
    if parent.example is not None:
        info |= {
            "batch": len(next(iter(parent.example.values()))),
            "rounds": runtime.LATENCY_ROUNDS,
            "spread": round(max(spreads), 4) if spreads else None,
            "spreadBefore": None if parent.latency is None else round(parent.latency.spread, 4),
        }
    else:
        notes.append("latency not measured: no example input (give an evaluation dataset)")
    return info


def _kept(finished: _Finished, chosen: Candidate, calibrated: _Calibrated) -> CompressionResult:
    """The result of the candidate kept: the one asked for, or auto's pick that passed."""
    request, parent, latency_info = finished.request, finished.parent, finished.latency_info
    recipe, searching, calibration = request.recipe, request.searching, request.calibration
    assert chosen.output_path is not None
    if chosen.latency is not None:
        latency_info["spreadAfter"] = round(chosen.latency.spread, 4)
    latency_info["runtime"] = chosen.runtime
    outcome = "Passed" if chosen.metric is None or chosen.metric.passed else "Rejected"
    message = chosen.metric.explain() if chosen.metric is not None else "compressed; no evaluation requested"
    if searching:
        message = f"auto chose {chosen.quantization} (objective {recipe.objective}): {message}"
    interface = read_interface(chosen.output_path).to_dict() if chosen.output_path.suffix == ".onnx" else None
    return CompressionResult(
        output_path=chosen.output_path,
        output_format=chosen.recipe.target_format if chosen.recipe else recipe.target_format,
        outcome=outcome,
        message=message,
        device=request.device,
        metric=chosen.metric,
        latency_ms_before=None if parent.latency is None else parent.latency.median_ms,
        latency_ms_after=None if chosen.latency is None else chosen.latency.median_ms,
        runtimes={"before": parent.runner.runtime, "after": chosen.runtime},
        weights=chosen.weights,
        recipe=chosen.recipe or recipe,
        notes=finished.notes + chosen.notes,
        seconds={k: round(v, 3) for k, v in finished.seconds.items()},
        latency=latency_info,
        interface=interface,
        objective=recipe.objective if searching else None,
        candidates=finished.candidates if searching else None,
        layers=chosen.layers,
        calibration_samples=(
            None if calibrated.hessians is None or calibration is None else min(calibration.samples, calibrate.MAX_SAMPLES)
        ),
    )


def _compress_one(
    request: _Request, parent: _Parent, recipe: Recipe, outdir: Path, int4_options: Int4Options | None = None
) -> Candidate:
    """One candidate's artifact, compressed from the parent's ONNX graph (an ONNX target) or
    from its torch module, and a runner loaded on it."""
    device, threads, signature, example = request.device, request.threads, request.options.signature, parent.example
    onnx_source = parent.onnx_source if recipe.target_format == "onnx" else None
    module = parent.module
    outdir.mkdir(parents=True, exist_ok=True)
    output = outdir / artifact_file(recipe.target_format)
    notes: list[str] = []
    layers: dict[str, LayerStats] = {}
    if onnx_source is not None:
        stats = compress_onnx(onnx_source, output, recipe, threads, int4_options=int4_options)
        layers = stats.layers
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
        if signature is not None:
            check_signature(read_interface(output), signature, "the compressed artifact")
        runner = runtime.onnx_runner(output, device, threads)
    else:
        from modelops.compress import torch_models

        weights = {"pruned": torch_models.prune(module, recipe)}
        if example is None:
            raise UnsupportedRecipe("input-shape: tracing a TorchScript output needs an example input")
        torch_models.save_torchscript(module, recipe, next(iter(example.values())), output)
        if recipe.quantization in ("fp16", "bf16"):
            notes.append(f"the TorchScript module computes in {recipe.quantization} with float32 inputs and outputs")
        names = list(example) if example is not None else ["input"]
        runner = runtime.torch_runner(torch_models.load_saved_torchscript(output, device), device, names)
    return Candidate(
        recipe.quantization,
        Verdict.PASSED,
        "compressed; no evaluation requested",
        recipe,
        output,
        artifact_bytes(output) if onnx_source is not None else output.stat().st_size,
        weights=weights,
        notes=notes,
        runner=runner,
        layers=layers if recipe.quantization == "int4-mixed" else {},
    )


def _better(challenger: Candidate, incumbent: Candidate, objective: str | None) -> bool:
    """Whether `challenger` should be served instead of `incumbent`: a pass beats a rejection;
    among passes the smaller (objective size) or the faster (latency); ties keep the earlier."""
    if (challenger.verdict == Verdict.PASSED) != (incumbent.verdict == Verdict.PASSED):
        return challenger.verdict == Verdict.PASSED
    if challenger.verdict != Verdict.PASSED:
        return False  # among rejections the first is kept, for the report
    if objective == "latency" and challenger.latency is not None and incumbent.latency is not None:
        return challenger.latency.median_ms < incumbent.latency.median_ms
    return (challenger.bytes or 0) < (incumbent.bytes or 0)


class _Keeper:
    """The best candidate so far and its artifact; every other candidate's artifact is deleted
    as soon as it is judged, so a search keeps at most two on disk (this one and the next)."""

    def __init__(self, objective: str | None) -> None:
        self.objective = objective
        self.best: Candidate | None = None

    def offer(self, candidate: Candidate) -> None:
        if candidate.output_path is None:
            return
        if self.best is None:
            self.best = candidate
        elif _better(candidate, self.best, self.objective):
            _discard(self.best)
            self.best = candidate
        else:
            _discard(candidate)


def _discard(candidate: Candidate) -> None:
    if candidate.output_path is not None:
        shutil.rmtree(candidate.output_path.parent, ignore_errors=True)
        candidate.output_path = None


def _all_rejected(finished: _Finished, tried: Candidate | None) -> CompressionResult:
    """No candidate passed: Rejected, with every candidate's verdict in the report."""
    request, parent, candidates = finished.request, finished.parent, finished.candidates
    recipe, latency_before = request.recipe, parent.latency
    summary = "; ".join(f"{c.quantization}: {c.verdict} ({c.message[:80]})" for c in candidates)
    return CompressionResult(
        output_path=tried.output_path if tried and tried.output_path else request.workdir / artifact_file(ArtifactFormat.ONNX),
        output_format="onnx",
        outcome="Rejected",
        message=f"auto: no candidate passed the gate; {summary}",
        device=request.device,
        metric=tried.metric if tried else None,
        latency_ms_before=None if latency_before is None else latency_before.median_ms,
        latency_ms_after=None,
        runtimes={"before": parent.runner.runtime, "after": parent.runner.runtime},
        weights={},
        recipe=recipe,
        notes=finished.notes,
        seconds={k: round(v, 3) for k, v in finished.seconds.items()},
        latency=finished.latency_info | {"runtime": parent.runner.runtime},
        objective=recipe.objective,
        candidates=candidates,
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
    if options.signature is not None:  # a cached entry is held to this Model's signature too
        if source_format == "onnx":
            check_signature(read_interface(source_path), options.signature)
        if compressed_path.suffix == ".onnx":
            check_signature(read_interface(compressed_path), options.signature, "the cached compressed artifact")
    threads = options.threads or default_threads()
    device = runtime.select_device(onnx_runtime_needed="onnx" in (source_format, recipe.target_format))
    started = time.perf_counter()
    if source_format == "onnx":
        parent = runtime.onnx_runner(source_path, device, threads)
    else:
        from modelops.compress import torch_models

        module, input_names, _ = torch_models.load(source_path, source_format, device)
        input_names = options.input_names or input_names or ["input"]
        parent = runtime.torch_runner(module, device, input_names)
    if recipe.target_format == "onnx":
        compressed = runtime.onnx_runner(compressed_path, device, threads)
    else:
        from modelops.compress import torch_models

        compressed = runtime.torch_runner(torch_models.load_saved_torchscript(compressed_path, device), device, [spec.name for spec in parent.inputs])
    seconds = {"load": time.perf_counter() - started}
    started = time.perf_counter()
    feeds, batch = dataset.feeds(parent.inputs)
    samples = len(next(iter(feeds.values())))
    with options.clock.step(Step.EVALUATE):
        metric = evaluate_gate(
            evaluation.metric,
            evaluation.threshold,
            runtime.run_all(parent, feeds, samples, batch),
            runtime.run_all(compressed, feeds, samples, batch),
            dataset.labels,
        )
    seconds["evaluate"] = time.perf_counter() - started
    example = _example(feeds, batch, parent, options)
    latency: dict[str, runtime.Latency] = {}
    latency_info: dict[str, object] = {"device": device, "cpu": runtime.cpu_description(), "threads": threads}
    if example is not None:
        latency = runtime.measure_latency({"parent": parent, "compressed": compressed}, example)
        latency_info |= {
            "batch": len(next(iter(example.values()))),
            "rounds": runtime.LATENCY_ROUNDS,
            "spread": round(max(m.spread for m in latency.values()), 4),
            "runtime": compressed.runtime,
        }
    interface = read_interface(compressed_path).to_dict() if compressed_path.suffix == ".onnx" else None
    return CompressionResult(
        output_path=compressed_path,
        output_format=recipe.target_format,
        outcome="Passed" if metric.passed else "Rejected",
        message=metric.explain(),
        device=device,
        metric=metric,
        latency_ms_before=latency["parent"].median_ms if "parent" in latency else None,
        latency_ms_after=latency["compressed"].median_ms if "compressed" in latency else None,
        runtimes={"before": parent.runtime, "after": compressed.runtime},
        weights={},
        recipe=recipe,
        latency=latency_info,
        interface=interface,
        notes=["evaluated an earlier compression of the same artifact and recipe; nothing was compressed again"],
        seconds={k: round(v, 3) for k, v in seconds.items()},
    )
