"""Operator settings: one typed object, read from MODELOPS_* environment variables."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from modelops import __version__

ENV_PREFIX = "MODELOPS_"
KOPF_PREFIX = "modelops.dev"


class SettingsError(ValueError):
    """A setting from the environment is invalid; the message names the variable."""


class Settings(BaseModel):
    """Everything the operator can be told from outside. Each field is MODELOPS_<FIELD>."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    namespaces: tuple[str, ...] = Field((), description="Namespaces to watch; empty watches the whole cluster.")
    operator_image: str = Field(f"ghcr.io/modelops/modelops-operator:{__version__}", min_length=1)
    compressor_image: str = Field(f"ghcr.io/modelops/modelops-compressor:{__version__}", min_length=1)
    triton_image: str = Field("nvcr.io/nvidia/tritonserver:24.10-py3", min_length=1)
    image_pull_policy: str = Field("IfNotPresent", pattern="^(Always|IfNotPresent|Never)$")
    job_backoff_limit: int = Field(3, ge=0, le=20, description="Retries of a compression Job on transient errors.")
    max_artifact_bytes: int = Field(
        64 * 2**30, ge=1, description="Largest source artifact a compression Job downloads; a larger one fails with InputTooLarge."
    )
    max_dataset_bytes: int = Field(
        4 * 2**30, ge=1, description="Largest evaluation dataset a compression Job downloads; a larger one fails with InputTooLarge."
    )
    metrics_port: int = Field(8080, ge=0, le=65535, description="Port of /metrics; 0 picks a free port.")
    health_port: int = Field(8081, ge=0, le=65535, description="Port of /healthz and /readyz; 0 picks a free port.")
    bind_address: str = Field("0.0.0.0", min_length=1)
    workers: int = Field(16, ge=1, le=64, description="Objects reconciled at the same time (each waits on the API server in a thread of its own).")
    resync_seconds: float = Field(600.0, gt=0, description="Every object is reconciled at least this often.")
    retry_seconds: float = Field(30.0, gt=0, description="Wait before checking storage again after it failed or missed.")
    max_backoff_seconds: float = Field(300.0, gt=0, description="Longest wait before retrying a failed reconcile.")
    rollout_history: int = Field(5, ge=1, le=50, description="Rollouts kept in a ModelDeployment's status.")
    prometheus_url: str = Field(
        "", pattern=r"^(https?://[^\s]+)?$",
        description="Prometheus's HTTP API (http(s)://host:port) from which the canary analysis and the operator's autoscaler "
        "read Triton's counters; empty reads them from the pods' own metrics endpoints (port 8002).",
    )
    prometheus_ca_file: str = Field("", description="PEM bundle that verifies Prometheus's certificate; empty uses the system's.")
    prometheus_insecure_skip_verify: bool = Field(False, description="Do not verify Prometheus's certificate (test set-ups only).")
    allowed_endpoints: tuple[str, ...] = Field(
        (), description="Storage endpoints and Prometheus addresses that Models and ModelDeployments may name: host patterns "
        "(*.s3.amazonaws.com) and CIDRs, comma-separated; empty allows every endpoint that is not refused. A listed endpoint "
        "is allowed even where it would be refused (the API server, link-local, the operator's own pod, MODELOPS_DENIED_CIDRS).",
    )
    denied_cidrs: tuple[str, ...] = Field(
        (), description="CIDRs that Models and ModelDeployments may not name, beside the API server, link-local and loopback "
        "addresses, which are always refused unless allowed: typically the cluster's pod and service networks.",
    )
    pod_ip: str = Field("", description="The operator pod's IP (from the downward API): an endpoint that names it is refused.")
    require_signatures: bool = Field(
        False, description="Every Model requires signed artifacts, as if its spec.trust.required were true (docs/security.md)."
    )
    signing_key_secret: str = Field(
        "", max_length=253,
        description="Secret (key key.pem: a PEM ECDSA P-256 private key) with which the operator signs each compressed "
        "artifact and its provenance statement; empty signs nothing (docs/security.md).",
    )
    signing_key_namespace: str = Field(
        "", max_length=63, description="Namespace of the signing key's Secret (the chart sets its own release namespace)."
    )
    node_cache_claim: str = Field(
        "",
        pattern=r"^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)?$",
        description="The node-local model cache's PersistentVolumeClaim in each serving namespace; empty: every pod downloads its artifact.",
    )
    node_cache_path: str = Field("/var/lib/modelops/cache", pattern="^/", description="The cache's directory on each node (the agents' --root).")
    node_cache_size: str = Field(
        "200Gi", pattern=r"^[0-9]+([KMGTPE]i?)?$", description="The capacity the cache's PersistentVolumes declare (the agents' budget)."
    )
    node_cache_wait_seconds: float = Field(
        300.0, ge=0, description="How long a pod's fetch waits for its node's agent to fill the cache before it downloads the artifact itself."
    )
    log_level: str = Field("INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")
    leader_election: bool = Field(False, description="Reconcile only while holding a Lease, so replicas can stand by.")
    leader_election_id: str = Field(
        "modelops-operator", min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description="Name of the Lease.",
    )
    leader_election_namespace: str = Field(
        "", max_length=63, description="Namespace of the Lease; empty uses the pod's own namespace."
    )
    leader_election_identity: str = Field(
        "", max_length=253, description="This replica's name in the Lease; empty uses the host name (the pod name)."
    )
    lease_duration_seconds: float = Field(15.0, gt=0, description="A standby takes over after the Lease went unrenewed this long.")
    lease_renew_deadline_seconds: float = Field(10.0, gt=0, description="The leader stops (and exits) when it could not renew for this long.")
    lease_retry_period_seconds: float = Field(2.0, gt=0, description="How often candidates try the Lease and the leader renews it.")

    @field_validator("namespaces", mode="before")
    @classmethod
    def _split_namespaces(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(ns.strip() for ns in value.split(",") if ns.strip())
        return value

    @field_validator("allowed_endpoints", "denied_cidrs", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(entry.strip() for entry in value.split(",") if entry.strip())
        return value

    @field_validator("denied_cidrs")
    @classmethod
    def _cidrs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entry in value:
            ipaddress.ip_network(entry, strict=False)  # a ValueError names the entry
        return value

    @model_validator(mode="after")
    def _lease_timings(self) -> Settings:
        if not self.lease_duration_seconds > self.lease_renew_deadline_seconds > self.lease_retry_period_seconds:
            raise ValueError(
                "MODELOPS_LEASE_DURATION_SECONDS > MODELOPS_LEASE_RENEW_DEADLINE_SECONDS > MODELOPS_LEASE_RETRY_PERIOD_SECONDS "
                "must hold, so that a leader stops before a standby may take over"
            )
        return self

    @classmethod
    def env_name(cls, field: str) -> str:
        return ENV_PREFIX + field.upper()

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        values = {
            field: environ[cls.env_name(field)]
            for field in cls.model_fields
            if environ.get(cls.env_name(field), "") != ""
        }
        try:
            return cls.model_validate(values)
        except ValidationError as err:
            problems = "; ".join(
                f"{cls.env_name(str(e['loc'][0]))}: {e['msg']}" if e["loc"] else e["msg"] for e in err.errors()
            )
            raise SettingsError(problems) from None
