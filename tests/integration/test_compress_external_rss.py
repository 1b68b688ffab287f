"""Peak memory of compressing an ONNX model with external data: bounded by its largest tensors,
not by the model. Measured in fresh processes (the peak resident set, VmHWM, from after the
imports) beside onnx.load + quantize + save,
on a generated 256 MiB model of 32 weights of 8 MiB each."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration

WEIGHTS = 32
SIDE = 1448  # 1448 × 1448 float32 ≈ 8 MiB

MEASURE = r"""
import json, sys
from pathlib import Path
import numpy as np, onnx
sys.path.insert(0, "operator")
from modelops.compress.onnx_compress import compress_onnx
from modelops.compress.recipe import Recipe
from modelops.compress import weights as W
source, out, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
# The imports' own peak is not the compressor's: reset the high-water mark (Linux clear_refs 5).
with open("/proc/self/clear_refs", "w") as refs:
    refs.write("5")
base = status("VmRSS")
if mode == "streaming":
    compress_onnx(source, out, Recipe.of({"quantization": "int8-weight-only"}), threads=2, providers=None)
else:  # what a straightforward compressor does: the whole model in memory
    model = onnx.load(str(source))
    for tensor in model.graph.initializer:
        array = onnx.numpy_helper.to_array(tensor)
        quantized, _ = W.quantize_int8(array, 1, 2)
        tensor.CopyFrom(onnx.numpy_helper.from_array(quantized, tensor.name))
    onnx.save(model, str(out), save_as_external_data=True, location=out.name + ".data")
peak = status("VmHWM")
print(json.dumps({"base": base, "peak": peak}))
"""


def _model(folder: Path) -> tuple[Path, int, int]:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits = [], []
    previous = "input"
    for i in range(WEIGHTS):
        inits.append(numpy_helper.from_array(rng.standard_normal((SIDE, SIDE), dtype=np.float32) * 0.02, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [previous, f"w{i}"], [f"h{i}"]))
        previous = f"h{i}"
    graph = helper.make_graph(
        nodes, "deep",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", SIDE])],
        [helper.make_tensor_value_info(previous, TensorProto.FLOAT, ["n", SIDE])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "model.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="model.onnx.data")
    size = path.stat().st_size + (folder / "model.onnx.data").stat().st_size
    return path, size, SIDE * SIDE * 4


def _measure(source: Path, out: Path, mode: str) -> int:
    result = subprocess.run([sys.executable, "-c", MEASURE, str(source), str(out), mode],
                            capture_output=True, text=True, check=True, timeout=600)
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    return int(figures["peak"] - figures["base"])


def test_peak_memory_follows_the_largest_tensors_not_the_model(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "ours").mkdir()
    (tmp_path / "naive").mkdir()
    source, model_bytes, largest = _model(tmp_path / "src")
    ours = _measure(source, tmp_path / "ours" / "model.onnx", "streaming")
    naive = _measure(source, tmp_path / "naive" / "model.onnx", "naive")
    print(f"\nmodel {model_bytes / 2**20:.0f} MiB, largest tensor {largest / 2**20:.0f} MiB: "
          f"streaming peak +{ours / 2**20:.0f} MiB ({ours / model_bytes:.2f}× the model), "
          f"onnx.load + quantize + save +{naive / 2**20:.0f} MiB ({naive / model_bytes:.2f}×)")
    assert (tmp_path / "ours" / "model.onnx.data").stat().st_size > 0
    assert ours <= 0.3 * model_bytes
    assert ours <= 8 * largest  # a handful of tensors at a time, whatever the model's size
    assert naive > model_bytes > 3 * ours
