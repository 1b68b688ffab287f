"""The artifact's tensors against the Model's signature: names, types, ranks and dims."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelops.api.model import Signature
from modelops.contract.interface import (
    Interface,
    SignatureMismatch,
    Tensor,
    check_signature,
    signature_problems,
)

pytestmark = pytest.mark.unit


def signature(max_batch_size: int = 8, inputs=None, outputs=None) -> Signature:
    return Signature.model_validate(
        {
            "maxBatchSize": max_batch_size,
            "inputs": inputs or [{"name": "input", "dataType": "FP32", "dims": [64]}],
            "outputs": outputs or [{"name": "logits", "dataType": "FP32", "dims": [10]}],
        }
    )


def interface(inputs=(("input", "FP32", (-1, 64)),), outputs=(("logits", "FP32", (-1, 10)),), defaults=()) -> Interface:
    return Interface(
        tuple(Tensor(n, t, d, n in defaults) for n, t, d in inputs),
        tuple(Tensor(n, t, d) for n, t, d in outputs),
    )


def test_a_matching_artifact_has_no_problems() -> None:
    assert signature_problems(interface(), signature()) == []


def test_a_renamed_output_is_named() -> None:
    problems = signature_problems(interface(outputs=(("scores", "FP32", (-1, 10)),)), signature())
    assert problems == ["output 'logits': the signature names it but the artifact has no such output (it has 'scores')"]


def test_an_input_the_signature_lacks_is_named_unless_it_has_a_default() -> None:
    two = (("input", "FP32", (-1, 64)), ("mask", "INT64", (-1, 64)))
    assert signature_problems(interface(inputs=two), signature()) == [
        "input 'mask': the artifact needs it but the signature does not name it"
    ]
    assert signature_problems(interface(inputs=two, defaults=("mask",)), signature()) == []


def test_extra_outputs_are_not_served_and_not_a_problem() -> None:
    outputs = (("logits", "FP32", (-1, 10)), ("hidden", "FP32", (-1, 128)))
    assert signature_problems(interface(outputs=outputs), signature()) == []


def test_a_different_element_type_names_both_types() -> None:
    problems = signature_problems(interface(inputs=(("input", "FP16", (-1, 64)),)), signature())
    assert problems == ["input 'input': the artifact's type is FP16; the signature says FP32"]


@pytest.mark.parametrize(
    ("max_batch", "artifact_dims", "problem"),
    [
        (8, (-1, 64), None),
        (8, (-1, -1), None),  # the artifact accepts any width, including 64
        (8, (-1, 32), "differs from the signature's [batch, 64] at dimension 0 (32 vs 64)"),
        (8, (64,), "has rank 1; the signature says [batch, 64] (rank 2)"),
        (8, (4, 64), "fixes the batch dimension to 4; with maxBatchSize 8 it must be variable"),
        (1, (1, 64), None),
        (0, (64,), None),
        (0, (-1, 64), "has rank 2; the signature says [64] (rank 1)"),
    ],
)
def test_shapes_with_and_without_a_batch_dimension(max_batch, artifact_dims, problem) -> None:
    output = ("logits", "FP32", (-1, 10) if max_batch > 0 else (10,))
    problems = signature_problems(interface(inputs=(("input", "FP32", artifact_dims),), outputs=(output,)), signature(max_batch))
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problems[0].startswith("input 'input': ") and problem in problems[0]


def test_a_variable_signature_dim_needs_a_variable_input_but_not_output() -> None:
    sig = signature(
        inputs=[{"name": "ids", "dataType": "INT64", "dims": [-1]}],
        outputs=[{"name": "hidden", "dataType": "FP32", "dims": [-1, 32]}],
    )
    fixed = interface(inputs=(("ids", "INT64", (-1, 128)),), outputs=(("hidden", "FP32", (-1, 128, 32)),))
    assert signature_problems(fixed, sig) == [
        "input 'ids': the artifact's shape [-1, 128] fixes dimension 0 to 128; the signature declares it variable (-1) in [batch, -1]"
    ]
    free = interface(inputs=(("ids", "INT64", (-1, -1)),), outputs=(("hidden", "FP32", (-1, 128, 32)),))
    assert signature_problems(free, sig) == []


def test_an_artifact_without_shapes_is_checked_by_name_and_type_only() -> None:
    assert signature_problems(interface(inputs=(("input", "FP32", None),)), signature()) == []


def test_check_signature_raises_naming_the_first_tensor_and_counting_the_rest() -> None:
    broken = interface(inputs=(("x", "FP32", (-1, 64)),), outputs=(("y", "FP32", (-1, 10)),))
    with pytest.raises(SignatureMismatch) as raised:
        check_signature(broken, signature())
    text = str(raised.value)
    assert text.startswith("the artifact does not match the Model's signature: input 'input'")
    assert "and 2 more" in text and "output 'logits'" in text and "input 'x'" in text


def test_the_interface_round_trips_through_the_report() -> None:
    original = interface(inputs=(("input", "FP32", (-1, 64)), ("mask", "INT64", None)), defaults=("mask",))
    assert Interface.from_dict(original.to_dict()) == original


def test_read_interface_of_a_real_onnx_file(tmp_path: Path) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["ids", "bias"], ["out"])],
        "g",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 16]),
            helper.make_tensor_value_info("bias", TensorProto.INT64, [16]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.INT64, ["batch", 16])],
        [onnx.numpy_helper.from_array(np.zeros(16, np.int64), "bias")],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), str(path))
    from modelops.compress.runtime import read_interface

    found = read_interface(path)
    assert found.inputs == (Tensor("ids", "INT64", (-1, 16)), Tensor("bias", "INT64", (16,), True))
    assert found.outputs == (Tensor("out", "INT64", (-1, 16)),)
    sig = signature(
        inputs=[{"name": "ids", "dataType": "INT64", "dims": [16]}],
        outputs=[{"name": "out", "dataType": "INT64", "dims": [16]}],
    )
    assert signature_problems(found, sig) == []


def test_the_operator_reuses_a_cached_entry_only_when_its_interface_matches_the_signature() -> None:
    from modelops.core.versions import interface_matches

    assert interface_matches(interface().to_dict(), signature())
    renamed = interface(outputs=(("scores", "FP32", (-1, 10)),)).to_dict()
    assert not interface_matches(renamed, signature()), "the Job decides, and Rejects it"
    assert not interface_matches(None, signature()), "no recorded interface"
