"""Asyncio load generator for Triton, on tritonclient's http.aio and grpc.aio clients.

The tritonclient wheel no longer ships perf_analyzer, so this takes its place in tests and
benchmarks: a fixed number of requests at a fixed concurrency, bounded in time, spread over
one URL or a changing list of endpoints (a rollout moves traffic between pods). Each request's
latency and outcome is recorded; the report gives percentiles, throughput, per-window counts of
successes and failures, and whether the throughput settled by perf_analyzer's stability rule.

The statistics are pure functions so they can be tested without a server.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# perf_analyzer's defaults: the last 3 windows within 10% of each other.
STABILITY_WINDOWS = 3
STABILITY_THRESHOLD = 0.10

Endpoints = Sequence[str] | Callable[[], Sequence[str]]


@dataclass(frozen=True)
class RequestRecord:
    """One request: when it started (seconds since the run began), how long it took, and how it ended."""

    started_s: float
    latency_s: float
    endpoint: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def finished_s(self) -> float:
        return self.started_s + self.latency_s


@dataclass(frozen=True)
class WindowStats:
    """Requests that finished within one measurement window."""

    start_s: float
    length_s: float
    successes: int
    failures: int
    throughput_rps: float
    mean_latency_ms: float


@dataclass(frozen=True)
class LoadReport:
    requests: int
    failures: int
    duration_s: float
    throughput_rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    windows: tuple[WindowStats, ...]
    stable_from_window: int | None
    errors: Mapping[str, int] = field(default_factory=dict)
    by_endpoint: Mapping[str, int] = field(default_factory=dict)  # requests sent to each endpoint
    failures_by_endpoint: Mapping[str, int] = field(default_factory=dict)

    @property
    def stable(self) -> bool:
        return self.stable_from_window is not None


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: the smallest value with at least q% of values at or below it."""
    if not values:
        return math.nan
    if not 0 < q <= 100:
        raise ValueError(f"q: {q} must be in (0, 100]")
    ordered = sorted(values)
    rank = math.ceil(q / 100 * len(ordered))
    return ordered[rank - 1]


