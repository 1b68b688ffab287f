"""Triton serving throughput and p95 latency: fp32 against int8, with and without dynamic batching.

    python bench/triton_bench.py [--layers 8 --seq-len 64 --intra-op-threads 2 ...]

The model is a generated transformer encoder (token ids in, class logits out) with random,
seeded weights, exported to ONNX by torch. Its int8 variant comes from the project's compressor
(modelops.compress, recipe quantization=int8-dynamic). Both are cached under
~/.cache/modelops/bench/, keyed by the generator's parameters, so a re-run skips generation.

Each variant is served by the real tritonserver (python backend, the project's model.py running
onnxruntime) in two configurations, one server at a time:
- batching off: max_batch_size set, no dynamic_batching (one request per execution);
- batching on: dynamic_batching with preferred sizes and a small queue delay.
Each server is measured at concurrency 1 and 8 with the project's load generator (e2e.loadgen)
by perf_analyzer's stability rule: three-window segments are run until one segment's three
windows agree within 10% in throughput and mean latency. The machine is shared, so a segment
also counts only if other processes used few cores meanwhile (from /proc). A pass starts every
configuration's server in turn; later passes, within a time budget, revisit the points that
have not settled, so a burst of other load does not land on one configuration only. A point
that never settles reports its best segment, marked unstable or busy.

onnxruntime's thread pools are set deliberately: the served copy of each ONNX file carries an
`ort_config` metadata entry, which onnxruntime applies when ORT_LOAD_CONFIG_FROM_MODEL=1 is in
the server's environment (model.py itself takes no thread settings).

Results go to bench/results/triton.json and a markdown table is printed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import resource
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "operator")]

from e2e.loadgen import STABILITY_WINDOWS, InferenceCall, LoadReport, WindowStats, is_stable, run_load
from e2e.tritonlocal import serve_locally
from modelops.api.deployment import TritonSpec
from modelops.api.model import Signature
from modelops.serving import ServedModel, layout_model_repository, render_config_pbtxt

RESULTS = ROOT / "bench" / "results" / "triton.json"
CACHE_ROOT = Path.home() / ".cache" / "modelops" / "bench"
# Bump when the generated model changes for the same parameters, so old cache entries are not reused.
GENERATOR_VERSION = "1"
OPSET = 17

MODEL_NAME = "encoder"
MODEL_VERSION = 1
INPUT_NAME = "input_ids"
OUTPUT_NAME = "logits"
PRECISIONS = ("fp32", "int8")
CONCURRENCIES = (1, 8)
MAX_BATCH_SIZE = 8
PREFERRED_BATCH_SIZES = (4, 8)
QUEUE_DELAY_MICROSECONDS = 2000

TARGET_INT8_SPEEDUP = 2.0
TARGET_BATCHING_GAIN = 3.0
TARGET_BATCHING_P95_RATIO = 1.1

SEGMENTS_PER_VISIT = 2
READY_DEADLINE_S = 300.0
REQUEST_TIMEOUT_S = 60.0
# The load generator stops on time, never on count.
UNBOUNDED_REQUESTS = 10**9


@dataclass(frozen=True)
class EncoderSpec:
    """The generated encoder: BERT-style layers (post-norm, GELU), a [CLS]-style classifier head."""

    layers: int = 8
    hidden: int = 768
    heads: int = 12
    ffn: int = 3072
    seq_len: int = 64
    vocab: int = 8192
    classes: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "seed" else 1):
                raise ValueError(f"{name}: {value!r} must be a positive integer")
        if self.hidden % self.heads:
            raise ValueError(f"heads: {self.heads} must divide hidden ({self.hidden})")

    def cache_key(self) -> str:
        payload = {"generator": GENERATOR_VERSION, "opset": OPSET, **asdict(self)}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def ort_config(intra_op_threads: int) -> str:
    """The `ort_config` metadata value: onnxruntime's session options, read from the model file."""
    if isinstance(intra_op_threads, bool) or not isinstance(intra_op_threads, int) or intra_op_threads < 1:
        raise ValueError(f"intra_op_threads: {intra_op_threads!r} must be a positive integer")
    # One instance runs one execution at a time, so the inter-op pool would only sit idle.
    return json.dumps({"session_options": {"intra_op_num_threads": intra_op_threads, "inter_op_num_threads": 1}})


