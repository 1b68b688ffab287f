"""Exit codes of `python -m modelops.compress`, shared with the operator (no torch import).

The Job's backoffLimit is meant to retry only TRANSIENT; the operator's pod failure policy
turns the permanent codes into a terminal phase at once.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    SUCCESS = 0
    USAGE = 2
    BAD_ARTIFACT = 10
    REJECTED = 11
    TRANSIENT = 12


SUCCESS = ExitCode.SUCCESS
USAGE = ExitCode.USAGE
BAD_ARTIFACT = ExitCode.BAD_ARTIFACT
REJECTED = ExitCode.REJECTED
TRANSIENT = ExitCode.TRANSIENT

PERMANENT_FAILURES = frozenset({USAGE, BAD_ARTIFACT, REJECTED})
