"""The compression Job's steps (download, compress, evaluate) as wall-clock spans, for the
report's `timings` and so for the ModelVersion's status.timings (api/types.Step).

A step may run more than once (quantization auto compresses and evaluates each candidate in
turn): its span runs from its first start to its last end and its seconds add up. A step that
runs inside another (the gate's evaluation inside compression) is not counted in the outer
step's seconds, so the seconds of the steps never count the same moment twice."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from modelops.api.types import Step, StepTiming


@dataclass
class _Span:
    started: float
    finished: float
    seconds: float


class StepClock:
    def __init__(self, wall: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.perf_counter) -> None:
        self._wall, self._monotonic = wall, monotonic
        self._spans: dict[Step, _Span] = {}
        self._inner: list[float] = []  # seconds of inner steps, per step under way

    @contextmanager
    def step(self, name: Step) -> Iterator[None]:
        started_wall, started = self._wall(), self._monotonic()
        self._inner.append(0.0)
        try:
            yield
        finally:
            inner = self._inner.pop()
            elapsed = self._monotonic() - started
            if self._inner:
                self._inner[-1] += elapsed
            own = max(0.0, elapsed - inner)
            span = self._spans.get(name)
            ended = started_wall + elapsed
            self._spans[name] = (_Span(started_wall, ended, own) if span is None
                                 else _Span(span.started, ended, span.seconds + own))

    def timings(self) -> list[StepTiming]:
        def text(moment: float) -> str:
            return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

        return [StepTiming(step=name, started_at=text(s.started), finished_at=text(s.finished), seconds=round(s.seconds, 3))
                for name, s in sorted(self._spans.items(), key=lambda item: list(Step).index(item[0]))]
