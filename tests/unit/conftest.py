"""Fixtures for the storage and compressor unit tests.

`digits_model` is the real digits classifier, trained once per machine and cached (see
e2e/support.py); it is lazy, so test modules that do not ask for it never import torch.
"""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path
from typing import Any

import pytest

from e2e import support


class FakeS3Client:
    """An in-memory stand-in for the boto3 S3 client methods that ObjectStore calls."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], tuple[bytes, dict[str, str]]] = {}
        self.calls: list[str] = []
        self.buckets: set[str] = set()
        self.denied = False

    @staticmethod
    def _error(code: str, status: int) -> Exception:
        from botocore.exceptions import ClientError

        return ClientError(
            {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "op"
        )

    def _get(self, bucket: str, key: str) -> tuple[bytes, dict[str, str]]:
        if (bucket, key) not in self.objects:
            raise self._error("404", 404)
        return self.objects[(bucket, key)]

    @staticmethod
    def _etag(data: bytes) -> str:
        return hashlib.md5(data).hexdigest()  # noqa: S324 - S3 ETag semantics, not security

    def head_bucket(self, Bucket: str) -> dict[str, Any]:
        self.calls.append(f"head-bucket {Bucket}")
        if self.denied:
            raise self._error("403", 403)
        if Bucket not in self.buckets:
            raise self._error("404", 404)  # a HEAD's answer has no body, so no error code
        return {}

    def head_object(self, Bucket: str, Key: str) -> dict[str, Any]:
        self.calls.append(f"head {Key}")
        data, meta = self._get(Bucket, Key)
        return {"ContentLength": len(data), "ETag": f'"{self._etag(data)}"', "Metadata": dict(meta)}

    def get_object(self, Bucket: str, Key: str, Range: str | None = None, IfMatch: str | None = None) -> dict[str, Any]:
        self.calls.append(f"get {Key} {Range or ''}".rstrip())
        data, _ = self._get(Bucket, Key)
        if IfMatch is not None and IfMatch != self._etag(data):
            raise self._error("PreconditionFailed", 412)
        if Range:
            start, end = map(int, re.fullmatch(r"bytes=(\d+)-(\d+)", Range).groups())
            data = data[start : end + 1]
        return {"Body": io.BytesIO(data)}

    def put_object(
        self, Bucket: str, Key: str, Body: bytes, ContentType: str = "", Metadata: dict | None = None
    ) -> dict:
        self.calls.append(f"put {Key}")
        self.objects[(Bucket, Key)] = (bytes(Body), dict(Metadata or {}))
        return {"ETag": f'"{self._etag(bytes(Body))}"'}

    def upload_file(
        self, Filename: str, Bucket: str, Key: str, ExtraArgs: dict | None = None, Config: Any = None
    ) -> None:
        self.calls.append(f"put {Key}")
        self.objects[(Bucket, Key)] = (Path(Filename).read_bytes(), dict((ExtraArgs or {}).get("Metadata", {})))


@pytest.fixture
def fake_s3() -> FakeS3Client:
    return FakeS3Client()


@pytest.fixture(scope="session")
def digits_model() -> Any:
    """The digits classifier (trained once, cached): paths to model.onnx, model.ts.pt, model.pt2, eval.npz."""
    return support.digits_model()
