"""The contract between the operator and the compression Job: exit codes (`exitcodes`), the
tensor interface of an artifact (`interface`) and the reasons of the Job's report (`report`).

Both sides import it; it imports neither side, nor any ML framework.
"""