def model_config(spec: EncoderSpec, batching: bool) -> ServedModel:
    """Batching off: the default scheduler hands one request at a time to the model."""
    signature = Signature.model_validate(
        {
            "inputs": [{"name": INPUT_NAME, "dataType": "INT64", "dims": [spec.seq_len]}],
            "outputs": [{"name": OUTPUT_NAME, "dataType": "FP32", "dims": [spec.classes]}],
            "maxBatchSize": MAX_BATCH_SIZE,
        }
    )
    batcher = {
        "enabled": batching,
        "preferredBatchSizes": list(PREFERRED_BATCH_SIZES) if batching else [],
        "maxQueueDelayMicroseconds": QUEUE_DELAY_MICROSECONDS if batching else 0,
    }
    triton = TritonSpec.model_validate(
        {"backend": "python", "dynamicBatching": batcher, "instanceGroups": [{"count": 1, "kind": "KIND_CPU"}]}
    )
    return ServedModel(MODEL_NAME, MODEL_VERSION, signature, triton)


# ---------------------------------------------------------------- statistics (pure)


def first_windows(report: LoadReport, window_s: float) -> list[WindowStats]:
    """The segment's full windows, in order, at most the number the stability rule compares.

    Later windows hold only the requests that were still in flight when the segment ended.
    """
    full = [w for w in report.windows if math.isclose(w.length_s, window_s)]
    return full[:STABILITY_WINDOWS]


def window_spread(windows: Sequence[WindowStats]) -> float:
    """How far apart the windows are: max/min - 1 of throughput or mean latency, whichever is larger."""
    if len(windows) < STABILITY_WINDOWS or min(w.throughput_rps for w in windows) <= 0:
        return math.inf
    throughputs = [w.throughput_rps for w in windows]
    latencies = [w.mean_latency_ms for w in windows]
    return max(max(throughputs) / min(throughputs), max(latencies) / min(latencies)) - 1


def segment_is_stable(report: LoadReport, window_s: float) -> bool:
    windows = first_windows(report, window_s)
    return len(windows) == STABILITY_WINDOWS and is_stable(windows)


def choose_segment(
    segments: Sequence[LoadReport], other_cores: Sequence[float], window_s: float, max_other_cores: float
) -> int:
    """perf_analyzer's pick, on a shared machine: the first segment that is stable while other
    processes took at most max_other_cores; else the stable segment with the least other load;
    else the least-spread segment."""
    if not segments or len(other_cores) != len(segments):
        raise ValueError("segments: one or more measured segments, each with its other load, are required")
    stable = [index for index, report in enumerate(segments) if segment_is_stable(report, window_s)]
    for index in stable:
        if other_cores[index] <= max_other_cores:
            return index
    if stable:
        return min(stable, key=lambda index: other_cores[index])
    spreads = [window_spread(first_windows(report, window_s)) for report in segments]
    return spreads.index(min(spreads))


def summarize_point(
    segments: Sequence[LoadReport], usages: Sequence[Mapping[str, float]], window_s: float, max_other_cores: float
) -> dict:
    """The figures of one measured point, from the segment that choose_segment picks."""
    other_cores = [usage["other_cores"] for usage in usages]
    index = choose_segment(segments, other_cores, window_s, max_other_cores)
    chosen = segments[index]
    windows = first_windows(chosen, window_s)
    return {
        "throughput_rps": sum(w.throughput_rps for w in windows) / len(windows) if windows else 0.0,
        "p50_ms": chosen.p50_ms,
        "p95_ms": chosen.p95_ms,
        "p99_ms": chosen.p99_ms,
        "requests": chosen.requests,
        "failures": chosen.failures,
        "errors": dict(chosen.errors),
        "stable": segment_is_stable(chosen, window_s),
        "quiet": other_cores[index] <= max_other_cores,
        "segments": len(segments),
        "chosen_segment": index,
        "window_spread": window_spread(windows),
        "window_throughputs_rps": [w.throughput_rps for w in windows],
        **usages[index],
    }


