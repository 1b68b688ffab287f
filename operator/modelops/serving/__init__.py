"""Serving on NVIDIA Triton: config.pbtxt rendering (pure) and the model repository layout."""

from modelops.serving.config import (
    BACKENDS,
    DynamicBatching,
    InstanceGroup,
    ServingConfigError,
    TensorSpec,
    TritonModelConfig,
    artifact_filename,
    default_model_filename,
    instance_kind_for,
    render_config_pbtxt,
    triton_data_type,
)
from modelops.serving.layout import layout_model_repository, python_backend_model_source

__all__ = [
    "BACKENDS",
    "DynamicBatching",
    "InstanceGroup",
    "ServingConfigError",
    "TensorSpec",
    "TritonModelConfig",
    "artifact_filename",
    "default_model_filename",
    "instance_kind_for",
    "layout_model_repository",
    "python_backend_model_source",
    "render_config_pbtxt",
    "triton_data_type",
]
