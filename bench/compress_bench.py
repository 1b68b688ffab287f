"""Compression throughput and peak memory on a generated model of at least 1 GB.

    python bench/compress_bench.py [--layers 16 --width 4096] [--keep]

Generates an MLP of random float32 MatMul weights (16 × 4096² ≈ 1.07 GB by default), then
runs int8 weight-only quantization of it in separate processes, one per variant:

- streaming: modelops.compress (initializers read one at a time from a memory map, the
  output written sequentially), the path the compression Job takes for ONNX;
- naive: onnx.load -> quantize every weight with plain numpy -> onnx.save;
- onnxruntime: onnxruntime.quantization.quantize_dynamic (per-channel), also load-quantize-save.

Each child reports its compression time (reading the input, quantizing, writing the output
file); the parent reads the child's peak RSS from wait4. Each variant runs --repeats times and
the median time is reported, with the largest peak RSS.
Throughput is GB (10^9 bytes) of fp32 input per second. Results go to
bench/results/compress.json and a markdown table is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "compress.json"
THROUGHPUT_TARGET_GBPS = 1.2
RSS_TARGET_RATIO = 1.5

sys.path.insert(0, str(ROOT / "operator"))


def generate(path: Path, layers: int, width: int, seed: int = 0) -> int:
    """Write the model one weight at a time, so the generator never holds it in memory."""
    import numpy as np
    from onnx import TensorProto, helper

    from modelops.compress.onnx_stream import OnnxStreamWriter

    nodes = []
    previous = "input"
    for i in range(layers):
        nodes.append(helper.make_node("MatMul", [previous, f"w{i}"], [f"mm{i}"]))
        output = "output" if i == layers - 1 else f"act{i}"
        nodes.append(helper.make_node("Tanh", [f"mm{i}"], [output]))
        previous = output
    graph = helper.make_graph(
        nodes,
        "bench_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", width])],
    )
    skeleton = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    rng = np.random.default_rng(seed)
    with OnnxStreamWriter(path, skeleton) as writer:
        for i in range(layers):
            weight = rng.standard_normal((width, width), dtype=np.float32) / np.float32(np.sqrt(width))
            writer.add_array(f"w{i}", weight)
            del weight
    return path.stat().st_size


def run_streaming(source: Path, destination: Path, threads: int) -> None:
    from modelops.compress.onnx_compress import compress_onnx
    from modelops.compress.recipe import Recipe

    compress_onnx(source, destination, Recipe.from_dict({"quantization": "int8-weight-only"}), threads)


def run_naive(source: Path, destination: Path, threads: int) -> None:
    """What one writes without thinking about memory: load all, quantize with numpy, save all."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(source))
    weights = {node.input[1] for node in model.graph.node if node.op_type == "MatMul"}
    kept, added_nodes = [], []
    for tensor in model.graph.initializer:
        if tensor.name not in weights:
            kept.append(tensor)
            continue
        values = numpy_helper.to_array(tensor)
        scale = (np.abs(values).max(axis=0) / 127).astype(np.float32)
        scale[scale == 0] = 1
        quantized = np.round(values / scale).astype(np.int8)
        kept += [
            numpy_helper.from_array(quantized, f"{tensor.name}_int8"),
            numpy_helper.from_array(scale, f"{tensor.name}_scale"),
        ]
        added_nodes.append(
            helper.make_node("DequantizeLinear", [f"{tensor.name}_int8", f"{tensor.name}_scale"], [tensor.name], axis=1)
        )
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    nodes = added_nodes + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(destination))


def run_onnxruntime(source: Path, destination: Path, threads: int) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(destination), weight_type=QuantType.QInt8, per_channel=True)


VARIANTS = {
    "streaming": ("modelops.compress (streaming, int8 weight-only)", run_streaming),
    "naive": ("naive onnx.load -> numpy int8 -> onnx.save", run_naive),
    "onnxruntime": ("onnxruntime quantize_dynamic (per-channel)", run_onnxruntime),
}


def child(variant: str, source: Path, destination: Path, threads: int) -> None:
    """Runs in the measured process: import first, then time only the compression."""
    import logging

    import numpy  # noqa: F401 - imported before the clock starts, like the libraries below
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401

    logging.disable(logging.WARNING)
    started = time.perf_counter()
    VARIANTS[variant][1](source, destination, threads)
    print(json.dumps({"seconds": time.perf_counter() - started}))


def measure(variant: str, source: Path, destination: Path, threads: int) -> dict:
    # Every run starts alike: no previous output, and no dirty pages still being written back.
    destination.unlink(missing_ok=True)
    os.sync()
    command = [
        sys.executable,
        __file__,
        "--child",
        variant,
        "--source",
        str(source),
        "--destination",
        str(destination),
        "--threads",
        str(threads),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    stdout, stderr = process.stdout.read(), process.stderr.read()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"variant {variant} failed ({process.returncode}):\n{stderr[-3000:]}")
    seconds = json.loads(stdout.strip().splitlines()[-1])["seconds"]
    return {"seconds": seconds, "peak_rss_bytes": usage.ru_maxrss * 1024, "output_bytes": destination.stat().st_size}


