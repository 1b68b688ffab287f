"""Fetch exactly one model version into a Triton model repository.

Runs as the serving pod's init container:

    python -m modelops.fetch --uri s3://bucket/key --sha256 HEX --model-name NAME \\
        --version N --backend onnxruntime --repository /models \\
        [--files-json '[{"path": GRAPH, "sha256": HEX}, {"path": DATA, "sha256": HEX}, ...]']

With --files-json the artifact is a file set under the folder of --uri: the graph (--uri,
named by the backend's file name) and its external data, each verified by its own sha256 and
placed at its path in the version folder. A --uri that ends in '/' is a directory served as
uploaded: every file goes to its path, none is renamed.

config.pbtxt comes from MODELOPS_TRITON_CONFIG; storage settings from the usual
MODELOPS_S3_* and AWS_* variables. The object is streamed to disk with its sha256 checked on
the way, then the model folder is renamed into the repository. On any failure the repository
holds nothing for the model, the process exits non-zero, and one line saying why goes to
stderr and to the termination log (MODELOPS_TERMINATION_LOG, default /dev/termination-log),
where Kubernetes shows it as the container's termination message.

Exit codes are the compressor's (modelops.contract.exitcodes): 0 done, 2 usage or access
denied, 10 bad artifact (missing object or digest mismatch: retrying cannot help), 12 transient
(storage unreachable, disk trouble); 1 for anything unforeseen. With --signature-uri, the
artifact's model_signing bundle must verify with the key in MODELOPS_SIGNER_KEY (the operator's)
for the bytes read; otherwise exit 10 with the refusal's reason (UntrustedSigner, ...).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from modelops.api.deployment import Backend, FetchReason
from modelops.contract.exitcodes import ExitCode
from modelops.nodecache.layout import POD_REQUEST_PREFIX, FillRequest
from modelops.nodecache.reader import CacheReader, Hit
from modelops.serving.config import (
    ServingConfigError,
    artifact_filename,
    validate_model_name,
    validate_version,
)
from modelops.serving.layout import STAGING_PREFIX, Placement, layout_model_repository
from modelops.serving.triton import CONFIG_ENV
from modelops.storage import (
    AccessDenied,
    ChecksumMismatch,
    InvalidS3Uri,
    ObjectNotFound,
    ObjectStore,
    StorageConfig,
    StorageError,
    TLSVerificationFailed,
    parse_s3_uri,
    validate_sha256,
)
from modelops.transfer import TransferStats

# Anything not foreseen below; the operator treats it like a crash.
UNEXPECTED_FAILURE = 1

# The PEM public key that must have signed the bundle named by --signature-uri.
SIGNER_KEY_ENV = "MODELOPS_SIGNER_KEY"
# The node-local cache, mounted read-only, and how long to wait for its agent to fill it.
NODE_CACHE_ENV = "MODELOPS_NODECACHE_MOUNT"
NODE_CACHE_WAIT_ENV = "MODELOPS_NODECACHE_WAIT_SECONDS"
DEFAULT_NODE_CACHE_WAIT_SECONDS = 300.0
POD_UID_ENV = "MODELOPS_POD_UID"
TERMINATION_LOG_ENV = "MODELOPS_TERMINATION_LOG"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
# Kubernetes keeps at most 4096 bytes of a termination message.
TERMINATION_MESSAGE_LIMIT = 4096


class UsageError(ValueError):
    """The command line or environment is wrong; the message names the argument."""


@dataclass(frozen=True)
class FetchRequest:
    uri: str
    sha256: str
    model_name: str
    version: int
    backend: str
    repository: Path
    config_text: str
    # A file set's (path, sha256) pairs, relative to the folder of `uri`; empty for one file.
    files: tuple[tuple[str, str], ...] = ()

    @property
    def folder(self) -> str:
        return self.uri[: self.uri.rindex("/") + 1]

    @property
    def entry(self) -> str | None:
        """The path of the graph file in the set; None for a directory served as uploaded."""
        return None if self.uri.endswith("/") else self.uri[len(self.folder) :]
    signature_uri: str | None = None
    signer_key: bytes | None = None


@dataclass(frozen=True)
class FetchFailure:
    exit_code: int
    reason: str
    message: str


class SignatureRefused(Exception):
    """The artifact's signature does not verify with the operator's key; `reason` says how."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def verify_signature(request: FetchRequest, store: ObjectStore, files: Sequence[tuple[str, str]]) -> None:
    """The files read, as (path, sha256), must be the ones the operator's key signed: one file
    by its name, or every file of a set by its path."""
    if request.signature_uri is None or request.signer_key is None:
        return
    from modelops import provenance  # model_signing: loaded only where a signature is checked

    try:
        provenance.verify(
            store.read_bytes(request.signature_uri),
            [provenance.TrustedSigner("operator", public_key_pem=request.signer_key)],
            [provenance.FileDigest(path, digest) for path, digest in files],
        )
    except provenance.ProvenanceError as err:
        raise SignatureRefused(err.reason, f"{request.signature_uri}: {err}") from None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse would print usage and exit
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m modelops.fetch", description="Fetch one model version into a Triton repository.")
    parser.add_argument("--uri", required=True, help="s3:// URI of the artifact")
    parser.add_argument("--sha256", required=True, help="expected sha256 of the artifact (64 hex digits)")
    parser.add_argument("--model-name", required=True, help="Triton model name (folder in the repository)")
    parser.add_argument("--version", required=True, help="Triton version folder (positive integer)")
    parser.add_argument("--backend", required=True, choices=list(Backend), help="Triton backend")
    parser.add_argument("--repository", required=True, help="model repository directory")
    parser.add_argument("--files-json", help="a file set: [{path, sha256}] relative to the folder of --uri")
    parser.add_argument("--signature-uri", help="s3:// URI of the artifact's model_signing bundle, verified with $MODELOPS_SIGNER_KEY")
    return parser