def cpu_usage(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """CPU seconds between two cpu_snapshot()s, as cores used on average: who took the shared cores."""
    wall = after["wall_s"] - before["wall_s"]
    if wall <= 0:
        raise ValueError("after: the second snapshot must be later than the first")
    cores = {key: (after[key] - before[key]) / wall for key in ("machine_busy_s", "steal_s", "client_s", "server_s")}
    return {
        "client_cores": cores["client_s"],
        "server_cores": cores["server_s"],
        # Everything else that ran on this machine meanwhile (other users' processes, the kernel).
        "other_cores": max(0.0, cores["machine_busy_s"] - cores["client_s"] - cores["server_s"]),
        "steal_cores": cores["steal_s"],
    }


def _point(points: Sequence[Mapping], precision: str, batching: bool, concurrency: int) -> Mapping:
    for point in points:
        if (point["precision"], point["batching"], point["concurrency"]) == (precision, batching, concurrency):
            return point
    raise KeyError(f"points: no measurement for {precision}, batching={batching}, concurrency={concurrency}")


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else math.nan


def evaluate_targets(points: Sequence[Mapping]) -> dict:
    """int8 against fp32 at every (batching, concurrency); batching on against off at concurrency 8."""
    top = max(CONCURRENCIES)
    speedups = []
    for batching in (False, True):
        for concurrency in CONCURRENCIES:
            fp32 = _point(points, "fp32", batching, concurrency)
            int8 = _point(points, "int8", batching, concurrency)
            speedups.append(
                {
                    "batching": batching,
                    "concurrency": concurrency,
                    "throughput_ratio": _ratio(int8["throughput_rps"], fp32["throughput_rps"]),
                }
            )
    lowest = min(s["throughput_ratio"] for s in speedups)
    batching_rows = []
    for precision in PRECISIONS:
        off = _point(points, precision, False, top)
        on = _point(points, precision, True, top)
        gain = _ratio(on["throughput_rps"], off["throughput_rps"])
        p95_ratio = _ratio(on["p95_ms"], off["p95_ms"])
        batching_rows.append(
            {
                "precision": precision,
                "concurrency": top,
                "throughput_gain": gain,
                "p95_ratio": p95_ratio,
                "throughput_met": gain >= TARGET_BATCHING_GAIN,
                "p95_met": p95_ratio <= TARGET_BATCHING_P95_RATIO,
            }
        )
    return {
        "int8_speedup": {
            "target": TARGET_INT8_SPEEDUP,
            "by_point": speedups,
            "lowest": lowest,
            "met": lowest >= TARGET_INT8_SPEEDUP,
        },
        "batching": {
            "target_throughput_gain": TARGET_BATCHING_GAIN,
            "target_p95_ratio": TARGET_BATCHING_P95_RATIO,
            "by_precision": batching_rows,
            "met": all(row["throughput_met"] and row["p95_met"] for row in batching_rows),
        },
        "all_points_stable": all(point["stable"] for point in points),
    }


def _met(flag: bool) -> str:
    return "met" if flag else "**not met**"


def markdown_table(results: Mapping) -> str:
    """The points, then the targets, as markdown."""
    lines = [
        (
            "| precision | batching | concurrency | throughput (inf/s) | p50 (ms) | p95 (ms) | mean batch "
            "| stable (spread) | other load (cores) |"
        ),
        "|---|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for p in results["points"]:
        stable = f"{'yes' if p['stable'] else 'NO'} ({p['window_spread'] * 100:.1f}%)"
        lines.append(
            f"| {p['precision']} | {'on' if p['batching'] else 'off'} | {p['concurrency']} | "
            f"{p['throughput_rps']:.1f} | {p['p50_ms']:.1f} | {p['p95_ms']:.1f} | {p['mean_batch_size']:.2f} | {stable} "
            f"| {p['other_cores']:.2f}{'' if p['quiet'] else ' (busy)'} |"
        )
    direct = results.get("onnxruntime_direct")
    if direct:
        large = f"batch{MAX_BATCH_SIZE}"
        lines += [
            "",
            (
                "onnxruntime alone (same threads, no Triton): "
                f"fp32 {direct['fp32']['batch1']['best_ms']:.1f} ms at batch 1 (fastest run), "
                f"int8 {direct['int8']['batch1']['best_ms']:.1f} ms; "
                f"int8 speedup {direct['int8_speedup']['batch1']:.2f}× at batch 1, "
                f"{direct['int8_speedup'][large]:.2f}× at batch {MAX_BATCH_SIZE}; "
                f"batch {MAX_BATCH_SIZE} vs 1 throughput {direct['fp32']['batching_gain']:.2f}× (fp32), "
                f"{direct['int8']['batching_gain']:.2f}× (int8)."
            ),
        ]
    targets = results["targets"]
    speedup = targets["int8_speedup"]
    lines += [
        "",
        "| target | reached | status |",
        "|---|---|---|",
    ]
    for row in speedup["by_point"]:
        lines.append(
            f"| int8 ≥ {speedup['target']:g}× fp32 (batching {'on' if row['batching'] else 'off'}, "
            f"concurrency {row['concurrency']}) | {row['throughput_ratio']:.2f}× | "
            f"{_met(row['throughput_ratio'] >= speedup['target'])} |"
        )
    batching = targets["batching"]
    for row in batching["by_precision"]:
        lines.append(
            f"| batching ≥ {batching['target_throughput_gain']:g}× throughput, {row['precision']}, "
            f"concurrency {row['concurrency']} | {row['throughput_gain']:.2f}× | {_met(row['throughput_met'])} |"
        )
        lines.append(
            f"| batching p95 ≤ {batching['target_p95_ratio']:g}× unbatched, {row['precision']}, "
            f"concurrency {row['concurrency']} | {row['p95_ratio']:.2f}× | {_met(row['p95_met'])} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------- models (torch, onnx)


def build_encoder(spec: EncoderSpec):
    import torch
    from torch import nn

    class EncoderLayer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Linear(spec.hidden, 3 * spec.hidden)
            self.attention_out = nn.Linear(spec.hidden, spec.hidden)
            self.attention_norm = nn.LayerNorm(spec.hidden)
            self.ffn_in = nn.Linear(spec.hidden, spec.ffn)
            self.ffn_out = nn.Linear(spec.ffn, spec.hidden)
            self.ffn_norm = nn.LayerNorm(spec.hidden)

        def forward(self, x):
            batch, tokens, _ = x.shape
            head_dim = spec.hidden // spec.heads
            q, k, v = self.qkv(x).view(batch, tokens, 3, spec.heads, head_dim).permute(2, 0, 3, 1, 4)
            weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head_dim), dim=-1)
            attended = (weights @ v).transpose(1, 2).reshape(batch, tokens, spec.hidden)
            x = self.attention_norm(x + self.attention_out(attended))
            return self.ffn_norm(x + self.ffn_out(nn.functional.gelu(self.ffn_in(x))))

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tokens = nn.Embedding(spec.vocab, spec.hidden)
            self.positions = nn.Parameter(torch.randn(spec.seq_len, spec.hidden) * 0.02)
            self.layers = nn.ModuleList(EncoderLayer() for _ in range(spec.layers))
            self.classifier = nn.Linear(spec.hidden, spec.classes)

        def forward(self, input_ids):
            x = self.tokens(input_ids) + self.positions
            for layer in self.layers:
                x = layer(x)
            return self.classifier(x[:, 0])

    torch.manual_seed(spec.seed)
    return Encoder().eval()


def export_fp32(spec: EncoderSpec, path: Path) -> int:
    """Export the seeded encoder to ONNX with a dynamic batch dimension; return its parameter count."""
    import torch

    model = build_encoder(spec)
    sample = torch.zeros((1, spec.seq_len), dtype=torch.int64)
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript-based exporter warns about traced shapes that are correct here (the batch is dynamic).
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (sample,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    return sum(p.numel() for p in model.parameters())


def quantize_int8(source: Path, destination: Path) -> str:
    """The project's compressor, recipe int8-dynamic; returns what produced the file."""
    from modelops.cachekey import COMPRESSOR_VERSION
    from modelops.compress.onnx_compress import compress_onnx
    from modelops.compress.recipe import Recipe

    compress_onnx(source, destination, Recipe.from_dict({"quantization": "int8-dynamic"}))
    return (
        f"modelops.compress {COMPRESSOR_VERSION} (compress_onnx, recipe quantization=int8-dynamic: "
        "onnxruntime.quantization.quantize_dynamic, per-channel QInt8 weights)"
    )


@dataclass(frozen=True)
class ModelFiles:
    fp32: Path
    int8: Path
    info: dict


def ensure_models(spec: EncoderSpec, cache_root: Path) -> ModelFiles:
    """Generate (once per spec and compressor version) the fp32 and int8 ONNX files."""
    from modelops.cachekey import COMPRESSOR_VERSION

    directory = cache_root / f"encoder-{spec.cache_key()}"
    directory.mkdir(parents=True, exist_ok=True)
    fp32, info_path = directory / "fp32.onnx", directory / "fp32.json"
    int8 = directory / f"int8-compressor-{COMPRESSOR_VERSION}.onnx"
    int8_info_path = int8.with_suffix(".json")
    if not info_path.is_file():
        started = time.perf_counter()
        staging = directory / "fp32.onnx.partial"
        parameters = export_fp32(spec, staging)
        os.replace(staging, fp32)
        info = {"spec": asdict(spec), "parameters": parameters, "export_s": time.perf_counter() - started}
        # Written last: its presence marks a complete entry.
        info_path.write_text(json.dumps(info, indent=2) + "\n")
        print(
            f"generated fp32 encoder ({parameters / 1e6:.1f} M parameters) in {info['export_s']:.1f} s", file=sys.stderr
        )
    if not int8_info_path.is_file():
        started = time.perf_counter()
        staging = directory / f"{int8.name}.partial"
        quantizer = quantize_int8(fp32, staging)
        os.replace(staging, int8)
        int8_info = {"quantizer": quantizer, "quantize_s": time.perf_counter() - started}
        int8_info_path.write_text(json.dumps(int8_info, indent=2) + "\n")
        print(f"quantized to int8 in {int8_info['quantize_s']:.1f} s", file=sys.stderr)
    info = json.loads(info_path.read_text())
    int8_info = json.loads(int8_info_path.read_text())
    return ModelFiles(
        fp32=fp32,
        int8=int8,
        info={
            "cache_dir": str(directory),
            "spec": info["spec"],
            "parameters": info["parameters"],
            "fp32_bytes": fp32.stat().st_size,
            "int8_bytes": int8.stat().st_size,
            "quantizer": int8_info["quantizer"],
        },
    )


def write_served_copy(source: Path, destination: Path, intra_op_threads: int) -> None:
    """Copy the ONNX file with onnxruntime's session options in its metadata."""
    import onnx

    model = onnx.load(str(source))
    kept = [entry for entry in model.metadata_props if entry.key != "ort_config"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    entry = model.metadata_props.add()
    entry.key, entry.value = "ort_config", ort_config(intra_op_threads)
    onnx.save(model, str(destination))


# ---------------------------------------------------------------- tritonserver


@dataclass(frozen=True)
class Server:
    url: str
    ready_s: float
    pid: int


@contextmanager
def running_tritonserver(repo: Path, log: Path) -> Iterator[Server]:
    """tritonserver for one configuration; the served ONNX file carries its thread settings."""
    with serve_locally(repo, CACHE_ROOT / "triton", log, READY_DEADLINE_S,
                       extra_env={"ORT_LOAD_CONFIG_FROM_MODEL": "1"}) as server:
        yield Server(url=server.http_url, ready_s=server.ready_s, pid=server.pid)


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def model_stats(url: str) -> dict[str, float]:
    stats = _get_json(f"http://{url}/v2/models/{MODEL_NAME}/versions/{MODEL_VERSION}/stats")["model_stats"][0]
    inference = stats["inference_stats"]
    return {
        "inferences": float(stats["inference_count"]),
        "executions": float(stats["execution_count"]),
        "queue_ns": float(inference["queue"]["ns"]),
        "compute_ns": float(inference["compute_infer"]["ns"]),
    }


def infer_once(url: str, inputs: np.ndarray) -> np.ndarray:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url)
    try:
        tensor = httpclient.InferInput(INPUT_NAME, list(inputs.shape), "INT64")
        tensor.set_data_from_numpy(inputs)
        return client.infer(MODEL_NAME, [tensor]).as_numpy(OUTPUT_NAME)
    finally:
        client.close()


def _process_tree_cpu_s(root_pid: int) -> float:
    """User + system CPU seconds of a process and its live descendants (tritonserver and its stubs)."""
    parents: dict[int, int] = {}
    times: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited while the table was read
        # After the command name: state, ppid, ... utime (12th), stime (13th).
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = int(fields[11]) + int(fields[12])
    tree, frontier = {root_pid}, [root_pid]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(times.get(pid, 0) for pid in tree) / os.sysconf("SC_CLK_TCK")


def cpu_snapshot(server_pid: int | None) -> dict[str, float]:
    """Machine-wide busy and steal time (/proc/stat), this process's CPU (the load generator),
    and the server tree's CPU (none without a server), all in seconds."""
    # cpu  user nice system idle iowait irq softirq steal ...
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]
    )
    ticks = os.sysconf("SC_CLK_TCK")
    own = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "wall_s": time.monotonic(),
        "machine_busy_s": (user + nice + system + irq + softirq) / ticks,
        "steal_s": steal / ticks,
        "client_s": own.ru_utime + own.ru_stime,
        "server_s": _process_tree_cpu_s(server_pid) if server_pid is not None else 0.0,
    }


