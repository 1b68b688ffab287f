"""The one table of artifact formats and their file names, for the Job (the file it downloads
its source to and the file it publishes) and for serving (the file a version folder holds)."""

from __future__ import annotations

from pathlib import PurePath
from typing import Final

from modelops.api.version import ArtifactFormat

# torch.export.load insists on the .pt2 suffix.
ARTIFACT_FILES: Final[dict[ArtifactFormat, str]] = {
    ArtifactFormat.ONNX: "model.onnx",
    ArtifactFormat.TORCHSCRIPT: "model.pt",
    ArtifactFormat.EXPORTED_PROGRAM: "model.pt2",
}


def artifact_file(artifact_format: str) -> str:
    """The file name an artifact of this format gets; ValueError for a name that is no format,
    KeyError for a format that is not one file."""
    return ARTIFACT_FILES[ArtifactFormat(artifact_format)]


def artifact_suffix(artifact_format: str) -> str:
    """The suffix of that file (.onnx, .pt, .pt2), which the loaders look at; empty for a
    format not in the table, which the Job then reports as unsupported."""
    if artifact_format not in ARTIFACT_FILES:
        return ""
    return PurePath(artifact_file(artifact_format)).suffix