def parse_files(text: str | None, uri: str) -> tuple[tuple[str, str], ...]:
    """--files-json as (path, sha256) pairs, each path checked as the apiserver checks them."""
    if text is None:
        if uri.endswith("/"):
            raise UsageError("--uri: a prefix ending in '/' needs --files-json")
        return ()
    from pydantic import TypeAdapter, ValidationError

    from modelops.api.version import ArtifactFile, path_problems

    try:
        files = TypeAdapter(list[ArtifactFile]).validate_python(json.loads(text))
    except (ValueError, ValidationError) as err:
        first = err.errors()[0] if isinstance(err, ValidationError) else None
        where = "" if first is None else ".".join(str(p) for p in first["loc"]) + ": "
        raise UsageError(f"--files-json: {where}{first['msg'] if first else err}") from None
    problem = path_problems([f.path for f in files], "--files-json") if files else "--files-json: no files"
    if problem is not None:
        raise UsageError(problem)
    pairs = tuple((f.path, f.sha256) for f in files)
    entry = None if uri.endswith("/") else uri[uri.rindex("/") + 1 :]
    if entry is not None and entry not in {path for path, _ in pairs}:
        raise UsageError(f"--files-json: the graph file {entry!r} of --uri is not among the files")
    return pairs


def parse_artifact_args(argv: Sequence[str]) -> tuple[str, str, tuple[tuple[str, str], ...]]:
    """The artifact a fetch command line names: (uri, sha256, files); UsageError when wrong."""
    args = _parser().parse_args(list(argv))
    return args.uri, args.sha256.strip(), parse_files(args.files_json, args.uri)


def cache_request(uri: str, sha256: str, files: tuple[tuple[str, str], ...], endpoint: str | None) -> FillRequest:
    """The artifact as the node cache names it: one file by its sha256, a set by its digest."""
    if files:
        folder = uri[: uri.rindex("/") + 1]
        entry = None if uri.endswith("/") else uri[len(folder) :]
        return FillRequest(folder, files, entry, is_set=True, endpoint=endpoint)
    return FillRequest(uri, ((uri.rsplit("/", 1)[1], sha256),), None, is_set=False, endpoint=endpoint)


def parse_request(argv: Sequence[str], environ: Mapping[str, str]) -> FetchRequest:
    """Validate the command line and environment; raise UsageError naming the bad field."""
    args = _parser().parse_args(list(argv))
    try:
        parse_s3_uri(args.uri + "_" if args.uri.endswith("/") else args.uri)  # a prefix: its bucket and folder
        sha256 = validate_sha256(args.sha256.strip(), "--sha256")
    except ValueError as err:
        raise UsageError(f"--uri: {err}" if isinstance(err, InvalidS3Uri) else str(err)) from None
    try:
        version = int(args.version)
    except ValueError:
        raise UsageError(f"--version: {args.version!r} must be a positive integer") from None
    try:
        validate_model_name(args.model_name)
        validate_version(version)
    except ServingConfigError as err:
        flag = {"name": "--model-name", "version": "--version"}[err.field_name]
        raise UsageError(f"{flag}: {err.problem}") from None
    config_text = environ.get(CONFIG_ENV, "")
    if not config_text.strip():
        raise UsageError(f"{CONFIG_ENV}: the Triton model configuration is empty or unset")
    signer_key = environ.get(SIGNER_KEY_ENV, "").encode() or None
    if args.signature_uri is not None:
        try:
            parse_s3_uri(args.signature_uri)
        except InvalidS3Uri as err:
            raise UsageError(f"--signature-uri: {err}") from None
        if signer_key is None:
            raise UsageError(f"{SIGNER_KEY_ENV}: --signature-uri needs the signer's public key")
    return FetchRequest(
        uri=args.uri,
        sha256=sha256,
        model_name=args.model_name,
        version=version,
        backend=args.backend,
        repository=Path(args.repository),
        config_text=config_text,
        files=parse_files(args.files_json, args.uri),
        signature_uri=args.signature_uri,
        signer_key=signer_key,
    )


