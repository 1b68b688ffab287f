"""The model fetcher: argument checks, failure classification, the termination message, and
the repository it leaves behind (with an in-memory object store standing in for S3)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from modelops.contract.exitcodes import ExitCode
from modelops.fetch import (
    CONFIG_ENV,
    TERMINATION_LOG_ENV,
    TERMINATION_MESSAGE_LIMIT,
    UNEXPECTED_FAILURE,
    FetchFailure,
    UsageError,
    classify_failure,
    main,
    one_line,
    parse_request,
)
from modelops.storage import (
    AccessDenied,
    ChecksumMismatch,
    InvalidS3Uri,
    ObjectNotFound,
    StorageError,
    StorageUnreachable,
    TransferResult,
)

pytestmark = pytest.mark.unit

ARTIFACT = b"\x08\x07onnx model bytes"
DIGEST = hashlib.sha256(ARTIFACT).hexdigest()
URI = "s3://models/digits/model.onnx"


def _argv(**changes: str) -> list[str]:
    args = {
        "uri": URI,
        "sha256": DIGEST,
        "model-name": "digits",
        "version": "3",
        "backend": "python",
        "repository": "/models",
    }
    args.update(changes)
    return [part for key, value in args.items() for part in (f"--{key}", value)]


ENV = {CONFIG_ENV: 'name: "digits"\n'}


def test_parse_request_normalizes_the_digest() -> None:
    request = parse_request(_argv(sha256=DIGEST.upper()), ENV)
    assert (request.uri, request.sha256, request.model_name, request.version, request.backend) == (
        URI, DIGEST, "digits", 3, "python"
    )
    assert request.repository == Path("/models")
    assert request.config_text == 'name: "digits"\n'


@pytest.mark.parametrize(
    ("argv", "environ", "names"),
    [
        (_argv(uri="https://models/x"), ENV, "--uri"),
        (_argv(uri="s3://models"), ENV, "--uri"),
        (_argv(sha256="abc"), ENV, "--sha256"),
        (_argv(version="two"), ENV, "--version"),
        (_argv(version="0"), ENV, "--version"),
        (_argv(**{"model-name": "../x"}), ENV, "--model-name"),
        (_argv(backend="tensorrt"), ENV, "--backend"),
        (_argv()[:-2], ENV, "--repository"),
        (_argv(), {}, CONFIG_ENV),
        (_argv(), {CONFIG_ENV: "  \n"}, CONFIG_ENV),
    ],
)
def test_bad_arguments_name_the_argument(argv, environ, names) -> None:
    with pytest.raises(UsageError, match=names):
        parse_request(argv, environ)


@pytest.mark.parametrize(
    ("error", "code", "reason"),
    [
        (UsageError("--uri: bad"), ExitCode.USAGE, "InvalidArguments"),
        (InvalidS3Uri("uri 'x': must start with s3://"), ExitCode.USAGE, "InvalidArguments"),
        (ChecksumMismatch(URI, DIGEST, "0" * 64), ExitCode.BAD_ARTIFACT, "ChecksumMismatch"),
        (ObjectNotFound(f"{URI} does not exist"), ExitCode.BAD_ARTIFACT, "ArtifactNotFound"),
        (AccessDenied("access denied"), ExitCode.USAGE, "AccessDenied"),
        (StorageUnreachable("connect timeout"), ExitCode.TRANSIENT, "StorageUnreachable"),
        (StorageError("odd"), ExitCode.USAGE, "StorageError"),
        (OSError(28, "No space left on device"), ExitCode.TRANSIENT, "RepositoryWriteFailed"),
        (KeyError("surprise"), UNEXPECTED_FAILURE, "FetchFailed"),
    ],
)
def test_failures_are_classified(error, code, reason) -> None:
    failure = classify_failure(error)
    assert (failure.exit_code, failure.reason) == (code, reason)
    assert isinstance(failure, FetchFailure)


def test_checksum_message_names_both_digests() -> None:
    failure = classify_failure(ChecksumMismatch(URI, DIGEST, "f" * 64))
    line = one_line(failure.reason, failure.message)
    assert line.startswith("ChecksumMismatch: ")
    assert DIGEST in line and "f" * 64 in line


def test_one_line_flattens_and_bounds_the_message() -> None:
    assert one_line("StorageUnreachable", "endpoint\n  down\ttoday") == "StorageUnreachable: endpoint down today"
    long = one_line("FetchFailed", "é" * 5000)
    assert "\n" not in long
    assert len(long.encode("utf-8")) <= TERMINATION_MESSAGE_LIMIT
    assert long.endswith("...")


class MemoryStore:
    """Stands in for modelops.storage.ObjectStore.download: same signature and errors."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects
        self.downloads: list[Path] = []

    def download(self, uri: str, dest_path, expected_sha256: str | None = None) -> TransferResult:
        if uri not in self.objects:
            raise ObjectNotFound(f"{uri} does not exist")
        data = self.objects[uri]
        actual = hashlib.sha256(data).hexdigest()
        if expected_sha256 is not None and actual != expected_sha256:
            raise ChecksumMismatch(uri, expected_sha256, actual)
        Path(dest_path).parent.mkdir(parents=True, exist_ok=True)
        Path(dest_path).write_bytes(data)
        self.downloads.append(Path(dest_path))
        return TransferResult(sha256=actual, size=len(data))


    def read_bytes(self, uri: str) -> bytes:
        if uri not in self.objects:
            raise ObjectNotFound(f"{uri} does not exist")
        return self.objects[uri]


