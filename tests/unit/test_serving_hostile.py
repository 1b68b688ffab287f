"""Generated API objects, hostile where the schema lets them be, rendered into config.pbtxt
and laid out by the fetcher: the config parses as Triton's ModelConfig with the tensors as
given, and nothing is written outside the model repository."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import text_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from tritonclient.grpc import model_config_pb2

from modelops.api.deployment import Backend, TritonSpec
from modelops.api.model import DataType, Signature
from modelops.api.types import DNS_SUBDOMAIN_RULE, S3_URI, TENSOR_NAME_RULE, URI_MAX
from modelops.fetch import CONFIG_ENV, TERMINATION_LOG_ENV, main
from modelops.serving import ServedModel, ServingConfigError, render_config_pbtxt
from modelops.storage import TransferResult

pytestmark = pytest.mark.unit

HOSTILE = ["../x", "..", "/etc/passwd", 'a"b', "a\\b", "a\nb", "a\x00b", "}\ninput [", "a b", "x/../../y", ".", ""]

tensor_names = st.one_of(st.from_regex(TENSOR_NAME_RULE.replace("$", r"\Z"), fullmatch=True).filter(lambda s: len(s) <= 256),
                         st.sampled_from(HOSTILE), st.text(max_size=12))
dims = st.lists(st.one_of(st.just(-1), st.integers(1, 2**31 - 1), st.integers(-5, 0)), min_size=0, max_size=4)
model_names = st.one_of(st.from_regex(DNS_SUBDOMAIN_RULE, fullmatch=True).filter(lambda s: len(s) <= 253),
                        st.sampled_from(HOSTILE))


def tensors(min_size: int = 1) -> st.SearchStrategy[list[dict[str, Any]]]:
    return st.lists(
        st.fixed_dictionaries({"name": tensor_names, "dataType": st.sampled_from(list(DataType)), "dims": dims}),
        min_size=min_size, max_size=3,
    )


signatures = st.fixed_dictionaries(
    {"inputs": tensors(), "outputs": tensors(), "maxBatchSize": st.integers(-1, 70_000)}
)
tritons = st.fixed_dictionaries({
    "backend": st.sampled_from(list(Backend)),
    "dynamicBatching": st.fixed_dictionaries({
        "enabled": st.booleans(),
        "preferredBatchSizes": st.lists(st.integers(-1, 70_000), max_size=3),
        "maxQueueDelayMicroseconds": st.integers(-1, 10**9),
    }),
    "instanceGroups": st.lists(
        st.fixed_dictionaries({"count": st.integers(0, 70), "kind": st.sampled_from(["KIND_CPU", "KIND_GPU", "KIND_TPU"])}),
        max_size=3,
    ),
})


class FakeStore:
    """The storage adapter's download: writes the object to where the fetcher asks."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def download(self, uri: str, dest_path: Any, expected_sha256: str | None = None) -> TransferResult:
        Path(dest_path).write_bytes(self.data)
        return TransferResult(sha256=hashlib.sha256(self.data).hexdigest(), size=len(self.data))


def files_under(root: Path) -> set[Path]:
    return {Path(dirpath) / name for dirpath, dirnames, names in os.walk(root) for name in names + dirnames}


@settings(max_examples=150, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(name=model_names, version=st.integers(-1, 2**31), signature=signatures, triton=tritons, gpus=st.integers(0, 4),
       uri_key=st.one_of(st.sampled_from(HOSTILE), st.text(max_size=20)))
def test_accepted_objects_render_and_lay_out_inside_the_repository(
    name: str, version: int, signature: dict[str, Any], triton: dict[str, Any], gpus: int, uri_key: str
) -> None:
    try:
        parsed_signature = Signature.model_validate(signature)
        parsed_triton = TritonSpec.model_validate(triton)
    except ValidationError:
        return  # the apiserver refuses these too (tests/integration/test_hostile_manifests.py)
    try:
        served = ServedModel(name, version, parsed_signature, parsed_triton, gpus)
    except ServingConfigError as error:
        assert str(error).startswith(f"{error.field_name}: ")
        return  # the operator reports InvalidServingConfig with this field
    text = render_config_pbtxt(served)
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert config.name == name
    assert [t.name for t in config.input] == [t.name for t in parsed_signature.inputs]
    assert [t.name for t in config.output] == [t.name for t in parsed_signature.outputs]
    assert [list(t.dims) for t in config.input] == [t.dims for t in parsed_signature.inputs]
    assert list(config.version_policy.specific.versions) == [version]

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        repo = root / "parent" / "models"
        outside = root / "parent" / "sibling"
        outside.mkdir(parents=True)
        candidate = f"s3://models/{uri_key}"
        uri = candidate if len(candidate) <= URI_MAX and S3_URI.holds(candidate) else "s3://models/k/model.onnx"
        log = root / "termination-log"
        environ = {CONFIG_ENV: text, TERMINATION_LOG_ENV: str(log)}
        argv = ["--uri", uri, "--sha256", "ab" * 32, "--model-name", name, "--version", str(version),
                "--backend", str(parsed_triton.backend), "--repository", str(repo)]
        code = main(argv, environ, store_factory=lambda config: FakeStore(b"model bytes"))
        written = files_under(root)
        assert all(repo in p.parents or p in (repo, log, root / "parent", outside) for p in written), written
        assert not any(outside.iterdir())
        if code == 0:
            served_file = "model.pt" if parsed_triton.backend == Backend.PYTORCH else "model.onnx"
            assert (repo / name / str(version) / served_file).read_bytes() == b"model bytes"
            assert (repo / name / "config.pbtxt").read_text() == text
