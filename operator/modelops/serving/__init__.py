"""Serving: the runtime seam (`runtime.ServingRuntime`) and its one implementation, NVIDIA
Triton (`triton`): config.pbtxt rendering (pure), the pod's server container and the model
repository layout the fetch container writes."""

from modelops.serving.config import (
    ServedModel,
    ServingConfigError,
    artifact_filename,
    backend_of,
    default_model_filename,
    instance_kind_for,
    render_config_pbtxt,
    served_model,
)
from modelops.serving.layout import layout_model_repository, python_backend_model_source

__all__ = [
    "ServedModel",
    "ServingConfigError",
    "artifact_filename",
    "backend_of",
    "default_model_filename",
    "instance_kind_for",
    "layout_model_repository",
    "python_backend_model_source",
    "render_config_pbtxt",
    "served_model",
]