def _run(tmp_path: Path, store: MemoryStore, env: dict[str, str] | None = None, **changes: str) -> tuple[int, str, Path]:
    repo = tmp_path / "models"
    log = tmp_path / "termination-log"
    environ = {**ENV, TERMINATION_LOG_ENV: str(log), **(env or {})}
    code = main(_argv(repository=str(repo), **changes), environ, store_factory=lambda config: store)
    return code, log.read_text(), repo


def _tree(repo: Path) -> list[str]:
    return sorted(str(p.relative_to(repo)) for p in repo.rglob("*"))


def test_fetch_lays_out_the_verified_artifact(tmp_path: Path) -> None:
    store = MemoryStore({URI: ARTIFACT})
    code, log, repo = _run(tmp_path, store)
    assert code == ExitCode.SUCCESS
    assert _tree(repo) == ["digits", "digits/3", "digits/3/model.onnx", "digits/3/model.py", "digits/config.pbtxt"]
    assert (repo / "digits/3/model.onnx").read_bytes() == ARTIFACT
    assert (repo / "digits/config.pbtxt").read_text() == ENV[CONFIG_ENV]
    assert DIGEST in log and "\n" not in log.rstrip("\n")
    # The download went to a staging folder inside the repository (same filesystem: a rename).
    assert store.downloads[0].parent.parent == repo


