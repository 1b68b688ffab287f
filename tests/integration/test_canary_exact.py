"""The acceptance's good canary, exactly: 10 %, then 50 %, then promote, with zero failed
requests out of at least 10,000, and the share of requests the canary really got at each step
against its weight.

Without Gateway API traffic follows pods, so exact weights need 9 stable pods: 10 % is 1
canary pod (1 of 10) and 50 % is 9 (9 of 18). That is 18 tritonserver processes at the second
step (and one more while the promotion rolls the stable pods), too heavy for `make test`;
this runs on demand with `make test-canary-exact` (marker `canary_exact`, docs/testbed.md).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from e2e import support
from tests.integration.canaryload import Traffic, promoted, publish_versions, reasons, serve
from tests.integration.conftest import (
    apply_docs,
    eventually,
    get_json,
    kubectl,
)

pytestmark = [pytest.mark.integration, pytest.mark.canary_exact]

STABLE = 9
STEPS = [{"weight": 10, "pause": "30s"}, {"weight": 50, "pause": "30s"}]
# As in test_canary.py: latency is judged from mean latencies on a shared 2-core machine.
ANALYSIS = {"maxErrorRatio": 0.01, "maxLatencyRatio": 4, "minRequests": 200, "interval": "2s"}
MIN_REQUESTS = 10_000
# The load generator takes the ready endpoints round robin from the first in each burst, so a
# burst that ran with a step's pods steady gives the canary exactly its pods' share when the
# burst divides evenly over the endpoints: 360 requests over 10 or 18 pods. (With 300, the first
# 12 of 18 endpoints get 17 requests and the others 16: 9 canary pods among those 12 got 51.0 %.)
BURST = 360
# In percentage points: room for a pod that leaves the endpoints for a moment (a readiness
# probe timing out under load) within a burst that still counts.
TOLERANCE = 3.0


@pytest.mark.timeout(2700)
def test_a_good_canary_at_exactly_10_then_50_percent_is_promoted_with_no_failed_request(
    testbed, namespace, storage, digits, start_operator
) -> None:
    started = time.monotonic()
    start_operator(resync_seconds=30)
    model, docs = publish_versions(storage, digits, count=2)
    apply_docs(testbed, namespace, [storage.secret("storage"), model, docs[1], serve(STABLE, STEPS, ANALYSIS, progress_deadline=600)])
    kubectl(testbed, "wait", "-n", namespace, "--for=condition=Ready", "modeldeployment/serve", "--timeout=900s", timeout=930)
    inputs = np.load(support.digits_model(0).eval_npz)["inputs"]
    stable_up = time.monotonic()

    with Traffic(testbed, namespace, inputs, STABLE, burst=BURST) as good:
        apply_docs(testbed, namespace, [docs[2]])

        eventually(lambda: promoted(testbed, namespace, 2), 1800, "version 2 promoted and served by the stable pods", interval=2)
        eventually(lambda: good.requests() >= MIN_REQUESTS, 600, f"{MIN_REQUESTS} requests", interval=1)
    shares = good.shares(2)
    md = get_json(testbed, namespace, "modeldeployment", "serve")
    log: dict[str, Any] = {
        "stable_replicas": STABLE, "requests": good.requests(), "failures": good.failures(), "shares": shares,
        "stable_available_min": min(good.stable_available), "bursts": len(good.bursts),
        "seconds": {"stable_up": round(stable_up - started), "canary": round(time.monotonic() - stable_up),
                    "total": round(time.monotonic() - started)},
        "events": [e for e in reasons(testbed, namespace) if e[0].startswith("Canary")],
        "last_analysis": (md["status"].get("canary") or {}).get("lastAnalysis"),
    }
    print("\nexact canary:", json.dumps(log, indent=2, default=str))
    (Path(testbed.state_dir) / "canary-exact.json").write_text(json.dumps(log, indent=2, default=str))
    assert good.requests() >= MIN_REQUESTS and good.failures() == 0, log
    assert sorted(shares) == [0, 1], shares
    for step, weight in enumerate((10.0, 50.0)):
        entry = shares[step]
        assert entry["weight"] == weight, shares
        assert entry["requests"] >= 1000, f"too few steady requests at step {step + 1} to measure its share: {shares}"
        assert abs(entry["share"] - weight) <= TOLERANCE, shares
    canary = md["status"]["canary"]
    assert (canary["phase"], canary["step"], canary["effectiveWeight"]) == ("Promoted", 1, 50.0), canary
    assert min(good.stable_available) >= STABLE, good.stable_available
    events = [r for r, _ in reasons(testbed, namespace)]
    assert events.count("CanaryStepPassed") == 1 and {"CanaryStarted", "CanaryPromoted"} <= set(events), events
