"""Conditions keep their transition time unless their status changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from modelops.core.conditions import Cond, find, merge_conditions, timestamp

pytestmark = pytest.mark.unit

T0 = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def test_timestamp_is_rfc3339_utc_seconds() -> None:
    assert timestamp(T0) == "2025-03-01T12:00:00Z"
    assert timestamp(T0.astimezone(timezone(timedelta(hours=2)))) == "2025-03-01T12:00:00Z"


def test_new_condition_gets_now() -> None:
    merged = merge_conditions(None, [Cond("Ready", "False", "Waiting", "m")], 3, T0)
    assert merged == [
        {"type": "Ready", "status": "False", "reason": "Waiting", "message": "m",
         "lastTransitionTime": "2025-03-01T12:00:00Z", "observedGeneration": 3}
    ]


@pytest.mark.parametrize(
    ("old_status", "new_status", "keeps_time"),
    [("True", "True", True), ("False", "True", False), ("Unknown", "False", False)],
)
def test_transition_time_moves_only_with_status(old_status, new_status, keeps_time) -> None:
    old = [{"type": "Ready", "status": old_status, "reason": "A", "message": "", "lastTransitionTime": "2020-01-01T00:00:00Z"}]
    merged = merge_conditions(old, [Cond("Ready", new_status, "B", "changed message")], 1, T0)
    expected = "2020-01-01T00:00:00Z" if keeps_time else "2025-03-01T12:00:00Z"
    assert merged[0]["lastTransitionTime"] == expected
    assert merged[0]["reason"] == "B"


def test_merging_the_same_conditions_twice_is_stable() -> None:
    wanted = [Cond("Ready", "True", "Serving", "ok"), Cond("Degraded", "False", "AsExpected", "")]
    first = merge_conditions(None, wanted, 2, T0)
    assert merge_conditions(first, wanted, 2, T0 + timedelta(hours=1)) == first


def test_lookup_helpers() -> None:
    conds = merge_conditions(None, [Cond("Ready", "True", "R")], None, T0)
    assert find(conds, "Degraded") is None
    assert find(conds, "Ready")["reason"] == "R" and "observedGeneration" not in conds[0]
