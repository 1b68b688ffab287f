"""Generate a BERT-shaped encoder with deterministic random weights, exported to ONNX.

    python models/transformer.py --out DIR [--preset small|bench|bert-base] [--samples N]

writes DIR/model.onnx and DIR/eval.npz. The graph is built directly with onnx.helper (no
torch export), so even BERT-base (110 M parameters) is written in seconds.

Interface (stable; other code imports it):

- `TransformerConfig(vocab, hidden, layers, heads, intermediate, sequence, max_positions,
  token_type_ids, output, tied_head)`: the shape. `sequence` is the evaluation sequence
  length; the model itself takes any batch and any sequence length up to `max_positions`.
- `PRESETS`: "small" (vocab 1,000, hidden 64, 2 layers; for tests and the test bed, exports
  in well under a second), "bert-base" (30,522 × 768, 12 layers, 12 heads, 3,072
  intermediate), and "bench" (bert-base with 4 layers, the transformer benchmark's model:
  the full 30,522-token embedding table, fewer layers for run time on 2 cores).
- `build_model(config, seed=0) -> onnx.ModelProto`; `export(path, config, seed=0) -> Path`;
  `export_external(folder, config, seed=0) -> [graph, data]`: the same model with its weights
  as ONNX external data, written as they are drawn (models above 2 GiB).
- `input_names(config)`: `input_ids`, `attention_mask` and, when `config.token_type_ids`,
  `token_type_ids`; all INT64 [batch, sequence].
- `output_name(config)`: the single FP32 output: "pooler_output" [batch, hidden] (the first
  token through Dense + Tanh), "last_hidden_state" [batch, sequence, hidden], or "logits"
  [batch, sequence, vocab] (an MLM head).
- `tied_head=True` (only with output "logits"): the output projection is the token-embedding
  table itself, used transposed (`MatMul(h, Transpose(table))`), as in tied-weight exports.
- `write_eval_npz(path, config, samples=32, seed=1) -> Path`: one INT64 array
  [samples, config.sequence] per input name, with padded tails (mask 0, id 0) and two
  token-type segments, deterministic in `seed`.

The token embedding is a real `Gather` on a [vocab, hidden] initializer named
`embeddings.word_embeddings.weight`. Weights are N(0, 0.02²) like BERT's initialisation,
LayerNorm scales 1 and shifts 0; ONNX opset 17 (LayerNormalization, Erf GELU).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ONNX_OPSET = 17
WORD_EMBEDDINGS = "embeddings.word_embeddings.weight"
Output = Literal["pooler_output", "last_hidden_state", "logits"]


@dataclass(frozen=True)
class TransformerConfig:
    vocab: int = 30522
    hidden: int = 768
    layers: int = 12
    heads: int = 12
    intermediate: int = 3072
    sequence: int = 128
    max_positions: int = 512
    token_type_ids: bool = True
    output: Output = "pooler_output"
    tied_head: bool = False

    def __post_init__(self) -> None:
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        if self.sequence > self.max_positions:
            raise ValueError(f"sequence ({self.sequence}) exceeds max_positions ({self.max_positions})")
        if self.tied_head and self.output != "logits":
            raise ValueError("tied_head needs output 'logits'")

    @property
    def parameters(self) -> int:
        embeddings = (self.vocab + self.max_positions + (2 if self.token_type_ids else 0) + 2) * self.hidden
        per_layer = 4 * (self.hidden + 1) * self.hidden + 2 * self.hidden * self.intermediate
        per_layer += self.intermediate + self.hidden + 4 * self.hidden
        head = {"pooler_output": (self.hidden + 1) * self.hidden, "last_hidden_state": 0}.get(self.output)
        if head is None:
            head = self.vocab + (0 if self.tied_head else self.vocab * self.hidden)
        return embeddings + self.layers * per_layer + head


BERT_BASE = TransformerConfig()
PRESETS: dict[str, TransformerConfig] = {
    "small": TransformerConfig(vocab=1000, hidden=64, layers=2, heads=2, intermediate=256, sequence=16, max_positions=64),
    "bench": replace(BERT_BASE, layers=4),
    "bert-base": BERT_BASE,
}


def input_names(config: TransformerConfig) -> list[str]:
    return ["input_ids", "attention_mask"] + (["token_type_ids"] if config.token_type_ids else [])


def output_name(config: TransformerConfig) -> str:
    return config.output


class _Builder:
    def __init__(self, config: TransformerConfig, seed: int, data: Any = None, data_name: str = "") -> None:
        self.config = config
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0
        # With an open data file, every weight goes there as ONNX external data, written as it
        # is drawn, so that a model far above 2 GiB is made in the memory of one weight.
        self._data, self._data_name = data, data_name

    def weight(self, name: str, shape: tuple[int, ...]) -> str:
        values = self.rng.standard_normal(shape, dtype=np.float32)
        values *= np.float32(0.02)
        if self._data is None:
            self.initializers.append(numpy_helper.from_array(values, name))
            return name
        offset = self._data.seek(0, 2)
        padding = -offset % 64
        self._data.write(bytes(padding))
        self._data.write(values.tobytes())
        proto = onnx.TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(shape))
        proto.data_location = TensorProto.EXTERNAL
        for key, value in (("location", self._data_name), ("offset", str(offset + padding)), ("length", str(values.nbytes))):
            entry = proto.external_data.add()
            entry.key, entry.value = key, value
        self.initializers.append(proto)
        return name

    def constant(self, name: str, values: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(values, name))
        return name

    def op(self, op_type: str, inputs: list[str], **attrs: Any) -> str:
        self._count += 1
        output = f"{op_type.lower()}_{self._count}"
        self.nodes.append(helper.make_node(op_type, inputs, [output], name=f"{op_type}_{self._count}", **attrs))
        return output

    def linear(self, x: str, prefix: str, fan_in: int, fan_out: int) -> str:
        product = self.op("MatMul", [x, self.weight(f"{prefix}.weight", (fan_in, fan_out))])
        bias = self.constant(f"{prefix}.bias", np.zeros(fan_out, dtype=np.float32))
        return self.op("Add", [product, bias])

    def layer_norm(self, x: str, prefix: str) -> str:
        hidden = self.config.hidden
        scale = self.constant(f"{prefix}.weight", np.ones(hidden, dtype=np.float32))
        shift = self.constant(f"{prefix}.bias", np.zeros(hidden, dtype=np.float32))
        return self.op("LayerNormalization", [x, scale, shift], axis=-1, epsilon=1e-12)

    def gelu(self, x: str) -> str:
        scaled = self.op("Div", [x, "sqrt_two"])
        erf = self.op("Erf", [scaled])
        shifted = self.op("Add", [erf, "one"])
        return self.op("Mul", [self.op("Mul", [x, shifted]), "half"])


def build_model(config: TransformerConfig, seed: int = 0, data: Any = None, data_name: str = "") -> onnx.ModelProto:
    """The encoder as an in-memory ONNX model (weights deterministic in `seed`); with `data`,
    an open binary file named `data_name` beside the graph, its weights as external data."""
    c = config
    b = _Builder(c, seed, data, data_name)
    head_dim = c.hidden // c.heads
    b.constant("one", np.array(1.0, dtype=np.float32))
    b.constant("half", np.array(0.5, dtype=np.float32))
    b.constant("sqrt_two", np.array(math.sqrt(2.0), dtype=np.float32))
    b.constant("attention_scale", np.array(1.0 / math.sqrt(head_dim), dtype=np.float32))
    b.constant("mask_fill", np.array(-10000.0, dtype=np.float32))
    b.constant("heads_shape", np.array([0, 0, c.heads, head_dim], dtype=np.int64))
    b.constant("hidden_shape", np.array([0, 0, c.hidden], dtype=np.int64))
    b.constant("mask_axes", np.array([1, 2], dtype=np.int64))
    b.constant("zero_i64", np.array(0, dtype=np.int64))
    b.constant("one_i64", np.array(1, dtype=np.int64))

    # Embeddings: token (a Gather on the big table) + position + token type, then LayerNorm.
    table = b.weight(WORD_EMBEDDINGS, (c.vocab, c.hidden))
    x = b.op("Gather", [table, "input_ids"], axis=0)
    sequence = b.op("Gather", [b.op("Shape", ["input_ids"]), "one_i64"], axis=0)
    positions = b.op("Range", ["zero_i64", sequence, "one_i64"])
    position_table = b.weight("embeddings.position_embeddings.weight", (c.max_positions, c.hidden))
    x = b.op("Add", [x, b.op("Gather", [position_table, positions], axis=0)])
    if c.token_type_ids:
        type_table = b.weight("embeddings.token_type_embeddings.weight", (2, c.hidden))
        x = b.op("Add", [x, b.op("Gather", [type_table, "token_type_ids"], axis=0)])
    x = b.layer_norm(x, "embeddings.LayerNorm")

    # Additive attention mask [batch, 1, 1, sequence]: 0 where attended, -10000 on padding.
    mask = b.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    mask = b.op("Unsqueeze", [mask, "mask_axes"])
    mask = b.op("Mul", [b.op("Sub", ["one", mask]), "mask_fill"])

    for layer in range(c.layers):
        p = f"encoder.layer.{layer}"

        def heads(value: str) -> str:
            return b.op("Transpose", [b.op("Reshape", [value, "heads_shape"])], perm=[0, 2, 1, 3])

        query = heads(b.linear(x, f"{p}.attention.self.query", c.hidden, c.hidden))
        key = b.op(
            "Transpose",
            [b.op("Reshape", [b.linear(x, f"{p}.attention.self.key", c.hidden, c.hidden), "heads_shape"])],
            perm=[0, 2, 3, 1],
        )
        value = heads(b.linear(x, f"{p}.attention.self.value", c.hidden, c.hidden))
        scores = b.op("Add", [b.op("Mul", [b.op("MatMul", [query, key]), "attention_scale"]), mask])
        context = b.op("MatMul", [b.op("Softmax", [scores], axis=-1), value])
        context = b.op("Reshape", [b.op("Transpose", [context], perm=[0, 2, 1, 3]), "hidden_shape"])
        attended = b.linear(context, f"{p}.attention.output.dense", c.hidden, c.hidden)
        x = b.layer_norm(b.op("Add", [attended, x]), f"{p}.attention.output.LayerNorm")
        inner = b.gelu(b.linear(x, f"{p}.intermediate.dense", c.hidden, c.intermediate))
        outer = b.linear(inner, f"{p}.output.dense", c.intermediate, c.hidden)
        x = b.layer_norm(b.op("Add", [outer, x]), f"{p}.output.LayerNorm")

    if c.output == "pooler_output":
        first = b.op("Gather", [x, "zero_i64"], axis=1)
        y = b.op("Tanh", [b.linear(first, "pooler.dense", c.hidden, c.hidden)])
        shape: list[int | str] = ["batch", c.hidden]
    elif c.output == "last_hidden_state":
        y = b.op("Identity", [x])
        shape = ["batch", "sequence", c.hidden]
    else:
        if c.tied_head:
            projection = b.op("Transpose", [table], perm=[1, 0])
        else:
            projection = b.weight("cls.predictions.decoder.weight", (c.hidden, c.vocab))
        bias = b.constant("cls.predictions.bias", np.zeros(c.vocab, dtype=np.float32))
        y = b.op("Add", [b.op("MatMul", [x, projection]), bias])
        shape = ["batch", "sequence", c.vocab]
    b.nodes[-1].output[0] = c.output

    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"]) for n in input_names(c)]
    graph = helper.make_graph(
        b.nodes, "bert_encoder", inputs, [helper.make_tensor_value_info(c.output, TensorProto.FLOAT, shape)], b.initializers
    )
    del y
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], producer_name="modelops-models")
    model.ir_version = 8
    return model


def export(path: Path | str, config: TransformerConfig, seed: int = 0) -> Path:
    """Write the encoder to `path` as a single-file ONNX model and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(build_model(config, seed), path)
    return path


