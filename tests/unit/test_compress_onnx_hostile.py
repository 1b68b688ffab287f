"""Hostile ONNX files: the stream reader refuses them with OnnxFormatError (the Job's
UnreadableArtifact), and reads or writes nothing outside the model's own folder.

The fuzz test feeds the reader random bytes, mutated real models and models with hostile
shapes and external-data paths, a fixed number of inputs with a deadline per input, so that
`make test` stays bounded and a hang fails."""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from modelops.compress.job import _classify
from modelops.compress.onnx_stream import OnnxFile, OnnxFormatError
from modelops.contract.report import JobReason

pytestmark = pytest.mark.unit

FUZZ_EXAMPLES = 300  # per strategy; three strategies
FUZZ_DEADLINE = timedelta(seconds=2)


class _Opens:
    """Every path opened (open, os.open, io.open) while `watching` is set, from an audit hook:
    hooks cannot be removed, so one is installed for the process and switched on and off."""

    def __init__(self) -> None:
        self.watching = False
        self.paths: list[tuple[str, str | None, int]] = []
        sys.addaudithook(self._hook)

    def _hook(self, event: str, args: tuple) -> None:
        if self.watching and event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            path = os.fsdecode(args[0])
            self.paths.append((path, args[1], args[2] if len(args) > 2 and isinstance(args[2], int) else 0))


OPENS = _Opens()
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _model(initializers: list[TensorProto]) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _external(name: str, dims: list[int], location: str, offset: int = 0, length: int | None = None) -> TensorProto:
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=dims, data_location=TensorProto.EXTERNAL)
    entries = {"location": location, "offset": str(offset), **({"length": str(length)} if length is not None else {})}
    for key, value in entries.items():
        tensor.external_data.add(key=key, value=value)
    return tensor


def _valid_bytes() -> bytes:
    weights = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(3, 4), "w")
    return _model([weights, numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "shape")]).SerializeToString()


VALID = _valid_bytes()


@pytest.fixture
def sandbox(tmp_path: Path) -> tuple[Path, Path]:
    """A work folder with the model's companions, next to a secret it must never reach."""
    outside = tmp_path / "outside.bin"
    outside.write_bytes(np.arange(64, dtype=np.float32).tobytes())
    work = tmp_path / "work"
    work.mkdir()
    (work / "ext.data").write_bytes(np.ones(16, dtype=np.float32).tobytes())
    (work / "link.data").symlink_to(outside)
    return work, outside


def read_everything(work: Path, payload: bytes) -> str:
    """Open the payload as a model in `work` and read every tensor; 'ok' or 'refused'. Any other
    exception, an open outside `work`, or an open for writing fails the test."""
    path = work / "model.onnx"
    path.write_bytes(payload)
    before = sorted(p.name for p in work.parent.iterdir())
    OPENS.paths.clear()
    OPENS.watching = True
    try:
        with OnnxFile(path) as model:
            for tensor in model.initializers:
                tensor.array()
                tensor.encoded()
                tensor.release()
        outcome = "ok"
    except OnnxFormatError:
        outcome = "refused"
    finally:
        OPENS.watching = False
    root = work.resolve()
    for opened, mode, flags in OPENS.paths:
        assert Path(opened).resolve().is_relative_to(root), f"opened {opened} outside the work folder"
        assert not (flags & _WRITE_FLAGS) and "w" not in (mode or "") and "a" not in (mode or ""), (opened, mode, flags)
    assert sorted(p.name for p in work.parent.iterdir()) == before
    return outcome


