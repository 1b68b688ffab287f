"""Train the digits classifier and export it in every artifact format the compressor accepts.

    python models/digits.py --out DIR

writes DIR/model.onnx, DIR/model.ts.pt (TorchScript), DIR/model.pt2 (torch.export
ExportedProgram) and DIR/eval.npz (held-out `inputs` float32 [N, 64], `labels` int64 [N]).
The data is scikit-learn's bundled 8×8 digits; pixels are scaled to [0, 1]. A fixed seed makes
the split and the weights reproducible. Training takes about a second on one CPU core.
"""

import argparse
import json
import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
HIDDEN = (256, 128)
ONNX_OPSET = 17


@dataclass(frozen=True)
class DigitsArtifacts:
    onnx: Path
    torchscript: Path
    exported_program: Path
    eval_npz: Path
    test_accuracy: float
    eval_samples: int


def load_split(seed: int, test_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    inputs = (digits.data / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    return train_test_split(inputs, labels, test_size=test_fraction, random_state=seed, stratify=labels)


def build(out_dir: Path | str, seed: int = 0, epochs: int = 40) -> DigitsArtifacts:
    import torch
    from torch import nn

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    x_train, x_test, y_train, y_test = load_split(seed)

    # The model is tiny: one thread avoids synchronisation that costs more than the math.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    width = x_train.shape[1]
    for hidden in HIDDEN:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    model = nn.Sequential(*layers, nn.Linear(width, 10))

    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    features, targets = torch.from_numpy(x_train), torch.from_numpy(y_train)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(features), generator=generator).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(features[batch]), targets[batch]).backward()
            optimizer.step()
    model.eval()
    torch.set_num_threads(threads)

    with torch.no_grad():
        predictions = model(torch.from_numpy(x_test)).argmax(dim=1).numpy()
    accuracy = float((predictions == y_test).mean())

    example = torch.from_numpy(x_test[:2])
    paths = DigitsArtifacts(
        onnx=out / "model.onnx",
        torchscript=out / "model.ts.pt",
        exported_program=out / "model.pt2",
        eval_npz=out / "eval.npz",
        test_accuracy=accuracy,
        eval_samples=len(y_test),
    )
    with warnings.catch_warnings():
        # The TorchScript-based exporter and torch.jit announce their deprecation on every call.
        warnings.simplefilter("ignore")
        _export_all(model, example, paths)
    np.savez(paths.eval_npz, inputs=x_test, labels=y_test)
    return paths


def _export_all(model: "torch.nn.Module", example: "torch.Tensor", paths: DigitsArtifacts) -> None:
    import torch

    torch.onnx.export(
        model,
        (example,),
        str(paths.onnx),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        opset_version=ONNX_OPSET,
        dynamo=False,
    )
    torch.jit.save(torch.jit.trace(model, example), str(paths.torchscript))
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(paths.exported_program))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="directory for the artifacts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args(argv)
    artifacts = build(args.out, seed=args.seed, epochs=args.epochs)
    json.dump({k: str(v) if isinstance(v, Path) else v for k, v in asdict(artifacts).items()}, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
