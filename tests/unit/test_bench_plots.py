"""The plots of docs/benchmarks.md are what bench/plots.py renders from the committed JSON under
bench/results/: each committed PNG carries its figure's structure (titles, labels, every line's
and bar's data), and the figures rendered again here must have the same. Structure, not pixels,
so a matplotlib upgrade that moves a pixel does not fail it, and a JSON that changes without
`make bench-plots` does."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from matplotlib import pyplot as plt
from PIL import Image

from bench import plots

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    return plots.load()


@pytest.fixture(scope="module")
def rendered(results: dict[str, Any]) -> Iterator[dict[str, list[dict[str, Any]]]]:
    figures = plots.render(results)
    # Through JSON, as the PNG holds it.
    yield {name: json.loads(json.dumps(plots.structure(fig))) for name, fig in figures.items()}
    for fig in figures.values():
        plt.close(fig)


def committed(name: str) -> list[dict[str, Any]]:
    with Image.open(plots.OUT / f"{name}.png") as png:
        return list(json.loads(png.text[plots.STRUCTURE_KEY]))


def axes(structure: list[dict[str, Any]], title: str) -> dict[str, Any]:
    return next(a for a in structure[1:] if a["title"].startswith(title))


def test_every_committed_plot_is_what_the_committed_json_renders(rendered) -> None:
    assert set(rendered) == {"scale", "canary", "autoscaling", "phases"}
    for name, structure in rendered.items():
        assert committed(name) == structure, f"docs/images/benchmarks/{name}.png is stale: run make bench-plots and commit it"


def test_a_changed_result_no_longer_matches_its_committed_plot(results) -> None:
    changed = copy.deepcopy(results)
    changed["autoscaling"]["full_timeline"][-1]["replicas"] = 2
    fig = plots.autoscaling(changed)
    try:
        assert json.loads(json.dumps(plots.structure(fig))) != committed("autoscaling")
    finally:
        plt.close(fig)


def test_the_plots_draw_the_json_figures(results, rendered) -> None:
    scale = results["scale"]
    rss = axes(rendered["scale"], "1,000 ModelVersions")
    line = next(x for x in rss["lines"] if x["label"] == "operator RSS (MiB)")
    assert [[x, y] for x, y in zip(line["x"], line["y"], strict=True)] == scale["operator"]["rss_timeline_mib"]
    milestones = {x["label"]: x["x"][0] for x in rss["lines"] if x["label"].startswith(("creates", "every", "converged"))}
    assert milestones[f"converged ({scale['converged_s']:g} s)"] == scale["converged_s"]
    assert len(milestones) == 4

    timeline = results["autoscaling"]["full_timeline"]
    load = axes(rendered["autoscaling"], "Autoscaling")
    assert next(x for x in load["lines"] if x["label"] == "load (requests/s)")["y"] == [p["rps"] for p in timeline]
    replicas = rendered["autoscaling"][2]  # the twin axes
    assert next(x for x in replicas["lines"] if x["label"] == "replicas asked")["y"] == [p["replicas"] for p in timeline]
    assert next(x for x in replicas["lines"] if x["label"] == "replicas ready")["y"] == [p["ready"] for p in timeline]

    steps = [*plots._steps(results["canary"]["good"]["shares"]), *plots._steps(results["canary"]["bad"]["shares"]),
             *plots._steps(results["canary-exact"]["shares"])]
    shares = axes(rendered["canary"], "Canary share per step")
    bars = {b["label"]: b["height"] for b in shares["bars"]}
    assert bars["step weight (%)"] == [s["weight"] for s in steps]
    assert bars["share to the canary (%)"] == [s["share"] for s in steps]
    errors = axes(rendered["canary"], "Canary error ratio per step")["bars"][0]["height"]
    assert errors == [round(s["canary_failures"] / s["canary"], 4) for s in steps]
    assert any(e == 1.0 for e in errors) and any(e == 0.0 for e in errors), "the bad canary failed every request, the good none"

    stages = axes(rendered["phases"], "At scale")
    assert stages["bars"][0]["width"] == [scale["setup"]["creates_s"], scale["versions_ready_s"], scale["deployments_first_status_s"],
                                          scale["converged_s"]]


def test_the_plots_say_what_their_json_does_not_hold(rendered) -> None:
    assert any("not a count of converged objects" in n for n in axes(rendered["scale"], "1,000 ModelVersions")["notes"])
    assert any("not per-step shares" in n for n in axes(rendered["canary"], "Through Prometheus")["notes"])
    assert "no per-version verify, compress, gate and serve times" in rendered["phases"][0]["suptitle"]


def test_docs_benchmarks_shows_every_plot() -> None:
    text = (plots.ROOT / "docs" / "benchmarks.md").read_text()
    shown = set(re.findall(r"!\[[^\]]+\]\(images/benchmarks/([a-z-]+)\.png\)", text))
    assert shown == set(plots.PLOTS)
