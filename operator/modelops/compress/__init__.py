"""The compressor that runs inside the compression Job: `python -m modelops.compress`.

Importing this package is cheap and imports no torch, so the operator can use
`modelops.contract.exitcodes`; the heavy libraries are imported by the modules that need them.
"""
