"""Thin kopf handlers: watch events feed the informer and become keys in a work queue;
reconciles read through `reads.Reads` (the watch-fed informer, and the Secrets and ConfigMaps a
Model names, a few seconds old), call the pure core, and write through the Kubernetes adapter."""