def window_stats(records: Sequence[RequestRecord], duration_s: float, window_s: float) -> list[WindowStats]:
    """Bucket requests by the time they finished; the last window may be shorter."""
    if window_s <= 0:
        raise ValueError(f"window_s: {window_s} must be positive")
    count = max(1, math.ceil(duration_s / window_s))
    successes = [0] * count
    failures = [0] * count
    latency_sums = [0.0] * count
    for record in records:
        index = min(int(record.finished_s // window_s), count - 1)
        if record.ok:
            successes[index] += 1
            latency_sums[index] += record.latency_s
        else:
            failures[index] += 1
    windows = []
    for index in range(count):
        start = index * window_s
        length = min(window_s, duration_s - start) if duration_s > start else window_s
        windows.append(
            WindowStats(
                start_s=start,
                length_s=length,
                successes=successes[index],
                failures=failures[index],
                throughput_rps=successes[index] / length,
                mean_latency_ms=1000 * latency_sums[index] / successes[index] if successes[index] else math.nan,
            )
        )
    return windows


def is_stable(windows: Sequence[WindowStats], threshold: float = STABILITY_THRESHOLD) -> bool:
    """perf_analyzer's rule for a run of windows: none idle, and both throughput and mean
    latency within threshold of each other (max / min <= 1 + threshold)."""
    if not windows:
        return False
    throughputs = [w.throughput_rps for w in windows]
    latencies = [w.mean_latency_ms for w in windows]
    if min(throughputs) <= 0:
        return False
    return max(throughputs) / min(throughputs) <= 1 + threshold and max(latencies) / min(latencies) <= 1 + threshold


def first_stable_window(
    windows: Sequence[WindowStats], count: int = STABILITY_WINDOWS, threshold: float = STABILITY_THRESHOLD
) -> int | None:
    """Index of the first of `count` consecutive full windows that are stable, or None."""
    for start in range(len(windows) - count + 1):
        run = windows[start : start + count]
        if all(math.isclose(w.length_s, run[0].length_s) for w in run) and is_stable(run, threshold):
            return start
    return None


def summarize(records: Sequence[RequestRecord], duration_s: float, window_s: float = 1.0) -> LoadReport:
    """Statistics of a finished run. Latency percentiles are over successful requests."""
    latencies_ms = [1000 * r.latency_s for r in records if r.ok]
    failures = [r for r in records if not r.ok]
    windows = window_stats(records, duration_s, window_s)
    full_windows = [w for w in windows if math.isclose(w.length_s, window_s)]
    return LoadReport(
        requests=len(records),
        failures=len(failures),
        duration_s=duration_s,
        throughput_rps=len(latencies_ms) / duration_s if duration_s > 0 else math.nan,
        p50_ms=percentile(latencies_ms, 50),
        p95_ms=percentile(latencies_ms, 95),
        p99_ms=percentile(latencies_ms, 99),
        windows=tuple(windows),
        stable_from_window=first_stable_window(full_windows),
        errors=dict(Counter(r.error for r in failures if r.error is not None)),
        by_endpoint=dict(Counter(r.endpoint for r in records)),
        failures_by_endpoint=dict(Counter(r.endpoint for r in failures)),
    )


@dataclass(frozen=True)
class InferenceCall:
    """What every request sends. validate, if given, raises on a wrong answer."""

    model_name: str
    inputs: Mapping[str, np.ndarray]
    outputs: Sequence[str]
    protocol: str = "http"
    model_version: str = ""
    validate: Callable[[Mapping[str, np.ndarray]], None] | None = None


class _Clients:
    """One client per endpoint for the duration of a run."""

    def __init__(self, call: InferenceCall, concurrency: int) -> None:
        if call.protocol == "http":
            import tritonclient.http.aio as client_module
        elif call.protocol == "grpc":
            import tritonclient.grpc.aio as client_module
        else:
            raise ValueError(f"protocol: {call.protocol!r} must be http or grpc")
        self._module = client_module
        self._http = call.protocol == "http"
        self._concurrency = concurrency
        self._clients: dict[str, Any] = {}
        self._inputs = []
        for name, array in call.inputs.items():
            tensor = client_module.InferInput(name, list(array.shape), _triton_dtype(array))
            tensor.set_data_from_numpy(array)
            self._inputs.append(tensor)
        self._outputs = [client_module.InferRequestedOutput(name) for name in call.outputs]

    def client(self, url: str) -> Any:
        if url not in self._clients:
            if self._http:
                # The HTTP client pools connections; allow one per concurrent request.
                self._clients[url] = self._module.InferenceServerClient(url=url, conn_limit=self._concurrency)
            else:
                self._clients[url] = self._module.InferenceServerClient(url=url)
        return self._clients[url]

    async def infer(self, url: str, call: InferenceCall) -> Mapping[str, np.ndarray]:
        result = await self.client(url).infer(
            call.model_name, self._inputs, model_version=call.model_version, outputs=self._outputs
        )
        return {name: result.as_numpy(name) for name in call.outputs}

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()


def _triton_dtype(array: np.ndarray) -> str:
    from tritonclient.utils import np_to_triton_dtype

    return np_to_triton_dtype(array.dtype)


def _short_error(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return f"{type(error).__name__}: {text[:200]}"


async def generate_load(
    endpoints: Endpoints,
    call: InferenceCall,
    *,
    requests: int,
    concurrency: int,
    time_limit_s: float,
    window_s: float = 1.0,
    request_timeout_s: float = 10.0,
) -> LoadReport:
    """Send up to `requests` requests, `concurrency` at a time, for at most `time_limit_s`
    (plus one request timeout for those in flight). Endpoints are taken round robin; a
    callable is asked again before every request, so a changing set is followed."""
    if requests < 1 or concurrency < 1 or time_limit_s <= 0:
        raise ValueError("requests, concurrency and time_limit_s must be positive")
    clients = _Clients(call, concurrency)
    records: list[RequestRecord] = []
    issued = 0
    started = time.perf_counter()
    deadline = started + time_limit_s

    async def worker() -> None:
        nonlocal issued
        while issued < requests and time.perf_counter() < deadline:
            sequence = issued
            issued += 1
            targets = list(endpoints() if callable(endpoints) else endpoints)
            url = targets[sequence % len(targets)] if targets else ""
            begin = time.perf_counter()
            error = None
            try:
                if not url:
                    raise LookupError("no endpoints to send to")
                outputs = await asyncio.wait_for(clients.infer(url, call), request_timeout_s)
                if call.validate is not None:
                    call.validate(outputs)
            except Exception as exc:  # every failure is data for the report
                error = _short_error(exc)
            end = time.perf_counter()
            records.append(RequestRecord(begin - started, end - begin, url, error))

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await clients.close()
    duration = time.perf_counter() - started
    return summarize(records, duration, window_s)


def run_load(endpoints: Endpoints, call: InferenceCall, **options: Any) -> LoadReport:
    """Synchronous wrapper around generate_load for scripts and tests."""
    return asyncio.run(generate_load(endpoints, call, **options))
