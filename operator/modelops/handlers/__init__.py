"""Thin kopf handlers: watch events feed the object cache and become keys in a work queue;
reconciles read through `reads.Reads` (the watch-fed cache, and the Secrets and ConfigMaps a
Model names, a few seconds old), call the pure core, and write through the Kubernetes adapter."""