def compare_outputs(first: Path, second: Path) -> dict:
    """The int8 weights of two outputs: the largest difference, and how many entries differ."""
    import numpy as np

    from modelops.compress.onnx_stream import OnnxFile

    largest, differing, total = 0, 0, 0
    with OnnxFile(first) as a, OnnxFile(second) as b:
        theirs = {t.name: t for t in b.initializers}
        for tensor in a.initializers:
            if not tensor.name.endswith("_int8"):
                continue
            mine, other = tensor.array().astype(np.int16), theirs[tensor.name].array().astype(np.int16)
            difference = np.abs(mine - other)
            largest = max(largest, int(difference.max()))
            differing += int(np.count_nonzero(difference))
            total += difference.size
            tensor.release()
            theirs[tensor.name].release()
    return {"max_int8_difference": largest, "differing_fraction": differing / total}


def markdown(results: dict) -> str:
    size = results["model"]["bytes"]
    lines = [
        f"Model: {results['model']['layers']} × MatMul [{results['model']['width']}²] fp32, {size / 1e9:.3f} GB; "
        f"{results['machine']['cpus']} CPUs, threads={results['threads']}.",
        "",
        "| variant | seconds (median) | throughput (GB/s fp32) | peak RSS (GB) | peak RSS / model | output (GB) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in results["variants"].items():
        lines.append(
            f"| {VARIANTS[name][0]} | {row['seconds']:.2f} | {row['throughput_gbps']:.2f} | "
            f"{row['peak_rss_bytes'] / 1e9:.2f} | {row['rss_to_model']:.2f} | {row['output_bytes'] / 1e9:.3f} |"
        )
    checks = results["targets"]
    lines += [
        "",
        f"Targets (streaming): throughput ≥ {THROUGHPUT_TARGET_GBPS} GB/s: {'met' if checks['throughput_met'] else 'NOT met'}; "
        f"peak RSS ≤ {RSS_TARGET_RATIO}× model: {'met' if checks['rss_met'] else 'NOT met'}.",
    ]
    if "agreement" in results:
        agreement = results["agreement"]
        lines.append(
            f"Streaming vs naive int8 weights: max difference {agreement['max_int8_difference']}, "
            f"{agreement['differing_fraction']:.2e} of entries differ (x/s vs x·(1/s) at exact halves)."
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2, help="threads for the streaming variant")
    parser.add_argument("--variants", default="streaming,naive,onnxruntime")
    parser.add_argument("--repeats", type=int, default=3, help="runs per variant; the median is reported")
    parser.add_argument("--workdir", type=Path, help="where to put the generated model (default: a temp dir)")
    parser.add_argument("--child", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--source", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--destination", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.source, args.destination, args.threads)
        return 0

    with tempfile.TemporaryDirectory(prefix="compress-bench-", dir=args.workdir) as scratch:
        work = Path(scratch)
        source = work / "model.onnx"
        started = time.perf_counter()
        size = generate(source, args.layers, args.width)
        print(f"generated {size / 1e9:.3f} GB in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        results: dict = {
            "model": {"layers": args.layers, "width": args.width, "bytes": size},
            "threads": args.threads,
            "machine": {
                "cpus": len(os.sched_getaffinity(0)),
                "loadavg_at_start": os.getloadavg(),
                "python": platform.python_version(),
                "platform": platform.platform(),
            },
            "variants": {},
        }
        for name in args.variants.split(","):
            destination = work / f"{name}.onnx"
            runs = [measure(name, source, destination, args.threads) for _ in range(args.repeats)]
            # The median run by time; the disk on shared machines makes single runs noisy.
            row = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
            row["seconds_all_runs"] = [round(r["seconds"], 3) for r in runs]
            row["peak_rss_bytes"] = max(r["peak_rss_bytes"] for r in runs)
            row["throughput_gbps"] = size / 1e9 / row["seconds"]
            row["rss_to_model"] = row["peak_rss_bytes"] / size
            results["variants"][name] = row
            print(f"{name}: {row}", file=sys.stderr)
        if {"streaming", "naive"} <= set(results["variants"]):
            results["agreement"] = compare_outputs(work / "streaming.onnx", work / "naive.onnx")
        streaming = results["variants"].get("streaming", {})
        results["targets"] = {
            "throughput_gbps": THROUGHPUT_TARGET_GBPS,
            "rss_to_model": RSS_TARGET_RATIO,
            "throughput_met": streaming.get("throughput_gbps", 0) >= THROUGHPUT_TARGET_GBPS,
            "rss_met": streaming.get("rss_to_model", float("inf")) <= RSS_TARGET_RATIO,
        }
    from importlib import metadata

    results["libraries"] = {name: metadata.version(name) for name in ("numpy", "onnx", "onnxruntime")}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
