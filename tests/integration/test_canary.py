"""Canary rollouts on the test bed: the real operator, apiserver, node agent and tritonserver,
under load from the project's load generator (e2e/loadgen.py), with no Prometheus and no
Gateway API. A good version walks its steps and is promoted with no failed request; a version
whose every request fails is aborted at its first step from Triton's own counters.

The test bed has no kube-proxy: the load generator balances over the Service's ready
endpoints, as kube-proxy would, so a step's traffic share is its share of the ready pods.
The acceptance's exact 10 % then 50 % with 9 stable pods is test_canary_exact.py (on demand).
"""

from __future__ import annotations

import json
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
from tests.unit.test_chart_argocd_health import health

pytestmark = pytest.mark.integration

STABLE = 4
# With 4 stable pods a weight of 20 % is 1 canary pod and 50 % is 4: the shares are exact.
STEPS = [{"weight": 20, "pause": "15s"}, {"weight": 50, "pause": "15s"}]
# Latency is judged at the end of each pause, from mean latencies on a shared 2-core machine:
# the ratio's limit leaves room for that noise; errors are judged at once.
ANALYSIS = {"maxErrorRatio": 0.01, "maxLatencyRatio": 4, "minRequests": 200, "interval": "2s"}
MIN_REQUESTS = 10_000


@pytest.mark.timeout(1500)
def test_a_good_canary_is_promoted_and_a_bad_one_aborted_under_load(testbed, namespace, storage, digits, start_operator) -> None:
    start_operator(resync_seconds=30)
    model, docs = publish_versions(storage, digits)
    apply_docs(testbed, namespace, [storage.secret("storage"), model, docs[1], serve(STABLE, STEPS, ANALYSIS)])
    kubectl(testbed, "wait", "-n", namespace, "--for=condition=Ready", "modeldeployment/serve", "--timeout=400s", timeout=430)
    inputs = np.load(support.digits_model(0).eval_npz)["inputs"]
    log: dict[str, Any] = {}

    # -- a good canary: version 2, 20 % then 50 %, then promoted --------------------------------
    with Traffic(testbed, namespace, inputs, STABLE) as good:
        apply_docs(testbed, namespace, [docs[2]])
        seen_health: set[str] = set()

        def watched_until_promoted() -> bool:
            seen_health.add(health("ModelDeployment", get_json(testbed, namespace, "modeldeployment", "serve"))[0])
            return promoted(testbed, namespace, 2)

        eventually(watched_until_promoted, 900, "version 2 promoted and served by the stable pods", interval=1)
        eventually(lambda: good.requests() >= MIN_REQUESTS, 600, f"{MIN_REQUESTS} requests", interval=1)
    good_shares = good.shares(2)
    log["good"] = {"requests": good.requests(), "failures": good.failures(), "shares": good_shares,
                   "stable_available_min": min(good.stable_available), "argo_health_seen": sorted(seen_health)}
    print("\ngood canary:", json.dumps(log["good"], indent=2))
    assert good.requests() >= MIN_REQUESTS and good.failures() == 0, log["good"]
    assert sorted(good_shares) == [0, 1], good_shares
    for step, expected in ((0, 20.0), (1, 50.0)):
        assert good_shares[step]["weight"] == expected
        assert abs(good_shares[step]["share"] - expected) <= 5, good_shares
    assert "Progressing" in seen_health
    md = get_json(testbed, namespace, "modeldeployment", "serve")
    assert health("ModelDeployment", md)[0] == "Healthy"
    events = [r for r, _ in reasons(testbed, namespace)]
    assert {"CanaryStarted", "CanaryStepPassed", "CanaryPromoted"} <= set(events), events

    # -- a bad canary: version 3 fails every request, aborted at its first step -----------------
    with Traffic(testbed, namespace, inputs, STABLE) as bad:
        apply_docs(testbed, namespace, [docs[3]])
        kubectl(testbed, "wait", "-n", namespace, "--for=jsonpath={.status.canary.phase}=Aborted",
                "modeldeployment/serve", "--timeout=300s", timeout=330)
        md = get_json(testbed, namespace, "modeldeployment", "serve")
        eventually(lambda: get_json(testbed, namespace, "deployment", "serve-canary")["status"].get("replicas", 0) == 0,
                   120, "the canary pods gone")
    status = md["status"]
    bad_shares = bad.shares(3)
    log["bad"] = {"requests": bad.requests(), "failures": bad.failures(), "shares": bad_shares,
                  "stable_available_min": min(bad.stable_available), "message": status["canary"]["message"],
                  "last_analysis": status["canary"].get("lastAnalysis")}
    print("\nbad canary:", json.dumps(log["bad"], indent=2))
    assert status["canary"]["step"] == 0 and status["failedVersions"] == [3]
    assert status["rollouts"][-1]["version"] == 3 and status["rollouts"][-1]["outcome"] == "Aborted"
    assert "error ratio" in status["canary"]["message"] and "failed" in status["canary"]["message"]
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "CanaryAborted")
    assert health("ModelDeployment", md)[0] == "Degraded"
    assert get_json(testbed, namespace, "modelversion", "digits-v3")["status"]["failedBy"] == ["serve"]
    assert ("CanaryAborted" in [r for r, _ in reasons(testbed, namespace)])
    # No more than the step's share went to the canary, and the stable pods never shrank.
    assert bad_shares[0]["share"] is not None and bad_shares[0]["share"] <= bad_shares[0]["weight"] + 5, bad_shares
    assert min(bad.stable_available) >= STABLE and min(good.stable_available) >= STABLE
    assert status["servedVersion"] == 2 and status["desiredVersion"] == 2
    out = Path(testbed.state_dir) / "canary.json"
    out.write_text(json.dumps(log, indent=2, default=str))
