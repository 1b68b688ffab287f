"""Compression recipes on a BERT-base-shaped encoder, against onnxruntime's own quantizers.

    python bench/transformer_bench.py [--layers 4] [--variants a,b,...] [--latency-rounds 8]

Generates the encoder with models/transformer.py (the "bench" preset: BERT-base's 30,522 ×
768 token-embedding table, hidden 768, 12 heads, FFN 3,072, 4 of BERT-base's 12 layers for run
time on 2 cores; three INT64 inputs input_ids, attention_mask, token_type_ids; the pooled FP32
output). Then, per variant, each in its own process so that peak RSS is its own:

- modelops recipes: int8-weight-only, int4-weight-only (block 128 and 32), int8-dynamic, fp16,
  fp16-compute (modelops.compress.onnx_compress.compress_onnx, the Job's path for ONNX);
- onnxruntime's own: quantize_dynamic with its defaults, and MatMulNBitsQuantizer (4 bits,
  block 128, symmetric; MatMul and Gather), each load-quantize-save.

Per variant: size ratio (fp32 bytes / output bytes), the compressor's seconds, throughput
(GB of fp32 input per second) and peak RSS (the child's VmHWM) over the model size; then, in
onnxruntime on the CPU (2 intra-op threads), the latency ratio against fp32 (median of
--latency-rounds rounds that alternate fp32 and the variant on batch 4 × 64 tokens, so that
drift on a shared machine hits both) and the mean cosine similarity of the pooled output with
fp32 over 16 evaluation samples of 128 tokens. A variant that onnxruntime cannot run is reported with the
error, never replaced. Results: bench/results/transformer.json and a markdown table.
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
from dataclasses import asdict, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "transformer.json"
sys.path[:0] = [str(ROOT / "operator"), str(ROOT)]

BARS = {"int8-weight-only": {"ratio": 3.5, "cosine": 0.99}, "int4-weight-only": {"ratio": 6.0}}
RSS_BAR = 1.5
LATENCY_BATCH, LATENCY_SEQUENCE = 4, 64
EVAL_SAMPLES = 16  # × 128 tokens


def _modelops(recipe: dict):
    def run(source: Path, destination: Path, threads: int) -> None:
        from modelops.compress.onnx_compress import compress_onnx
        from modelops.compress.recipe import Recipe

        compress_onnx(source, destination, Recipe.from_dict(recipe), threads)

    return run


def run_ort_dynamic(source: Path, destination: Path, threads: int) -> None:
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(str(source), str(destination))


def run_ort_nbits(source: Path, destination: Path, threads: int) -> None:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(
        str(source), block_size=128, is_symmetric=True, op_types_to_quantize=("MatMul", "Gather")
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(destination), False)


VARIANTS = {
    "int8-weight-only": ("modelops int8-weight-only", _modelops({"quantization": "int8-weight-only"})),
    "int4-weight-only": (
        "modelops int4-weight-only (block 128)",
        _modelops({"quantization": "int4-weight-only", "blockSize": 128}),
    ),
    "int4-weight-only-32": (
        "modelops int4-weight-only (block 32)",
        _modelops({"quantization": "int4-weight-only", "blockSize": 32}),
    ),
    "int8-dynamic": ("modelops int8-dynamic", _modelops({"quantization": "int8-dynamic"})),
    "fp16": ("modelops fp16 (storage)", _modelops({"quantization": "fp16"})),
    "fp16-compute": ("modelops fp16-compute", _modelops({"quantization": "fp16-compute"})),
    "ort-quantize-dynamic": ("onnxruntime quantize_dynamic (defaults)", run_ort_dynamic),
    "ort-matmulnbits": ("onnxruntime MatMulNBitsQuantizer (4-bit, block 128)", run_ort_nbits),
}


STREAMING = tuple(name for name in VARIANTS if not name.startswith("ort-"))


def child(variant: str, source: Path, destination: Path, threads: int) -> None:
    import logging

    import numpy  # noqa: F401 - imported before the clock starts
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401

    logging.disable(logging.WARNING)
    started = time.perf_counter()
    VARIANTS[variant][1](source, destination, threads)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "peak_rss_bytes": _own_peak_rss()}))


def _own_peak_rss() -> int:
    """VmHWM: this process image's peak RSS. Unlike ru_maxrss, exec resets it, so a child does
    not inherit the parent's peak (the parent held the whole model while generating it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def compress(variant: str, source: Path, destination: Path, threads: int) -> dict:
    destination.unlink(missing_ok=True)
    os.sync()
    command = [sys.executable, __file__, "--child", variant, "--source", str(source)]
    command += ["--destination", str(destination), "--threads", str(threads)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        return {"error": stderr.strip().splitlines()[-1] if stderr.strip() else f"exit status {process.returncode}"}
    measured = json.loads(stdout.strip().splitlines()[-1])
    return measured | {"output_bytes": destination.stat().st_size}


def _session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _cosine(a, b) -> float:
    import numpy as np

    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(np.mean((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def quality_and_latency(reference, expected, variant: Path, config, threads: int, rounds: int) -> dict:
    """Cosine with fp32 on the evaluation set, and the latency ratio from alternating rounds."""
    import numpy as np

    from models import transformer as T

    try:
        session = _session(variant, threads)
    except Exception as exc:  # noqa: BLE001 - any failure to load is the finding, reported as is
        return {"runs_in_onnxruntime_cpu": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
    cosine = _cosine(expected, session.run(None, T.eval_inputs(config, samples=EVAL_SAMPLES))[0])
    batch = T.eval_inputs(replace(config, sequence=LATENCY_SEQUENCE), samples=LATENCY_BATCH, seed=5)
    for runner in (reference, session):
        runner.run(None, batch)
    ratios, fp32_ms, variant_ms = [], [], []
    for _ in range(rounds):
        timings = []
        for runner in (reference, session):
            started = time.perf_counter()
            runner.run(None, batch)
            timings.append((time.perf_counter() - started) * 1000)
        fp32_ms.append(timings[0])
        variant_ms.append(timings[1])
        ratios.append(timings[1] / timings[0])
    return {
        "runs_in_onnxruntime_cpu": True,
        "cosine": cosine,
        "latency_ratio": float(np.median(ratios)),
        "latency_ms": float(np.median(variant_ms)),
        "fp32_latency_ms": float(np.median(fp32_ms)),
    }


def markdown(results: dict) -> str:
    model = results["model"]
    config, machine = model["config"], results["machine"]
    header = (
        f"Model: BERT-base-shaped encoder, {config['layers']} layers, vocabulary {config['vocab']}, "
        f"hidden {config['hidden']}, {model['parameters'] / 1e6:.1f} M parameters, "
        f"{model['bytes'] / 1e6:.1f} MB fp32, inputs {', '.join(model['inputs'])}; "
        f"{machine['cpus']} CPUs (VNNI: {machine['cpu']['vnni']}), threads={results['threads']}."
    )
    lines = [
        header,
        "",
        "| variant | size ratio | latency ratio (ORT CPU) | cosine vs fp32 | compress s | GB/s fp32 | peak RSS / model |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in results["variants"].items():
        if "error" in row and "seconds" not in row:
            lines.append(f"| {VARIANTS[name][0]} | failed: {row['error']} | | | | | |")
            continue
        latency = f"{row['latency_ratio']:.2f}" if row.get("runs_in_onnxruntime_cpu") else f"cannot run: {row['error']}"
        cosine = f"{row['cosine']:.4f}" if "cosine" in row else "–"
        lines.append(
            f"| {VARIANTS[name][0]} | {row['size_ratio']:.2f} | {latency} | {cosine} | {row['seconds']:.1f} | "
            f"{row['throughput_gbps']:.2f} | {row['rss_to_model']:.2f} |"
        )
    lines += ["", "Bars: " + "; ".join(f"{k}: {'met' if v else 'NOT met'}" for k, v in results["bars"].items()) + "."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4, help="encoder layers (BERT-base has 12)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--latency-rounds", type=int, default=6)
    parser.add_argument("--workdir", type=Path, help="where to put the models (default: a temp dir)")
    parser.add_argument("--child", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--source", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--destination", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.source, args.destination, args.threads)
        return 0

    from importlib import metadata

    from modelops.compress.cpu import cpu_features
    from models import transformer as T

    config = replace(T.PRESETS["bench"], layers=args.layers)
    bench_started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="transformer-bench-", dir=args.workdir) as scratch:
        work = Path(scratch)
        source = T.export(work / "model.onnx", config)
        size = source.stat().st_size
        print(f"generated {size / 1e6:.1f} MB in {time.perf_counter() - bench_started:.1f} s", file=sys.stderr)
        results: dict = {
            "model": {
                "config": asdict(config),
                "parameters": config.parameters,
                "bytes": size,
                "inputs": T.input_names(config),
                "output": T.output_name(config),
            },
            "threads": args.threads,
            "latency": {"batch": LATENCY_BATCH, "sequence": LATENCY_SEQUENCE, "rounds": args.latency_rounds},
            "machine": {
                "cpus": len(os.sched_getaffinity(0)),
                "cpu": cpu_features(),
                "loadavg_at_start": os.getloadavg(),
                "python": platform.python_version(),
            },
            "variants": {},
        }
        # Compressions run before this process loads any session, so the machine is quiet for them.
        for name in args.variants.split(","):
            row = compress(name, source, work / f"{name}.onnx", args.threads)
            if "seconds" in row:
                row["size_ratio"] = size / row["output_bytes"]
                row["throughput_gbps"] = size / 1e9 / row["seconds"]
                row["rss_to_model"] = row["peak_rss_bytes"] / size
            results["variants"][name] = row
            print(f"{name}: {row}", file=sys.stderr)
        reference = _session(source, args.threads)
        expected = reference.run(None, T.eval_inputs(config, samples=EVAL_SAMPLES))[0]
        for name, row in results["variants"].items():
            if "seconds" in row:
                destination = work / f"{name}.onnx"
                row |= quality_and_latency(
                    reference, expected, destination, config, args.threads, args.latency_rounds
                )
                destination.unlink()
                print(f"{name}: cosine {row.get('cosine')}, latency ratio {row.get('latency_ratio')}", file=sys.stderr)
    rows = results["variants"]
    bars: dict[str, bool] = {}
    for recipe, bar in BARS.items():
        row = rows.get(recipe, {})
        bars[f"{recipe} ≥ {bar['ratio']}× smaller"] = row.get("size_ratio", 0) >= bar["ratio"]
        if "cosine" in bar:
            bars[f"{recipe} cosine ≥ {bar['cosine']}"] = row.get("cosine", 0) >= bar["cosine"]
    streaming = [row for name, row in rows.items() if name in STREAMING and "rss_to_model" in row]
    bars[f"modelops peak RSS ≤ {RSS_BAR}× model"] = bool(streaming) and all(
        row["rss_to_model"] <= RSS_BAR for row in streaming
    )
    results["bars"] = bars
    results["seconds"] = time.perf_counter() - bench_started
    results["libraries"] = {name: metadata.version(name) for name in ("numpy", "onnx", "onnxruntime")}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
