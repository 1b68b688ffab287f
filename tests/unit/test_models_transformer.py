"""The generated BERT-shaped encoder: a valid ONNX model with the documented interface."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from models import transformer as T

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "config",
    [
        T.PRESETS["small"],
        replace(T.PRESETS["small"], token_type_ids=False, output="last_hidden_state"),
        replace(T.PRESETS["small"], output="logits", tied_head=True),
    ],
    ids=["three-inputs-pooled", "two-inputs-last-hidden", "tied-mlm-head"],
)
def test_generated_encoder_runs_with_its_eval_set(tmp_path, config) -> None:
    path = T.export(tmp_path / "model.onnx", config)
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    tensors = {t.name: t for t in model.graph.initializer}
    assert sum(int(np.prod(t.dims)) for t in tensors.values() if len(t.dims) == 2) <= config.parameters
    table = tensors[T.WORD_EMBEDDINGS]
    assert tuple(table.dims) == (config.vocab, config.hidden)
    assert any(n.op_type == "Gather" and n.input[0] == T.WORD_EMBEDDINGS for n in model.graph.node)
    if config.tied_head:
        assert any(n.op_type == "Transpose" and n.input[0] == T.WORD_EMBEDDINGS for n in model.graph.node)

    npz = np.load(T.write_eval_npz(tmp_path / "eval.npz", config, samples=5))
    assert sorted(npz.files) == sorted(T.input_names(config))
    assert all(npz[name].dtype == np.int64 and npz[name].shape == (5, config.sequence) for name in npz.files)
    assert (npz["input_ids"][npz["attention_mask"] == 0] == 0).all()

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == T.input_names(config)
    (output,) = session.run([T.output_name(config)], {name: npz[name] for name in npz.files})
    assert output.dtype == np.float32 and output.shape[0] == 5 and np.isfinite(output).all()
    # Padding is masked: changing the ids of padded positions leaves the first token's output alone.
    feeds = {name: npz[name].copy() for name in npz.files}
    feeds["input_ids"][feeds["attention_mask"] == 0] = 7
    (again,) = session.run([T.output_name(config)], feeds)
    np.testing.assert_allclose(again[:, 0] if again.ndim == 3 else again, output[:, 0] if output.ndim == 3 else output, atol=1e-5)


def test_weights_are_deterministic_in_the_seed() -> None:
    config = T.PRESETS["small"]
    first, second, other = (T.build_model(config, seed) for seed in (0, 0, 1))
    assert first.SerializeToString() == second.SerializeToString()
    assert first.SerializeToString() != other.SerializeToString()


def test_bert_base_preset_has_the_bert_base_shape() -> None:
    config = T.PRESETS["bert-base"]
    assert (config.vocab, config.hidden, config.layers, config.heads, config.intermediate) == (30522, 768, 12, 12, 3072)
    assert 109_000_000 < config.parameters < 111_000_000
    assert T.PRESETS["bench"].vocab == 30522
