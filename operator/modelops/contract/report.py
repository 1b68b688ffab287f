"""The reasons in the compression Job's report, shared by the Job and the operator."""

from __future__ import annotations

from enum import StrEnum


class JobReason(StrEnum):
    """The reasons a compression Job reports; the operator shows them on the ModelVersion.

    A rejection by the gate is `VersionReason.ACCURACY_GATE_REJECTED`, the name both sides use."""

    ACCURACY_GATE_PASSED = "AccuracyGatePassed"
    SIGNATURE_MISMATCH = "SignatureMismatch"
    UNSUPPORTED_RECIPE = "UnsupportedRecipe"
    INVALID_RECIPE = "InvalidRecipe"
    INVALID_ARGUMENTS = "InvalidArguments"
    CHECKSUM_MISMATCH = "ChecksumMismatch"
    ARTIFACT_NOT_FOUND = "ArtifactNotFound"
    ACCESS_DENIED = "AccessDenied"
    STORAGE_UNREACHABLE = "StorageUnreachable"
    STORAGE_ERROR = "StorageError"
    TLS_VERIFICATION_FAILED = "TLSVerificationFailed"
    TOO_LARGE = "InputTooLarge"
    BAD_DATASET = "BadDataset"
    UNREADABLE_ARTIFACT = "UnreadableArtifact"
    UNSUPPORTED_MODEL = "UnsupportedModel"
    OUT_OF_MEMORY = "OutOfMemory"
    INTERNAL_ERROR = "InternalError"
