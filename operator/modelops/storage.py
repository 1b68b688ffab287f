"""Object storage: the one adapter to S3-compatible storage (and the only module that imports boto3).

The operator uses it to HEAD artifacts, the compression Job to fetch sources and publish
outputs, and the serving init container to fetch exactly one version. Downloads are split
into ranged GETs that run concurrently; the sha256 is computed in order while the parts
arrive, so verification costs no second pass over the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import re
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from modelops.reuse import ObjectInfo as ObjectInfo  # what a HEAD returns; defined with the decision that reads it

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
# Metadata key under which uploads record their sha256 (S3 returns it as x-amz-meta-sha256).
SHA256_METADATA_KEY = "sha256"


class StorageError(Exception):
    """Base of every object-storage failure. `transient` tells whether a retry can help."""

    transient = False


class InvalidS3Uri(StorageError, ValueError):
    """A URI that is not s3://bucket/key."""


class ObjectNotFound(StorageError):
    """The bucket or the key does not exist."""


class BucketNotFound(ObjectNotFound):
    """The bucket itself does not exist, not only the key: the URI or the Model's bucket is
    wrong, or the bucket was never created."""


class AccessDenied(StorageError):
    """The credentials are missing, wrong, or lack permission (HTTP 403). Permanent."""


class InvalidRequest(StorageError):
    """Storage refused the request itself (HTTP 400 and other 4xx): the URI or the key is not
    acceptable to it. Permanent: sending the same request again gets the same answer."""


class TLSVerificationFailed(StorageError):
    """The endpoint's certificate did not verify against the trusted CAs. Permanent: the same
    certificate and the same CAs give the same answer until one of them changes."""


class TooLarge(StorageError):
    """The object is larger than the configured limit; refused before any byte is read."""


class ChecksumMismatch(StorageError):
    """The bytes read do not hash to the expected sha256. Permanent: the artifact is wrong."""

    def __init__(self, uri: str, expected: str, actual: str) -> None:
        super().__init__(f"sha256 mismatch for {uri}: expected {expected}, got {actual}")
        self.uri = uri
        self.expected = expected
        self.actual = actual


class StorageUnreachable(StorageError):
    """The endpoint could not be reached or kept failing (throttling, 5xx, timeouts). The only
    transient kind: everything else is an answer that a retry would repeat."""

    transient = True


class StorageStalled(StorageUnreachable):
    """No byte arrived for the read timeout (a socket that stays silent); retried like an outage,
    and counted as a stall by a download."""

    stalled = True


class ObjectChanged(StorageUnreachable):
    """The object was replaced while it was being read; reading it again can succeed."""


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def parse_s3_uri(uri: str) -> S3Location:
    """Split `s3://bucket/key` into its parts; the key may contain slashes but not be empty."""
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise InvalidS3Uri(f"uri {uri!r}: must start with s3://")
    bucket, sep, key = uri[len("s3://") :].partition("/")
    if not _BUCKET_NAME.match(bucket):
        raise InvalidS3Uri(f"uri {uri!r}: bucket {bucket!r} is not a valid bucket name")
    if not sep or not key:
        raise InvalidS3Uri(f"uri {uri!r}: the object key is missing")
    return S3Location(bucket=bucket, key=key)


def validate_sha256(digest: str, field: str = "sha256") -> str:
    """Return the digest in lowercase, or raise ValueError naming `field`."""
    normalized = digest.strip().lower() if isinstance(digest, str) else ""
    if not _SHA256_HEX.match(normalized):
        raise ValueError(f"{field}: {digest!r} is not a sha256 hex digest (64 hex characters)")
    return normalized


# StorageConfig field -> the environment variable it is read from.
STORAGE_ENV_VARS = {
    "endpoint_url": "MODELOPS_S3_ENDPOINT",
    "region": "MODELOPS_S3_REGION",
    "verify_tls": "MODELOPS_S3_VERIFY_TLS",
    "ca_bundle": "MODELOPS_S3_CA_BUNDLE",
    "access_key_id": "AWS_ACCESS_KEY_ID",
    "secret_access_key": "AWS_SECRET_ACCESS_KEY",
}