def test_digest_mismatch_serves_nothing(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    # Leftovers of an interrupted earlier attempt must go too: Triton loads every folder.
    (repo / ".staging-download-old").mkdir(parents=True)
    (repo / "digits" / "3").mkdir(parents=True)
    store = MemoryStore({URI: ARTIFACT + b"tampered"})
    code, log, repo = _run(tmp_path, store)
    assert code == ExitCode.BAD_ARTIFACT
    assert log.startswith("ChecksumMismatch: ") and log.count("\n") == 1
    assert f"expected {DIGEST}" in log
    assert _tree(repo) == []


def test_missing_object_serves_nothing(tmp_path: Path) -> None:
    code, log, repo = _run(tmp_path, MemoryStore({}))
    assert code == ExitCode.BAD_ARTIFACT
    assert log.startswith("ArtifactNotFound: ") and URI in log
    assert _tree(repo) == []


def test_pytorch_backend_gets_model_pt(tmp_path: Path) -> None:
    code, _, repo = _run(tmp_path, MemoryStore({URI: ARTIFACT}), backend="pytorch")
    assert code == ExitCode.SUCCESS
    assert _tree(repo) == ["digits", "digits/3", "digits/3/model.pt", "digits/config.pbtxt"]


def test_usage_error_is_reported_in_the_termination_log(tmp_path: Path) -> None:
    code, log, _ = _run(tmp_path, MemoryStore({URI: ARTIFACT}), sha256="xyz")
    assert code == ExitCode.USAGE
    assert log.startswith("InvalidArguments: --sha256")


DATA = b"external weights " * 100
FOLDER = "s3://models/out/key/"


def _files(**overrides: bytes) -> tuple[dict[str, bytes], str]:
    objects = {FOLDER + "model.onnx": ARTIFACT, FOLDER + "model.onnx.data": DATA, FOLDER + "extra/part-1.bin": b"more"}
    listed = json.dumps([{"path": uri[len(FOLDER):], "sha256": hashlib.sha256(body).hexdigest()} for uri, body in objects.items()])
    objects.update({FOLDER + path: body for path, body in overrides.items()})
    return objects, listed


def test_a_file_set_is_laid_out_with_every_file_verified(tmp_path: Path) -> None:
    objects, listed = _files()
    code, log, repo = _run(tmp_path, MemoryStore(objects), uri=FOLDER + "model.onnx", **{"files-json": listed})
    assert code == ExitCode.SUCCESS, log
    assert _tree(repo) == [
        "digits", "digits/3", "digits/3/extra", "digits/3/extra/part-1.bin", "digits/3/model.onnx",
        "digits/3/model.onnx.data", "digits/3/model.py", "digits/config.pbtxt",
    ]
    assert (repo / "digits/3/model.onnx.data").read_bytes() == DATA
    assert "3 files" in log and "each verified by its sha256" in log


def test_a_tampered_file_of_a_set_serves_nothing_and_is_named(tmp_path: Path) -> None:
    objects, listed = _files(**{"model.onnx.data": DATA + b"!"})
    code, log, repo = _run(tmp_path, MemoryStore(objects), uri=FOLDER + "model.onnx", **{"files-json": listed})
    assert code == ExitCode.BAD_ARTIFACT
    assert log.startswith("ChecksumMismatch: ") and "'model.onnx.data' (--files-json[1])" in log
    assert _tree(repo) == []


def test_a_directory_is_laid_out_as_uploaded(tmp_path: Path) -> None:
    objects, listed = _files()
    code, log, repo = _run(tmp_path, MemoryStore(objects), uri=FOLDER, **{"files-json": listed})
    assert code == ExitCode.SUCCESS, log
    assert (repo / "digits/3/extra/part-1.bin").read_bytes() == b"more"


@pytest.mark.parametrize(
    ("listed", "says"),
    [
        ('[{"path": "../x", "sha256": "' + "ab" * 32 + '"}]', "relative path"),
        ('[{"path": "model.onnx", "sha256": "' + "ab" * 32 + '"}, {"path": "model.onnx", "sha256": "' + "ab" * 32 + '"}]', "listed twice"),
        ('[{"path": "other.onnx", "sha256": "' + "ab" * 32 + '"}]', "not among the files"),
        ("[]", "no files"),
        ("{", "--files-json"),
    ],
)
def test_a_bad_file_list_is_a_usage_error(tmp_path: Path, listed: str, says: str) -> None:
    code, log, _ = _run(tmp_path, MemoryStore({}), uri=FOLDER + "model.onnx", **{"files-json": listed})
    assert code == ExitCode.USAGE and says in log, log


SIG_URI = "s3://models/digits/model.onnx.sig"


def _keys() -> tuple[bytes, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from modelops import provenance

    key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key, provenance.public_key_pem(key).decode()


def test_an_artifact_signed_by_the_operator_is_laid_out(tmp_path: Path) -> None:
    from modelops import provenance

    key, public = _keys()
    bundle = provenance.sign(key, "model.onnx", [provenance.FileDigest("model.onnx", DIGEST)])
    store = MemoryStore({URI: ARTIFACT, SIG_URI: bundle})
    code, _, repo = _run(tmp_path, store, {"MODELOPS_SIGNER_KEY": public}, **{"signature-uri": SIG_URI})
    assert code == ExitCode.SUCCESS and (repo / "digits/3/model.onnx").read_bytes() == ARTIFACT


def test_a_signature_by_another_key_serves_nothing(tmp_path: Path) -> None:
    """The artifact and its status were replaced together: the digest matches, the signature does not."""
    from modelops import provenance

    key, _ = _keys()
    _, operator_public = _keys()
    bundle = provenance.sign(key, "model.onnx", [provenance.FileDigest("model.onnx", DIGEST)])
    store = MemoryStore({URI: ARTIFACT, SIG_URI: bundle})
    code, log, repo = _run(tmp_path, store, {"MODELOPS_SIGNER_KEY": operator_public}, **{"signature-uri": SIG_URI})
    assert code == ExitCode.BAD_ARTIFACT
    assert log.startswith(f"UntrustedSigner: {SIG_URI}: signed by key sha256:") and _tree(repo) == []


def test_a_signature_uri_without_the_key_is_a_usage_error(tmp_path: Path) -> None:
    code, log, _ = _run(tmp_path, MemoryStore({URI: ARTIFACT}), **{"signature-uri": SIG_URI})
    assert code == ExitCode.USAGE and log.startswith("InvalidArguments: MODELOPS_SIGNER_KEY")


def test_a_signed_file_set_is_verified_by_every_path_before_it_is_laid_out(tmp_path: Path) -> None:
    """The operator signs a compressed file set by the paths its record lists; the fetcher checks
    the same list, so a signature over other files (or another key) serves nothing."""
    from modelops import provenance

    objects, listed = _files()
    files = [provenance.FileDigest(f["path"], f["sha256"]) for f in json.loads(listed)]
    key, public = _keys()
    sig = FOLDER + "model.onnx.sig"
    args = {"uri": FOLDER + "model.onnx", "files-json": listed, "signature-uri": sig}
    good = MemoryStore({**objects, sig: provenance.sign(key, "model.onnx", files)})
    code, log, repo = _run(tmp_path / "good", good, {"MODELOPS_SIGNER_KEY": public}, **args)
    assert code == ExitCode.SUCCESS, log
    assert (repo / "digits/3/model.onnx.data").read_bytes() == DATA

    partial = MemoryStore({**objects, sig: provenance.sign(key, "model.onnx", files[:1])})
    code, log, repo = _run(tmp_path / "partial", partial, {"MODELOPS_SIGNER_KEY": public}, **args)
    assert code == ExitCode.BAD_ARTIFACT and _tree(repo) == [], log
    assert "model.onnx.data" in log