@pytest.mark.parametrize(
    ("tensor", "complaint"),
    [
        (_external("w", [4], "../outside.bin"), "not a plain relative path"),
        (_external("w", [4], "/etc/passwd"), "not a plain relative path"),
        (_external("w", [4], "sub/../../outside.bin"), "not a plain relative path"),
        (_external("w", [4], "link.data"), "leaves the model's folder"),
        (_external("w", [4], "absent.data"), "cannot be read"),
        (_external("w", [1 << 40], "ext.data"), "claims"),
        (_external("w", [4], "ext.data", offset=60), "claims"),
        (_external("w", [4], "ext.data", length=7), "claims"),
        (TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1 << 31, 1 << 31], raw_data=b"\0" * 16), "impossible shape"),
        (TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1 << 20, 1 << 20], raw_data=b"\0" * 16), "claims shape"),
        (TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[0, 1 << 40, 1 << 40], raw_data=b""), "impossible shape"),
        (TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1 << 20, 4], float_data=[1.0]), "claims shape"),
        (TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1] * 40, raw_data=b"\0" * 4), "dimensions, more than"),
        (TensorProto(name="w", data_type=999, dims=[1], raw_data=b"\0" * 4), "unknown data type"),
    ],
    ids=["dotdot", "absolute", "nested-dotdot", "symlink-out", "missing", "huge-external", "past-the-end",
         "wrong-length", "impossible-raw", "huge-raw", "empty-but-impossible", "huge-typed", "deep-rank", "bad-type"],
)
def test_hostile_models_are_refused_and_read_nothing_outside(sandbox, tensor: TensorProto, complaint: str) -> None:
    work, _ = sandbox
    with pytest.raises(OnnxFormatError, match=complaint), OnnxFile(_write(work, _model([tensor]))) as model:
        for t in model.initializers:
            t.array()
    assert read_everything(work, _model([tensor]).SerializeToString()) == "refused"


def _write(work: Path, model: onnx.ModelProto) -> Path:
    path = work / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_a_good_external_tensor_inside_the_folder_is_read(sandbox) -> None:
    work, _ = sandbox
    with OnnxFile(_write(work, _model([_external("w", [16], "ext.data")]))) as model:
        np.testing.assert_array_equal(model.initializers[0].array(), np.ones(16, dtype=np.float32))


def test_a_hostile_model_is_an_unreadable_artifact_to_the_job() -> None:
    failure = _classify(OnnxFormatError("initializer 'w' claims shape (4,) but stores 1 bytes"))
    assert failure.reason == JobReason.UNREADABLE_ARTIFACT and failure.outcome == "Failed"


# -- fuzzing ---------------------------------------------------------------------------------------

_FUZZ = settings(
    max_examples=FUZZ_EXAMPLES, deadline=FUZZ_DEADLINE, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(VALID)
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        else:
            del data[at:]
    return bytes(data)


_DIMS = st.lists(st.one_of(st.integers(0, 8), st.integers(0, 2**63 - 1)), max_size=6)
_LOCATIONS = st.sampled_from(["ext.data", "link.data", "../outside.bin", "/etc/passwd", "absent", "", "a/../ext.data", "."])


@st.composite
def _structured(draw: st.DrawFn) -> bytes:
    tensors = []
    for index in range(draw(st.integers(1, 3))):
        dims = draw(_DIMS)
        data_type = draw(st.sampled_from([TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT4, TensorProto.STRING, 0, 77]))
        if draw(st.booleans()):
            tensors.append(_external(f"t{index}", dims, draw(_LOCATIONS), draw(st.integers(-8, 128)),
                                     draw(st.one_of(st.none(), st.integers(0, 128)))))
            tensors[-1].data_type = data_type
        else:
            tensors.append(TensorProto(name=f"t{index}", data_type=data_type, dims=dims, raw_data=draw(st.binary(max_size=64))))
    return _model(tensors).SerializeToString()


FUZZED: dict[str, dict[str, int]] = {}


@pytest.mark.parametrize("name", ["random-bytes", "mutated-model", "hostile-structure"])
def test_fuzzed_onnx_is_read_or_refused_and_stays_in_its_folder(sandbox, name: str) -> None:
    work, _ = sandbox
    strategy = {"random-bytes": st.binary(max_size=512), "mutated-model": _mutated(), "hostile-structure": _structured()}[name]
    counts = FUZZED.setdefault(name, {"ok": 0, "refused": 0})

    @_FUZZ
    @given(strategy)
    def check(payload: bytes) -> None:
        counts[read_everything(work, payload)] += 1

    check()
    tried = counts["ok"] + counts["refused"]
    print(f"\n[fuzz] {name}: {tried} inputs, {counts['ok']} read, {counts['refused']} refused")
    assert tried >= FUZZ_EXAMPLES // 2, counts  # hypothesis may stop early only when it runs out of inputs
    assert counts["refused"] > 0, counts