class StorageConfig(BaseModel):
    """Where the object store is and how to authenticate; read from the Model's Secret via env."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    endpoint_url: str | None = Field(None, description="S3 endpoint; None means AWS S3.")
    region: str = "us-east-1"
    verify_tls: bool = True
    ca_bundle: str | None = Field(None, description="PEM file with the CA that signed the endpoint.")
    access_key_id: SecretStr | None = None
    secret_access_key: SecretStr | None = None

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint_is_http(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> StorageConfig:
        """Build the config from environment variables; empty values count as unset."""
        values = {field: environ[var] for field, var in STORAGE_ENV_VARS.items() if environ.get(var, "").strip()}
        try:
            return cls(**values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{STORAGE_ENV_VARS.get(str(err['loc'][0]), err['loc'][0])}: {err['msg']}" for err in exc.errors()
            )
            raise ValueError(f"invalid storage settings: {problems}") from None

    def tls_verify_argument(self) -> bool | str:
        """The `verify` argument boto3 expects: a CA bundle path, or a boolean."""
        if self.ca_bundle:
            return self.ca_bundle
        return self.verify_tls


@dataclass(frozen=True)
class TransferTuning:
    """Throughput knobs. Memory held by a download is at most 2 × max_concurrency × part_size."""

    part_size: int = 16 * 1024 * 1024
    max_concurrency: int = 8
    # botocore retries each request (throttling, 5xx, connection errors) up to max_attempts;
    # stream_attempts repeats a whole read (one part of a download) when the body breaks off,
    # stalls or botocore gives up.
    max_attempts: int = 6
    stream_attempts: int = 3
    backoff_base_s: float = 0.2
    backoff_cap_s: float = 10.0
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    # A part that receives no byte for this long is closed and retried (modelops.transfer).
    # There is no total timeout: a large model takes as long as its bytes take.
    stall_timeout_s: float = 30.0
    progress_interval_s: float = 5.0


@dataclass(frozen=True)
class TransferResult:
    sha256: str
    size: int
    # The ETag of the object that was read or written: it changes whenever the object does.
    etag: str = ""
    # A download's figures (modelops.transfer.TransferStats): time, throughput, resumed parts.
    stats: Any = None


def backoff_delay(attempt: int, tuning: TransferTuning, rand: Callable[[], float] = random.random) -> float:
    """Exponential backoff with full jitter for retry number `attempt` (1-based)."""
    return min(tuning.backoff_cap_s, tuning.backoff_base_s * 2 ** (attempt - 1)) * rand()


def with_retries(
    action: Callable[[], Any],
    tuning: TransferTuning,
    sleep: Callable[[float], None] = time.sleep,
) -> Any:
    """Run `action`, retrying transient storage errors with backoff; other errors pass through."""
    for attempt in range(1, tuning.stream_attempts + 1):
        try:
            return action()
        except StorageError as exc:
            if not exc.transient or attempt == tuning.stream_attempts:
                raise
            sleep(backoff_delay(attempt, tuning))
    raise AssertionError("unreachable")  # the loop always returns or raises


def verify_digest(uri: str, expected: str | None, actual: str) -> None:
    if expected is not None and expected != actual:
        raise ChecksumMismatch(uri, expected, actual)


def _transfer(
    open_range: Callable[[int, int], Any],
    size: int,
    fd: int,
    tuning: TransferTuning,
    sleep: Callable[[float], None],
    journal: Any = None,
    label: str = "download",
) -> tuple[str, Any]:
    from modelops import transfer

    def transient(action: Callable[[], Any]) -> Any:
        try:
            return action()
        except (transfer.Stalled, transfer.ShortRead) as exc:
            raise StorageUnreachable(f"{label}: {exc}") from exc

    engine = transfer.Engine(tuning.part_size, tuning.max_concurrency, tuning.stall_timeout_s, tuning.progress_interval_s)
    return transfer.download(
        open_range, size, fd, engine, lambda action: with_retries(lambda: transient(action), tuning, sleep),
        journal=journal, label=label,
    )


def hash_file(path: str | os.PathLike[str], chunk_size: int = 8 * 1024 * 1024) -> TransferResult:
    hasher = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        buffer = bytearray(chunk_size)
        view = memoryview(buffer)
        while read := handle.readinto(buffer):
            hasher.update(view[:read])
            size += read
    return TransferResult(sha256=hasher.hexdigest(), size=size)


_NOT_FOUND_CODES = {"404", "NoSuchKey", "NoSuchBucket", "NotFound"}
_DENIED_CODES = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden"}
_THROTTLE_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests"}
_TRANSIENT_STATUS = {429, 500, 502, 503, 504}


def _tls_failure(exc: BaseException) -> bool:
    import ssl

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def translate_error(exc: BaseException, uri: str, endpoint: str | None = None) -> StorageError:
    """Map a botocore/urllib3 exception to one of ours; the message never carries credentials."""
    from botocore import exceptions as bce
    from urllib3 import exceptions as u3e

    if isinstance(exc, StorageError):
        return exc
    # s3transfer wraps the ClientError of a failed upload; classify the original.
    original = exc.__cause__ or exc.__context__
    if type(exc).__name__ == "S3UploadFailedError" and original is not None:
        return translate_error(original, uri, endpoint)
    if isinstance(exc, bce.ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        detail = f"{uri}: {code or status} {exc.response.get('Error', {}).get('Message', '')}".rstrip()
        if code == "NoSuchBucket":
            return BucketNotFound(f"bucket not found: {detail}")
        if code in _NOT_FOUND_CODES or status == 404:
            return ObjectNotFound(f"object not found: {detail}")
        if code in _DENIED_CODES or status == 403:
            return AccessDenied(f"access denied: {detail}")
        if code == "PreconditionFailed" or status == 412:
            return ObjectChanged(f"object changed while reading: {detail}")
        if code in _THROTTLE_CODES or status in _TRANSIENT_STATUS or status >= 500:
            return StorageUnreachable(f"storage kept failing: {detail}")
        if 400 <= status < 500:
            return InvalidRequest(f"storage refused the request: {detail}")
        return StorageError(f"storage request failed: {detail}")
    if isinstance(exc, bce.SSLError) or _tls_failure(exc):
        where = endpoint or "AWS S3"
        if _tls_failure(exc):
            return TLSVerificationFailed(
                f"TLS verification of {where} failed (reading {uri}): its certificate is not signed by a trusted CA "
                "(spec.storage.caBundle)"
            )
        return StorageError(f"TLS connection to {where} failed for {uri}: {exc}")
    if isinstance(exc, (bce.NoCredentialsError, bce.PartialCredentialsError)):
        return AccessDenied(f"no usable credentials for {uri}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    if isinstance(exc, (bce.ReadTimeoutError, u3e.ReadTimeoutError, TimeoutError)):
        return StorageStalled(f"storage sent no byte for {uri} within the read timeout: {type(exc).__name__}: {exc}")
    if isinstance(
        exc,
        (
            bce.EndpointConnectionError,
            bce.ConnectionClosedError,
            bce.ReadTimeoutError,
            bce.ConnectTimeoutError,
            bce.ResponseStreamingError,
            bce.IncompleteReadError,
            u3e.ProtocolError,
            u3e.ReadTimeoutError,
            ConnectionError,
            TimeoutError,
        ),
    ):
        return StorageUnreachable(f"storage unreachable for {uri}: {type(exc).__name__}: {exc}")
    return StorageError(f"storage request failed for {uri}: {type(exc).__name__}: {exc}")


class _RangedBody:
    """One part's ranged GET, pinned to the ETag; its errors are ours, and close() (from the
    stall detector's thread) wakes a read blocked on the socket."""

    def __init__(self, store: ObjectStore, loc: S3Location, uri: str, etag: str, start: int, end: int) -> None:
        self._uri, self._endpoint = uri, store.config.endpoint_url
        try:
            response = store.client.get_object(Bucket=loc.bucket, Key=loc.key, Range=f"bytes={start}-{end}", IfMatch=etag)
        except Exception as exc:  # noqa: BLE001 - translated for the retry policy
            raise translate_error(exc, uri, self._endpoint) from exc
        self._body = response["Body"]

    def read(self, n: int) -> bytes:
        try:
            return bytes(self._body.read(n))
        except Exception as exc:  # noqa: BLE001 - translated for the retry policy
            raise translate_error(exc, self._uri, self._endpoint) from exc

    def close(self) -> None:
        # Closing a socket does not wake a thread blocked reading it; shutting it down does.
        # The connection is dropped from the pool, which opens another.
        raw = getattr(self._body, "_raw_stream", None)
        sock = getattr(getattr(raw, "connection", None), "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._body.close()


class ObjectStore:
    """Operations on one S3-compatible endpoint. The boto3 client is created on first use."""

    def __init__(
        self,
        config: StorageConfig,
        tuning: TransferTuning | None = None,
        *,
        client: Any = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config
        self.tuning = tuning or TransferTuning()
        self._client = client
        self._sleep = sleep

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            cfg = self.config
            self._client = boto3.session.Session().client(
                "s3",
                endpoint_url=cfg.endpoint_url,
                region_name=cfg.region,
                verify=cfg.tls_verify_argument(),
                aws_access_key_id=cfg.access_key_id.get_secret_value() if cfg.access_key_id else None,
                aws_secret_access_key=cfg.secret_access_key.get_secret_value() if cfg.secret_access_key else None,
                config=Config(
                    # botocore's standard mode retries throttling, 5xx and connection errors with backoff.
                    retries={"mode": "standard", "max_attempts": self.tuning.max_attempts},
                    connect_timeout=self.tuning.connect_timeout_s,
                    # A socket silent for the stall timeout is a stall, waiting for headers too.
                    read_timeout=min(self.tuning.read_timeout_s, self.tuning.stall_timeout_s),
                    max_pool_connections=self.tuning.max_concurrency + 4,
                    # Path-style addressing works with every S3-compatible server (MinIO, Ceph).
                    s3={"addressing_style": "path"} if cfg.endpoint_url else {},
                    user_agent_extra="modelops",
                ),
            )
        return self._client

    def _call(self, uri: str, action: Callable[[], Any]) -> Any:
        def once() -> Any:
            try:
                return action()
            except Exception as exc:  # noqa: BLE001 - every failure is translated, none is swallowed
                raise translate_error(exc, uri, self.config.endpoint_url) from exc

        return with_retries(once, self.tuning, self._sleep)

    def head(self, uri: str) -> ObjectInfo:
        loc = parse_s3_uri(uri)
        response = self._call(uri, lambda: self.client.head_object(Bucket=loc.bucket, Key=loc.key))
        return ObjectInfo(
            size=int(response["ContentLength"]),
            etag=str(response.get("ETag", "")).strip('"'),
            sha256=(response.get("Metadata") or {}).get(SHA256_METADATA_KEY),
        )

    def bucket_exists(self, bucket: str) -> bool:
        """HEAD bucket. A HEAD carries no error code, so a 404 here is the bucket's own."""
        uri = f"s3://{bucket}/"
        try:
            self._call(uri, lambda: self.client.head_bucket(Bucket=bucket))
        except ObjectNotFound:
            return False
        return True

    def exists(self, uri: str) -> bool:
        try:
            self.head(uri)
        except ObjectNotFound:
            return False
        return True

    def download(
        self,
        uri: str,
        dest_path: str | os.PathLike[str],
        expected_sha256: str | None = None,
        max_bytes: int | None = None,
    ) -> TransferResult:
        """Fetch `uri` to `dest_path`, verifying the sha256 while streaming (modelops.transfer).

        An object larger than `max_bytes` is refused (TooLarge) after the HEAD, before any byte
        of it is read or any space is taken on disk.

        The file appears at `dest_path` only once it is complete and verified. Until then it is
        `<dest>.partial` with its journal `<dest>.partial.parts`: a download that failed for a
        transient reason leaves both, and the next download to the same path fetches only the
        parts still missing. On a mismatch both are removed and ChecksumMismatch is raised,
        after one fresh attempt when resumed parts were involved.
        """
        from modelops import transfer

        expected = validate_sha256(expected_sha256, "expected_sha256") if expected_sha256 is not None else None
        loc = parse_s3_uri(uri)
        info = self.head(uri)
        if max_bytes is not None and info.size > max_bytes:
            raise TooLarge(f"{uri} is {info.size} bytes, more than the limit of {max_bytes} bytes")
        dest = Path(dest_path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.with_name(dest.name + ".partial")
        def open_range(start: int, end: int) -> _RangedBody:
            return _RangedBody(self, loc, uri, info.etag, start, end)

        for attempt in (1, 2):
            journal = transfer.Journal(partial, info.etag, info.size, self.tuning.part_size)
            if not partial.exists():
                journal.remove()  # a journal without its partial file describes nothing
            fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                os.ftruncate(fd, info.size)
                digest, stats = _transfer(open_range, info.size, fd, self.tuning, self._sleep, journal, label=uri)
                os.fsync(fd)
            except BaseException as exc:
                os.close(fd)
                if not (isinstance(exc, StorageError) and exc.transient):
                    partial.unlink(missing_ok=True)
                    journal.remove()
                raise
            os.close(fd)
            journal.remove()
            try:
                verify_digest(uri, expected, digest)
            except ChecksumMismatch:
                partial.unlink(missing_ok=True)
                if stats.resumed_parts and attempt == 1:
                    continue  # a resumed part may be what is wrong: fetch it all once more
                raise
            os.replace(partial, dest)
            return TransferResult(sha256=digest, size=info.size, etag=info.etag, stats=stats)
        raise AssertionError("unreachable")  # the second attempt returns or raises

    def upload_file(self, path: str | os.PathLike[str], uri: str) -> TransferResult:
        """Upload with concurrent multipart parts; the sha256 is stored as object metadata."""
        from boto3.s3.transfer import TransferConfig

        loc = parse_s3_uri(uri)
        result = hash_file(path)
        transfer = TransferConfig(
            multipart_threshold=self.tuning.part_size,
            multipart_chunksize=self.tuning.part_size,
            max_concurrency=self.tuning.max_concurrency,
            use_threads=True,
        )
        self._call(
            uri,
            lambda: self.client.upload_file(
                str(path),
                loc.bucket,
                loc.key,
                ExtraArgs={"Metadata": {SHA256_METADATA_KEY: result.sha256}},
                Config=transfer,
            ),
        )
        return TransferResult(sha256=result.sha256, size=result.size, etag=self.head(uri).etag)

    def upload_bytes(self, data: bytes, uri: str, content_type: str = "application/octet-stream") -> TransferResult:
        loc = parse_s3_uri(uri)
        digest = hashlib.sha256(data).hexdigest()
        response = self._call(
            uri,
            lambda: self.client.put_object(
                Bucket=loc.bucket,
                Key=loc.key,
                Body=data,
                ContentType=content_type,
                Metadata={SHA256_METADATA_KEY: digest},
            ),
        )
        return TransferResult(sha256=digest, size=len(data), etag=str(response.get("ETag", "")).strip('"'))

    def read_bytes(self, uri: str) -> bytes:
        """Read a small object (a report, a dataset) into memory."""
        loc = parse_s3_uri(uri)
        return self._call(uri, lambda: self.client.get_object(Bucket=loc.bucket, Key=loc.key)["Body"].read())
