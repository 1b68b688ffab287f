"""Package data: the model.py that Triton's python backend runs (not imported by modelops)."""