def storage_config(environ: Mapping[str, str]) -> StorageConfig:
    """Storage settings from the environment; the error names the variable, never its value."""
    try:
        return StorageConfig.from_env(environ)
    except ValueError as err:
        raise UsageError(str(err)) from None


def classify_failure(error: BaseException) -> FetchFailure:
    """Map an error to the exit code and reason the operator acts on."""
    if isinstance(error, SignatureRefused):
        return FetchFailure(ExitCode.BAD_ARTIFACT, error.reason, str(error))
    if isinstance(error, UsageError | InvalidS3Uri):
        return FetchFailure(ExitCode.USAGE, FetchReason.INVALID_ARGUMENTS, str(error))
    if isinstance(error, ChecksumMismatch):
        return FetchFailure(ExitCode.BAD_ARTIFACT, FetchReason.CHECKSUM_MISMATCH, str(error))
    if isinstance(error, ObjectNotFound):
        return FetchFailure(ExitCode.BAD_ARTIFACT, FetchReason.ARTIFACT_NOT_FOUND, str(error))
    if isinstance(error, AccessDenied):
        return FetchFailure(ExitCode.USAGE, FetchReason.ACCESS_DENIED, str(error))
    if isinstance(error, TLSVerificationFailed):
        return FetchFailure(ExitCode.USAGE, FetchReason.TLS_VERIFICATION_FAILED, str(error))
    if isinstance(error, StorageError):
        code = ExitCode.TRANSIENT if error.transient else ExitCode.USAGE
        return FetchFailure(code, type(error).__name__, str(error))
    if isinstance(error, OSError):
        return FetchFailure(ExitCode.TRANSIENT, FetchReason.REPOSITORY_WRITE_FAILED, f"{type(error).__name__}: {error}")
    return FetchFailure(UNEXPECTED_FAILURE, FetchReason.FETCH_FAILED, f"{type(error).__name__}: {error}")


def one_line(reason: str, message: str) -> str:
    """'Reason: message' on one line, short enough for a termination message."""
    text = " ".join(f"{reason}: {message}".split())
    encoded = text.encode("utf-8")
    if len(encoded) <= TERMINATION_MESSAGE_LIMIT:
        return text
    return encoded[: TERMINATION_MESSAGE_LIMIT - 3].decode("utf-8", "ignore") + "..."


def remove_leftovers(repository: Path, model_name: str, keep: str | None = None) -> None:
    """Drop staging folders of an interrupted earlier run and the model's own folder.

    Triton tries to load every folder in the repository, so nothing half-made may stay. `keep`
    names the download folder of this very artifact: its partial files and their journals let
    a restarted container fetch only the parts still missing (Triton starts only after this
    container succeeded, when that folder is gone too).
    """
    if not repository.is_dir():
        return
    for entry in repository.iterdir():
        if entry.name == keep:
            continue
        if entry.name.startswith(STAGING_PREFIX) or entry.name == model_name:
            shutil.rmtree(entry, ignore_errors=True)


def download_dir_name(request: FetchRequest) -> str:
    """The download folder of one artifact: the same across restarts, so a download resumes."""
    return f"{STAGING_PREFIX}download-{request.sha256[:16]}"


def node_cache_hit(request: FetchRequest, environ: Mapping[str, str]) -> Hit | None:
    """The artifact in the node's cache, once its agent has it; None (said in the log) when
    there is no cache, no agent, or the fill failed or took longer than the wait."""
    root = environ.get(NODE_CACHE_ENV, "")
    if not root:
        return None
    try:
        wait_s = float(environ.get(NODE_CACHE_WAIT_ENV) or DEFAULT_NODE_CACHE_WAIT_SECONDS)
        reader = CacheReader(Path(root))
    except (ValueError, OSError) as err:
        print(f"node cache not used: {type(err).__name__}: {err}", file=sys.stderr)
        return None
    uid = environ.get(POD_UID_ENV, "")
    wanted = cache_request(request.uri, request.sha256, request.files, None)
    hit, why = reader.wait(wanted, f"{POD_REQUEST_PREFIX}{uid}" if uid else None, wait_s)
    if hit is None:
        print(f"node cache not used: {why}; downloading", file=sys.stderr)
    return hit


