"""The Job's step clock: spans from the first start to the last end, seconds that add up, and
an inner step never counted in the outer one."""

from __future__ import annotations

import pytest

from modelops.api.types import Step
from modelops.compress.steps import StepClock

pytestmark = pytest.mark.unit


class Ticks:
    """A clock that moves only when told: wall and monotonic time both at `now`."""

    def __init__(self) -> None:
        self.now = 1_767_225_600.0  # 2026-01-01T00:00:00Z

    def __call__(self) -> float:
        return self.now


def test_a_repeated_inner_step_spans_its_runs_and_is_not_counted_in_the_outer_one() -> None:
    ticks = Ticks()
    clock = StepClock(wall=ticks, monotonic=ticks)
    with clock.step(Step.DOWNLOAD):
        ticks.now += 4
    with clock.step(Step.COMPRESS):
        ticks.now += 10
        for _ in range(2):  # two candidates, each evaluated for 3 s
            with clock.step(Step.EVALUATE):
                ticks.now += 3
            ticks.now += 5
    timings = {t.step.value: (t.started_at, t.finished_at, t.seconds) for t in clock.timings()}
    assert timings == {
        "download": ("2026-01-01T00:00:00Z", "2026-01-01T00:00:04Z", 4.0),
        "compress": ("2026-01-01T00:00:04Z", "2026-01-01T00:00:30Z", 20.0),
        "evaluate": ("2026-01-01T00:00:14Z", "2026-01-01T00:00:25Z", 6.0),
    }
    assert [t.step for t in clock.timings()] == [Step.DOWNLOAD, Step.COMPRESS, Step.EVALUATE]


def test_a_step_that_raises_is_still_timed() -> None:
    ticks = Ticks()
    clock = StepClock(wall=ticks, monotonic=ticks)
    with pytest.raises(RuntimeError), clock.step(Step.DOWNLOAD):
        ticks.now += 2
        raise RuntimeError("dropped")
    assert [(t.step, t.seconds) for t in clock.timings()] == [(Step.DOWNLOAD, 2.0)]
