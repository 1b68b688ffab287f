"""What every reconcile needs: settings, the Kubernetes adapter, storage access, metrics, a
clock and a way to wake other objects. Built once at startup; nothing here is global."""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from modelops import kube as k8s
from modelops.api.model import ModelReason, StorageSpec
from modelops.core.patch import merge_patch
from modelops.handlers.queue import Key
from modelops.metrics import Metrics
from modelops.settings import Settings
from modelops.storage import ObjectStore, StorageConfig, TransferTuning

CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
# The operator only HEADs and reads small objects: fail fast and let the queue retry.
OPERATOR_TUNING = TransferTuning(max_attempts=2, stream_attempts=1, connect_timeout_s=3.0, read_timeout_s=10.0)


class CredentialsProblem(Exception):
    """The Model's credentials Secret (or its CA bundle) is missing or incomplete. The message
    is for people; `reason` is the condition reason."""

    reason: str = ModelReason.CREDENTIALS_NOT_FOUND


class CABundleProblem(CredentialsProblem):
    """The ConfigMap or Secret named in spec.storage.caBundle, or its key, is missing."""

    reason = ModelReason.CA_BUNDLE_NOT_FOUND


def ca_bundle_file(pem: bytes, directory: Path | None = None) -> str:
    """The bundle as a file (boto3 takes a path), named by its content so that equal bundles
    share one file and a changed bundle gets a new one, and with it a new client."""
    root = directory or Path(tempfile.gettempdir()) / "modelops-ca"
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = root / f"{hashlib.sha256(pem).hexdigest()}.pem"
    if not path.exists():
        partial = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.partial")
        partial.write_bytes(pem)
        os.replace(partial, path)
    return str(path)


class StoreCache:
    """One ObjectStore (and boto3 client) per distinct storage configuration."""

    def __init__(self, limit: int = 64) -> None:
        self._stores: OrderedDict[str, ObjectStore] = OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()

    def get(self, config: StorageConfig) -> ObjectStore:
        material = config.model_dump_json() + "|" + "|".join(
            s.get_secret_value() if s else "" for s in (config.access_key_id, config.secret_access_key)
        )
        digest = hashlib.sha256(material.encode()).hexdigest()
        with self._lock:
            store = self._stores.get(digest)
            if store is None:
                store = ObjectStore(config, OPERATOR_TUNING)
                self._stores[digest] = store
                while len(self._stores) > self._limit:
                    self._stores.popitem(last=False)
            self._stores.move_to_end(digest)
            return store


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Context:
    settings: Settings
    kube: k8s.Kube
    metrics: Metrics
    stores: StoreCache
    wake: Callable[[Key], None]
    clock: Callable[[], datetime] = utcnow
    # The operator's scaler: the last reading of Triton's counters per ModelDeployment.
    readings: dict[tuple[str, str], Any] = field(default_factory=dict)

    def credentials(self, namespace: str, storage: StorageSpec) -> tuple[SecretStr | None, SecretStr | None]:
        """Access keys from the Model's Secret; raises CredentialsProblem naming what is missing."""
        ref = storage.credentials_secret
        if ref is None:
            return None, None
        secret = self.kube.get(k8s.SECRETS, namespace, ref.name)
        if secret is None:
            raise CredentialsProblem(f"Secret {ref.name} named in spec.storage.credentialsSecret does not exist")
        data = secret.get("data") or {}
        missing = [key for key in CREDENTIAL_KEYS if not data.get(key)]
        if missing:
            raise CredentialsProblem(f"Secret {ref.name} lacks the key(s) {', '.join(missing)}")
        key_id, secret_key = (SecretStr(base64.b64decode(data[key]).decode()) for key in CREDENTIAL_KEYS)
        return key_id, secret_key

    def ca_bundle(self, namespace: str, storage: StorageSpec) -> str | None:
        """The path of a file with the Model's CA bundle; raises CABundleProblem naming what is missing."""
        ref = storage.ca_bundle
        if ref is None:
            return None
        kind, name = ref.source
        field = "configMapRef" if kind == "ConfigMap" else "secretRef"
        obj = self.kube.get(k8s.CONFIGMAPS if kind == "ConfigMap" else k8s.SECRETS, namespace, name)
        if obj is None:
            raise CABundleProblem(f"{kind} {name} named in spec.storage.caBundle.{field} does not exist")
        if kind == "ConfigMap":
            text = (obj.get("data") or {}).get(ref.key)
            pem = text.encode() if text else None
        else:
            encoded = (obj.get("data") or {}).get(ref.key)
            pem = base64.b64decode(encoded) if encoded else None
        if not pem or b"-----BEGIN CERTIFICATE-----" not in pem:
            raise CABundleProblem(f"{kind} {name} has no PEM certificate under the key {ref.key} (spec.storage.caBundle.key)")
        return ca_bundle_file(pem)

    def check_storage(self, namespace: str, storage: StorageSpec) -> None:
        """What the operator needs before it can talk to storage: the Secret and the CA bundle."""
        self.credentials(namespace, storage)
        self.ca_bundle(namespace, storage)

    def store_for(self, namespace: str, storage: StorageSpec) -> ObjectStore:
        key_id, secret_key = self.credentials(namespace, storage)
        config = StorageConfig(
            endpoint_url=storage.endpoint,
            region=storage.region,
            verify_tls=storage.verify_tls,
            ca_bundle=self.ca_bundle(namespace, storage),
            access_key_id=key_id,
            secret_access_key=secret_key,
        )
        return self.stores.get(config)

    def write_status(self, resource: k8s.Resource, body: dict[str, Any], status: dict[str, Any]) -> bool:
        """Patch the status only where it differs from what is stored. Returns whether it wrote."""
        old = body.get("status") or {}
        patch = merge_patch(old, status)
        if not patch:
            return False
        meta = body["metadata"]
        self.kube.patch_status(resource, meta["namespace"], meta["name"], patch)
        return True

    def adopt(self, resource: k8s.Resource, body: dict[str, Any], owner_references: list[dict[str, Any]] | None) -> None:
        """Set ownerReferences, guarded by resourceVersion so a concurrent change is not lost."""
        if owner_references is None:
            return
        meta = body["metadata"]
        self.kube.patch(
            resource,
            meta["namespace"],
            meta["name"],
            {"metadata": {"ownerReferences": owner_references, "resourceVersion": meta["resourceVersion"]}},
        )