def export_external(folder: Path | str, config: TransformerConfig, seed: int = 0, data_name: str = "model.onnx.data") -> list[Path]:
    """Write the encoder as `folder/model.onnx` with its weights in `folder/<data_name>` (ONNX
    external data, each weight at an offset aligned to 64 bytes); returns both paths, the
    graph first. The same weights as `export` with the same seed."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / data_name, "wb") as data:
        model = build_model(config, seed, data, data_name)
    onnx.save_model(model, folder / "model.onnx")
    return [folder / "model.onnx", folder / data_name]


def eval_inputs(config: TransformerConfig, samples: int = 32, seed: int = 1) -> dict[str, np.ndarray]:
    """Token batches like a tokenizer's: [CLS]=101-style first token, padded tails, two segments."""
    rng = np.random.default_rng(seed)
    n, s = samples, config.sequence
    lengths = rng.integers(max(2, s // 2), s + 1, size=n)
    positions = np.arange(s)[None, :]
    attention_mask = (positions < lengths[:, None]).astype(np.int64)
    input_ids = rng.integers(1, config.vocab, size=(n, s), dtype=np.int64) * attention_mask
    arrays = {"input_ids": input_ids, "attention_mask": attention_mask}
    if config.token_type_ids:
        arrays["token_type_ids"] = ((positions >= (lengths // 2)[:, None]) & (attention_mask == 1)).astype(np.int64)
    return arrays


def write_eval_npz(path: Path | str, config: TransformerConfig, samples: int = 32, seed: int = 1) -> Path:
    """Write the evaluation set: one INT64 array [samples, sequence] per input name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        np.savez(out, **eval_inputs(config, samples, seed))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="directory for model.onnx and eval.npz")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--layers", type=int, help="override the preset's number of layers")
    parser.add_argument("--no-token-type-ids", action="store_true", help="two inputs instead of three")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    config = PRESETS[args.preset]
    if args.layers is not None:
        config = replace(config, layers=args.layers)
    if args.no_token_type_ids:
        config = replace(config, token_type_ids=False)
    model = export(args.out / "model.onnx", config, args.seed)
    npz = write_eval_npz(args.out / "eval.npz", config, args.samples)
    json.dump(
        {"model": str(model), "eval_npz": str(npz), "config": asdict(config), "parameters": config.parameters},
        sys.stdout,
        indent=2,
    )
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
