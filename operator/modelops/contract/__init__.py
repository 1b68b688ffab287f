"""The contract between the operator and the compression Job: exit codes (`exitcodes`), the
tensor interface of an artifact (`interface`), the typed report and its reasons (`report`), and
the one table of artifact formats and file names (`formats`), which serving reads too.

Both sides import it; it imports neither side, nor any ML framework.
"""