@dataclass
class PointState:
    """Everything measured at one point so far, over all visits."""

    precision: str
    batching: bool
    concurrency: int
    segments: list[LoadReport] = field(default_factory=list)
    usages: list[dict[str, float]] = field(default_factory=list)
    model_stats: dict[str, float] = field(default_factory=dict)
    visits: int = 0
    settled: bool = False

    def summary(self, window_s: float, max_other_cores: float) -> dict:
        stats = self.model_stats
        return {
            "precision": self.precision,
            "batching": self.batching,
            "concurrency": self.concurrency,
            **summarize_point(self.segments, self.usages, window_s, max_other_cores),
            "visits": self.visits,
            "mean_batch_size": _ratio(stats["inferences"], stats["executions"]),
            # Triton adds each request's time in the model (the whole batch's execution) to compute_infer.
            "compute_ms_per_request": _ratio(stats["compute_ns"], stats["inferences"]) / 1e6,
            "queue_ms_per_request": _ratio(stats["queue_ns"], stats["inferences"]) / 1e6,
        }


def visit_point(
    server: Server,
    call: InferenceCall,
    state: PointState,
    window_s: float,
    max_other_cores: float,
    deadline: float | None,
) -> None:
    """Warm up for one window, then run up to SEGMENTS_PER_VISIT three-window segments, stopping at
    the first that is stable on a quiet machine, or before a segment would end past the deadline."""
    load = {
        "requests": UNBOUNDED_REQUESTS,
        "concurrency": state.concurrency,
        "window_s": window_s,
        "request_timeout_s": REQUEST_TIMEOUT_S,
    }
    segment_s = STABILITY_WINDOWS * window_s
    run_load([server.url], call, time_limit_s=window_s, **load)
    stats_before = model_stats(server.url)
    state.visits += 1
    for _ in range(SEGMENTS_PER_VISIT):
        if deadline is not None and time.monotonic() + segment_s > deadline:
            break
        before = cpu_snapshot(server.pid)
        state.segments.append(run_load([server.url], call, time_limit_s=segment_s, **load))
        state.usages.append(cpu_usage(before, cpu_snapshot(server.pid)))
        if segment_is_stable(state.segments[-1], window_s) and state.usages[-1]["other_cores"] <= max_other_cores:
            state.settled = True
            break
    stats_after = model_stats(server.url)
    for key, value in stats_after.items():
        state.model_stats[key] = state.model_stats.get(key, 0.0) + value - stats_before[key]


