"""The tensor interface of an ONNX artifact, and its comparison with the Model's signature.

Triton is configured from the Model's signature, not from the artifact, so an artifact whose
names, element types or shapes differ would be rolled out and then fail at load or on every
request. The Job compares the two first and Rejects the version with SignatureMismatch,
naming the tensor.

This module is pure, so the operator may use it too (import-linter keeps onnx out of it);
`runtime.read_interface` reads an artifact's interface.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelops.api.model import Signature, TensorSpec

VARIABLE = -1

# ONNX TensorProto element types in Triton's naming (the signature's dataType).
ONNX_TO_TRITON = {
    1: "FP32",
    2: "UINT8",
    3: "INT8",
    5: "INT16",
    6: "INT32",
    7: "INT64",
    8: "STRING",
    9: "BOOL",
    10: "FP16",
    11: "FP64",
    16: "BF16",
}


class SignatureMismatch(ValueError):
    """The artifact's tensors are not the ones the Model's signature declares."""


@dataclass(frozen=True)
class Tensor:
    """One graph input or output: dims are None when the artifact records no shape."""

    name: str
    data_type: str
    dims: tuple[int, ...] | None
    has_default: bool = False  # an input that also has an initializer, so feeding it is optional

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dataType": self.data_type, "dims": None if self.dims is None else list(self.dims)}


@dataclass(frozen=True)
class Interface:
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": [t.to_dict() | ({"hasDefault": True} if t.has_default else {}) for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Interface:
        def tensors(items: list[dict[str, Any]]) -> tuple[Tensor, ...]:
            return tuple(
                Tensor(
                    item["name"],
                    item["dataType"],
                    None if item.get("dims") is None else tuple(item["dims"]),
                    bool(item.get("hasDefault", False)),
                )
                for item in items
            )

        return cls(tensors(data["inputs"]), tensors(data["outputs"]))


def _dims_problem(kind: str, spec: TensorSpec, actual: Tensor, max_batch_size: int) -> str | None:
    if actual.dims is None:
        return None  # the artifact does not say; onnxruntime checks at run time
    declared = list(spec.dims)
    shown = ("[batch, " + ", ".join(map(str, declared)) + "]") if max_batch_size > 0 else str(declared)
    expected_rank = len(declared) + (1 if max_batch_size > 0 else 0)
    where = f"{kind} {spec.name!r}: the artifact's shape {list(actual.dims)}"
    if len(actual.dims) != expected_rank:
        return f"{where} has rank {len(actual.dims)}; the signature says {shown} (rank {expected_rank})"
    dims = list(actual.dims)
    if max_batch_size > 0:
        batch = dims.pop(0)
        # Triton sends any batch from 1 to maxBatchSize, so the artifact's first dimension must be free.
        if batch != VARIABLE and not (max_batch_size == 1 and batch == 1):
            return f"{where} fixes the batch dimension to {batch}; with maxBatchSize {max_batch_size} it must be variable"
    for axis, (want, have) in enumerate(zip(declared, dims, strict=True)):
        if want == have or have == VARIABLE:
            continue
        if want == VARIABLE and kind == "output":
            continue  # Triton accepts any size for an output declared variable
        if want == VARIABLE:
            return f"{where} fixes dimension {axis} to {have}; the signature declares it variable (-1) in {shown}"
        return f"{where} differs from the signature's {shown} at dimension {axis} ({have} vs {want})"
    return None


def signature_problems(interface: Interface, signature: Signature) -> list[str]:
    """Every difference that would break serving, each naming its tensor; empty when they agree.

    Inputs with a default value (an initializer of the same name) may be left out of the
    signature; outputs the signature does not name are simply not served.
    """
    problems: list[str] = []
    for kind, declared, actual in (
        ("input", signature.inputs, interface.inputs),
        ("output", signature.outputs, interface.outputs),
    ):
        by_name = {t.name: t for t in actual}
        for spec in declared:
            tensor = by_name.get(spec.name)
            if tensor is None:
                names = ", ".join(repr(t.name) for t in actual) or "none"
                problems.append(f"{kind} {spec.name!r}: the signature names it but the artifact has no such {kind} (it has {names})")
                continue
            if tensor.data_type != spec.data_type:
                problems.append(f"{kind} {spec.name!r}: the artifact's type is {tensor.data_type}; the signature says {spec.data_type}")
                continue
            problem = _dims_problem(kind, spec, tensor, signature.max_batch_size)
            if problem:
                problems.append(problem)
    declared_inputs = {t.name for t in signature.inputs}
    for tensor in interface.inputs:
        if tensor.name not in declared_inputs and not tensor.has_default:
            problems.append(f"input {tensor.name!r}: the artifact needs it but the signature does not name it")
    return problems


def check_signature(interface: Interface, signature: Signature, what: str = "the artifact") -> None:
    problems = signature_problems(interface, signature)
    if problems:
        more = f" (and {len(problems) - 1} more: {'; '.join(problems[1:])})" if len(problems) > 1 else ""
        raise SignatureMismatch(f"{what} does not match the Model's signature: {problems[0]}{more}")