def fetch(request: FetchRequest, store: ObjectStore, hit: Hit | None = None) -> str:
    """Download, verify and lay out the model (or link it from the node cache's `hit`);
    return a one-line summary."""
    request.repository.mkdir(parents=True, exist_ok=True)
    if hit is not None:
        remove_leftovers(request.repository, request.model_name)
        return _link_from_cache(request, store, hit)
    download_dir = request.repository / download_dir_name(request)
    remove_leftovers(request.repository, request.model_name, keep=download_dir.name)
    download_dir.mkdir(exist_ok=True)
    if request.files:
        summary = _fetch_file_set(request, store, download_dir)
    else:
        artifact = download_dir / artifact_filename(request.backend)
        result = store.download(request.uri, artifact, expected_sha256=request.sha256)
        name = parse_s3_uri(request.uri).key.rsplit("/", 1)[-1]
        verify_signature(request, store, [(name, result.sha256)])  # before anything is laid out for Triton
        model_dir = layout_model_repository(
            request.repository,
            request.model_name,
            request.version,
            request.backend,
            artifact,
            request.config_text,
            place="move",
        )
        summary = (
            f"Fetched {request.uri} ({result.size} bytes, sha256 {result.sha256}) into {model_dir / str(request.version)}"
            + (f": {result.stats.describe()}" if result.stats is not None else "")
        )
    shutil.rmtree(download_dir, ignore_errors=True)
    return summary


def _fetch_file_set(request: FetchRequest, store: ObjectStore, download_dir: Path) -> str:
    """Every file verified by its own sha256 (a mismatch names the file), then laid out: the
    graph under the backend's file name, the rest at their paths beside it."""
    total = TransferStats()
    placed: list[tuple[str, Path]] = []
    for index, (path, digest) in enumerate(request.files):
        local = download_dir / "files" / path
        try:
            result = store.download(request.folder + path, local, expected_sha256=digest)
        except ChecksumMismatch as err:
            raise ChecksumMismatch(f"file {path!r} (--files-json[{index}]) of {request.folder}", err.expected, err.actual) from None
        if result.stats is not None:
            total.add(result.stats)
        placed.append((path, local))
    verify_signature(request, store, request.files)  # every file was verified by its sha256 above
    model_dir = _lay_out(request, request.entry, placed, "move")
    return (
        f"Fetched {len(placed)} files under {request.folder} (each verified by its sha256) "
        f"into {model_dir / str(request.version)}: {total.describe()}"
    )


def _lay_out(request: FetchRequest, entry: str | None, files: list[tuple[str, Path]], place: Placement) -> Path:
    """The model folder from (path, local file) pairs: the graph `entry` under the backend's
    file name, its external data at the paths the graph names relative to its own folder."""
    graph = next((local for path, local in files if path == entry), None)
    data = [(path, local) for path, local in files if path != entry]
    return layout_model_repository(
        request.repository, request.model_name, request.version, request.backend, graph, request.config_text,
        place=place, data_files=data,
    )


def _link_from_cache(request: FetchRequest, store: ObjectStore, hit: Hit) -> str:
    """The version folder as symbolic links into the read-only cache: nothing is copied, and
    every file is the one its sha256 names."""
    files = request.files or ((hit.files[0][0], request.sha256),)
    verify_signature(request, store, files)
    model_dir = _lay_out(request, request.entry if request.files else hit.files[0][0], list(hit.files), "link")
    return (
        f"Linked {len(hit.files)} files of {request.uri} from the node cache (digest {hit.digest}) "
        f"into {model_dir / str(request.version)}: 0 bytes downloaded"
    )


def _write_termination_log(path: Path, line: str) -> None:
    try:
        path.write_text(line + "\n", encoding="utf-8")
    except OSError:
        # Outside Kubernetes the file may not be writable; stderr still has the line.
        pass


def main(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    store_factory: Callable[[StorageConfig], ObjectStore] = ObjectStore,
) -> int:
    environ = os.environ if environ is None else environ
    argv = sys.argv[1:] if argv is None else argv
    # Download progress (modelops.transfer) goes to the container's log.
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("modelops.transfer").setLevel(logging.INFO)
    termination_log = Path(environ.get(TERMINATION_LOG_ENV) or DEFAULT_TERMINATION_LOG)
    request: FetchRequest | None = None
    try:
        request = parse_request(argv, environ)
        store = store_factory(storage_config(environ))
        summary = fetch(request, store, node_cache_hit(request, environ))
    except Exception as error:  # every failure ends in one classified line
        failure = classify_failure(error)
        if request is not None:
            # A transient failure keeps this artifact's partial download for the restart.
            keep = download_dir_name(request) if failure.exit_code == ExitCode.TRANSIENT else None
            remove_leftovers(request.repository, request.model_name, keep=keep)
        line = one_line(failure.reason, failure.message)
        print(line, file=sys.stderr)
        _write_termination_log(termination_log, line)
        return failure.exit_code
    print(summary, file=sys.stderr)
    _write_termination_log(termination_log, summary)
    return ExitCode.SUCCESS


if __name__ == "__main__":
    sys.exit(main())
