"""Fixtures for the storage and compressor unit tests.

`digits_model` trains the real digits classifier once per session; it is lazy, so test
modules that do not ask for it never import torch.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import re
import sys
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


class FakeS3Client:
    """An in-memory stand-in for the boto3 S3 client methods that ObjectStore calls."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], tuple[bytes, dict[str, str]]] = {}
        self.calls: list[str] = []

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
def digits_model(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The digits classifier, trained once: paths to model.onnx, model.ts.pt, model.pt2, eval.npz."""
    spec = importlib.util.spec_from_file_location("digits_training", REPO_ROOT / "models" / "digits.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module.build(tmp_path_factory.mktemp("digits"))
