"""Thin kopf handlers: watch events feed the object cache and become keys in a work queue;
reconciles read the watch-fed cache (and, where docs/architecture.md says so, a few live or
short-lived reads), call the pure core, and write through the Kubernetes adapter."""
