"""Thin kopf handlers: watch events become keys in a work queue; reconciles read fresh state,
call the pure core, and write through the Kubernetes adapter."""
