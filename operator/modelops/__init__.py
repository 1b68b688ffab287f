"""modelops: a Kubernetes operator for the lifecycle of AI models."""

__version__ = "0.1.0"