def direct_onnxruntime(path: Path, spec: EncoderSpec, intra_op_threads: int, time_limit_s: float = 4.0) -> dict:
    """Latency of the bare onnxruntime session at batch 1 and at the largest batch, same threads as
    served: the ceiling for what Triton can show for int8 and for batching on this machine.
    Throughput is computed from the fastest run."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(spec.seed)
    result = {}
    before = cpu_snapshot(None)
    for batch in (1, MAX_BATCH_SIZE):
        feed = {INPUT_NAME: rng.integers(0, spec.vocab, size=(batch, spec.seq_len), dtype=np.int64)}
        session.run(None, feed)
        timings = []
        deadline = time.monotonic() + time_limit_s
        while len(timings) < 3 or (time.monotonic() < deadline and len(timings) < 50):
            begin = time.perf_counter()
            session.run(None, feed)
            timings.append(time.perf_counter() - begin)
        # The fastest run is the least disturbed by other processes on a shared machine.
        best_ms = 1000 * min(timings)
        result[f"batch{batch}"] = {
            "runs": len(timings),
            "median_ms": 1000 * float(np.median(timings)),
            "best_ms": best_ms,
            "throughput_rps": 1000 * batch / best_ms,
        }
    result["batching_gain"] = result[f"batch{MAX_BATCH_SIZE}"]["throughput_rps"] / result["batch1"]["throughput_rps"]
    result["other_cores"] = cpu_usage(before, cpu_snapshot(None))["other_cores"]
    return result


# ---------------------------------------------------------------- run


def machine_info() -> dict:
    cpu_model = ""
    flags: set[str] = set()
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        for line in cpuinfo:
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not cpu_model:
                cpu_model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    return {
        "cpus": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "int8_instructions": sorted(flags & {"avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8"}),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": list(os.getloadavg()),
    }


def library_versions() -> dict:
    names = ("torch", "onnx", "onnxruntime", "numpy", "tritonclient", "nvidia-pytriton")
    return {name: metadata.version(name) for name in names}


def run(args: argparse.Namespace) -> dict:
    spec = EncoderSpec(layers=args.layers, hidden=args.hidden, heads=args.heads, ffn=args.ffn, seq_len=args.seq_len)
    models = ensure_models(spec, CACHE_ROOT)
    rng = np.random.default_rng(spec.seed)
    request = rng.integers(0, spec.vocab, size=(1, spec.seq_len), dtype=np.int64)
    sample_batch = rng.integers(0, spec.vocab, size=(MAX_BATCH_SIZE, spec.seq_len), dtype=np.int64)
    call = InferenceCall(MODEL_NAME, {INPUT_NAME: request}, (OUTPUT_NAME,))
    results: dict = {
        "machine": machine_info(),
        "libraries": library_versions(),
        "model": {**models.info, "name": "generated transformer encoder, random seeded weights"},
        "settings": {
            "backend": "python (modelops.serving model.py running onnxruntime CPUExecutionProvider)",
            "instances": 1,
            "ort_intra_op_threads": args.intra_op_threads,
            "ort_inter_op_threads": 1,
            "ort_threads_set_by": "ort_config metadata in the served ONNX file, ORT_LOAD_CONFIG_FROM_MODEL=1",
            "max_batch_size": MAX_BATCH_SIZE,
            "preferred_batch_sizes": list(PREFERRED_BATCH_SIZES),
            "max_queue_delay_microseconds": QUEUE_DELAY_MICROSECONDS,
            "protocol": "http",
            "request": f"1 × {spec.seq_len} int64 token ids",
            "window_s": args.window_s,
            "stability": f"{STABILITY_WINDOWS} consecutive windows within 10% (throughput and mean latency)",
            "segments_per_visit": SEGMENTS_PER_VISIT,
            "measurement_budget_s": args.budget_s,
            "max_other_cores": args.max_other_cores,
        },
        "servers": [],
    }
    outputs: dict[str, np.ndarray] = {}
    direct = {
        precision: direct_onnxruntime(path, spec, args.intra_op_threads)
        for precision, path in (("fp32", models.fp32), ("int8", models.int8))
    }
    direct["int8_speedup"] = {
        batch: direct["int8"][batch]["throughput_rps"] / direct["fp32"][batch]["throughput_rps"]
        for batch in ("batch1", f"batch{MAX_BATCH_SIZE}")
    }
    results["onnxruntime_direct"] = direct
    print(f"onnxruntime direct: {json.dumps(json_safe(direct))}", file=sys.stderr)
    states = [
        PointState(precision, batching, concurrency)
        for precision in PRECISIONS
        for batching in (False, True)
        for concurrency in CONCURRENCIES
    ]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="triton-bench-") as scratch:
        work = Path(scratch)
        served = {}
        for precision in PRECISIONS:
            served[precision] = work / f"{precision}.onnx"
            source = models.fp32 if precision == "fp32" else models.int8
            write_served_copy(source, served[precision], args.intra_op_threads)
        passes = 0
        # Every point is measured in the first pass; later passes, within the budget, revisit the
        # points that have not settled, so a burst of other load cannot spoil one configuration only.
        while passes == 0 or (
            any(not state.settled for state in states) and time.monotonic() < started + args.budget_s
        ):
            deadline = None if passes == 0 else started + args.budget_s
            passes += 1
            for precision in PRECISIONS:
                for batching in (False, True):
                    pending = [
                        state
                        for state in states
                        if (state.precision, state.batching) == (precision, batching) and not state.settled
                    ]
                    if not pending or (deadline is not None and time.monotonic() >= deadline):
                        continue
                    label = f"{precision}-batching-{'on' if batching else 'off'}"
                    repo = work / label
                    config_text = render_config_pbtxt(model_config(spec, batching))
                    layout_model_repository(repo, MODEL_NAME, MODEL_VERSION, "python", served[precision], config_text)
                    with running_tritonserver(repo, work / f"{label}.log") as server:
                        version = _get_json(f"http://{server.url}/v2").get("version", "")
                        results["servers"].append(
                            {"configuration": label, "pass": passes, "ready_s": server.ready_s, "triton": version}
                        )
                        print(f"pass {passes}, {label}: ready in {server.ready_s:.1f} s", file=sys.stderr)
                        if not batching and precision not in outputs:
                            outputs[precision] = infer_once(server.url, sample_batch)
                        for state in pending:
                            visit_point(server, call, state, args.window_s, args.max_other_cores, deadline)
                            usage = state.usages[-1] if state.usages else {"other_cores": math.nan}
                            print(
                                f"  concurrency {state.concurrency}: {len(state.segments)} segments, "
                                f"settled={state.settled}, other processes {usage['other_cores']:.2f} cores",
                                file=sys.stderr,
                            )
                    shutil.rmtree(repo)
    results["passes"] = passes
    results["points"] = [state.summary(args.window_s, args.max_other_cores) for state in states]
    results["int8_vs_fp32_outputs"] = compare_outputs(outputs["fp32"], outputs["int8"])
    results["targets"] = evaluate_targets(results["points"])
    results["machine"]["loadavg_at_end"] = list(os.getloadavg())
    return results


def compare_outputs(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """Whether the int8 model computes the same function: per-row cosine and top-1 agreement."""
    cosine = np.sum(reference * candidate, axis=1) / (
        np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    )
    return {
        "rows": int(reference.shape[0]),
        "min_cosine": float(cosine.min()),
        "top1_agreement": float(np.mean(reference.argmax(axis=1) == candidate.argmax(axis=1))),
    }


def json_safe(value):
    """Strict JSON: non-finite floats (a ratio with nothing to divide by, an idle window) become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = EncoderSpec()
    parser.add_argument("--layers", type=int, default=defaults.layers)
    parser.add_argument("--hidden", type=int, default=defaults.hidden)
    parser.add_argument("--heads", type=int, default=defaults.heads)
    parser.add_argument("--ffn", type=int, default=defaults.ffn)
    parser.add_argument("--seq-len", type=int, default=defaults.seq_len)
    parser.add_argument(
        "--intra-op-threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="onnxruntime intra-op threads of the one model instance (default: all cores)",
    )
    parser.add_argument("--window-s", type=float, default=5.0, help="measurement window (perf_analyzer's default)")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=660.0,
        help="time for measurement passes; points not settled by then report their best segment",
    )
    parser.add_argument(
        "--max-other-cores",
        type=float,
        default=0.25,
        help="a segment counts only if other processes used at most this many cores meanwhile (shared machines)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    # A plain SIGTERM would skip the cleanup that stops tritonserver.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    started = time.monotonic()
    results = run(args)
    results["total_s"] = time.monotonic() - started
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(json_safe(results), indent=2, allow_nan=False) + "\n")
    print(markdown_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
