"""TorchScript and ExportedProgram artifacts: load, prune, cast, export to ONNX or TorchScript."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modelops.compress import weights as W
from modelops.compress.recipe import Recipe

ONNX_OPSET = 17
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


class TorchLoadError(ValueError):
    """The file is not a loadable TorchScript module or ExportedProgram."""


def load(path: Path, source_format: str, device: str) -> tuple[torch.nn.Module, list[str], np.ndarray | None]:
    """Load the artifact; returns (module in eval mode on `device`, input names, an example batch or None)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
            if source_format == "torchscript":
                module = torch.jit.load(str(path), map_location=device)
                names = [a.name for a in module.forward.schema.arguments[1:]]
                return module.eval(), names, None
            program = torch.export.load(str(path))
    except Exception as exc:  # noqa: BLE001 - any load failure means the file is not what it claims
        raise TorchLoadError(f"cannot load {source_format} artifact: {type(exc).__name__}: {exc}") from exc
    if device != "cpu":
        from torch.export.passes import move_to_device_pass

        program = move_to_device_pass(program, device)
    names = list(program.graph_signature.user_inputs)
    example = _exported_example(program, names)
    return program.module(), names, example


def _exported_example(program: Any, names: list[str]) -> np.ndarray | None:
    """A zero batch from the program's recorded input shape (symbolic dimensions set to 2)."""
    placeholders = {node.name: node for node in program.graph.nodes if node.op == "placeholder"}
    if len(names) != 1 or names[0] not in placeholders:
        return None
    value = placeholders[names[0]].meta.get("val")
    if value is None:
        return None
    shape = [int(d) if isinstance(d, int) else 2 for d in value.shape]
    return np.zeros(shape, dtype=torch.empty(0, dtype=value.dtype).numpy().dtype)


def prune(module: torch.nn.Module, recipe: Recipe) -> int:
    """Prune every weight (parameters with 2+ dimensions; output channels on axis 0) in place."""
    pruned = 0
    if recipe.pruning_method == "none":
        return pruned
    with torch.no_grad():
        for _, parameter in module.named_parameters():
            if parameter.ndim < 2 or not parameter.dtype.is_floating_point:
                continue
            values = parameter.detach().float().cpu().numpy()
            if recipe.pruning_method == "unstructured":
                values = W.prune_unstructured(values, recipe.pruning_amount)
            else:
                values = W.prune_structured(values, recipe.pruning_amount, axis=0)
            parameter.copy_(torch.from_numpy(values).to(parameter.device, parameter.dtype))
            pruned += 1
    return pruned


def export_onnx(
    module: torch.nn.Module, example: np.ndarray, path: Path, input_names: list[str], output_names: list[str]
) -> None:
    """Export to ONNX with a dynamic batch dimension (TorchScript-based exporter)."""
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    batch = (torch.from_numpy(example).to(device),)
    dynamic = {name: {0: "batch"} for name in [*input_names, *output_names]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notices of the TorchScript tooling
        traced = module if isinstance(module, torch.jit.ScriptModule) else torch.jit.trace(module, batch)
        torch.onnx.export(
            traced,
            batch,
            str(path),
            input_names=input_names,
            output_names=output_names,
            dynamic_axes=dynamic,
            opset_version=ONNX_OPSET,
            dynamo=False,
        )


class _CastAround(torch.nn.Module):
    """Run `inner` in a narrow float type while keeping float32 inputs and outputs."""

    def __init__(self, inner: torch.nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.inner = inner.to(dtype)
        self.dtype = dtype

    def forward(self, *inputs: torch.Tensor) -> Any:
        cast = [x.to(self.dtype) if x.is_floating_point() else x for x in inputs]
        output = self.inner(*cast)
        if isinstance(output, (tuple, list)):
            return tuple(o.float() if o.is_floating_point() else o for o in output)
        return output.float()


def save_torchscript(module: torch.nn.Module, recipe: Recipe, example: np.ndarray, path: Path) -> None:
    """Save as TorchScript; fp16/bf16 run the whole model in that type behind float32 edges."""
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    if recipe.quantization in _DTYPES:
        module = _CastAround(module, _DTYPES[recipe.quantization])
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # deprecation notices of the TorchScript tooling
        if isinstance(module, torch.jit.ScriptModule):
            traced = module
        else:
            traced = torch.jit.trace(module, (torch.from_numpy(example).to(device),))
        torch.jit.save(traced, str(path))


def load_saved_torchscript(path: Path, device: str) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location=device).eval()
