#!/usr/bin/env python3
"""Render the plots of docs/benchmarks.md from the JSON under bench/results/ (`make bench-plots`).

Each PNG under docs/images/benchmarks/ carries, in a PNG text chunk, the structure of its figure
(titles, axis labels, and every line's and bar's data). tests/unit/test_bench_plots.py renders
the figures again from the committed JSON and compares that structure, not the pixels, so a
plot cannot drift from its results. Where a JSON holds no timeline, the plot says so and shows
what the JSON has.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
from matplotlib import pyplot as plt
from matplotlib.axes import Axes
from matplotlib.container import BarContainer
from matplotlib.figure import Figure

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
OUT = ROOT / "docs" / "images" / "benchmarks"
# The PNG text chunk that holds the figure's structure.
STRUCTURE_KEY = "modelops-structure"
DPI = 100

Results = dict[str, Any]


def load(results: Path = RESULTS) -> dict[str, Results]:
    """Every bench/results/<name>.json, by name."""
    return {path.stem: json.loads(path.read_text()) for path in sorted(results.glob("*.json"))}


def _note(ax: Axes, text: str, below: float = -0.16) -> None:
    """A caption under the axes: what the JSON does not hold."""
    ax.text(0.0, below, text, transform=ax.transAxes, fontsize=8, color="0.35", va="top", ha="left")


def scale(results: dict[str, Results]) -> Figure:
    """Convergence and RSS over time at scale (bench/results/scale.json)."""
    data = results["scale"]
    setup, operator = data["setup"], data["operator"]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    times, rss = zip(*operator["rss_timeline_mib"], strict=True)
    ax.plot(times, rss, label="operator RSS (MiB)", color="tab:blue")
    ax.axhline(data["targets"]["peak_rss_mib"], color="tab:red", linestyle=":", label=f"peak RSS target ({data['targets']['peak_rss_mib']:g} MiB)")
    milestones = [
        ("creates done", setup["creates_s"]),
        ("every version Ready", data["versions_ready_s"]),
        ("every deployment has a status", data["deployments_first_status_s"]),
        ("converged", data["converged_s"]),
    ]
    for (name, seconds), color in zip(milestones, ("0.6", "tab:green", "tab:orange", "black"), strict=True):
        ax.axvline(seconds, color=color, linestyle="--", label=f"{name} ({seconds:g} s)")
    ax.set_title(f"{setup['versions']:,} ModelVersions + {setup['deployments']:,} ModelDeployments: operator RSS while they converge")
    ax.set_xlabel("seconds from the first create")
    ax.set_ylabel("MiB")
    ax.set_ylim(bottom=0)
    ax.legend(loc="lower right", fontsize=8)
    _note(ax, "scale.json holds RSS samples (every 2 s, from just before the first create) and the convergence milestones,\n"
          "not a count of converged objects over time", below=-0.14)
    return fig


def _share_bars(ax: Axes, runs: list[tuple[str, list[dict[str, Any]]]]) -> None:
    """Per step of each run: the step's weight beside the share of requests the canary took."""
    labels = [f"{run}\nstep {i + 1}" for run, shares in runs for i, _ in enumerate(shares)]
    steps = [s for _, shares in runs for s in shares]
    positions = list(range(len(steps)))
    ax.bar([p - 0.2 for p in positions], [s["weight"] for s in steps], width=0.4, label="step weight (%)", color="0.7")
    measured = ax.bar([p + 0.2 for p in positions], [s["share"] for s in steps], width=0.4, label="share to the canary (%)", color="tab:blue")
    ax.bar_label(measured, fmt="%.1f", fontsize=7)
    ax.set_xticks(positions, labels, fontsize=8)
    ax.set_ylabel("% of the step's requests")
    ax.set_title("Canary share per step")
    ax.legend(fontsize=8)


def _error_bars(ax: Axes, runs: list[tuple[str, list[dict[str, Any]]]]) -> None:
    labels = [f"{run}\nstep {i + 1}" for run, shares in runs for i, _ in enumerate(shares)]
    ratios = [s["canary_failures"] / s["canary"] if s["canary"] else 0.0 for _, shares in runs for s in shares]
    ax.bar_label(ax.bar(range(len(ratios)), ratios, width=0.5, label="canary error ratio", color="tab:red"), fmt="%.2f", fontsize=7)
    ax.set_xticks(range(len(ratios)), labels, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("failed / sent to the canary")
    ax.set_title("Canary error ratio per step")
    ax.legend(fontsize=8)


def _analysis_bars(ax: Axes, runs: dict[str, Results]) -> None:
    """The last analysis of each run through Prometheus: its JSON holds no per-step shares."""
    names = list(runs)
    canary = [runs[n]["last_analysis"]["canary"]["errorRatio"] for n in names]
    stable = [runs[n]["last_analysis"]["stable"]["errorRatio"] for n in names]
    positions = list(range(len(names)))
    ax.bar_label(ax.bar([p - 0.2 for p in positions], canary, width=0.4, label="canary", color="tab:red"), fmt="%.2f", fontsize=7)
    ax.bar_label(ax.bar([p + 0.2 for p in positions], stable, width=0.4, label="stable", color="tab:green"), fmt="%.2f", fontsize=7)
    ax.set_xticks(positions, [f"{n} canary" for n in names], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("error ratio in the last analysis")
    ax.set_title("Through Prometheus (last analysis)")
    ax.legend(fontsize=8)
    _note(ax, "canary-prometheus.json holds the last\nanalysis of each run, not per-step shares", below=-0.2)


def _steps(shares: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """A run's shares, keyed by step index ("0", "1", ...), in step order."""
    return [shares[k] for k in sorted(shares, key=int)]


def canary(results: dict[str, Results]) -> Figure:
    """Canary shares and error ratios per step (canary.json, canary-exact.json, canary-prometheus.json)."""
    runs = [
        ("good", _steps(results["canary"]["good"]["shares"])),
        ("bad", _steps(results["canary"]["bad"]["shares"])),
        ("exact", _steps(results["canary-exact"]["shares"])),
    ]
    fig, (shares, errors, prometheus) = plt.subplots(1, 3, figsize=(14, 4.5), gridspec_kw={"width_ratios": [5, 5, 2.5]})
    _share_bars(shares, runs)
    _error_bars(errors, runs)
    prom = results["canary-prometheus"]
    _analysis_bars(prometheus, {"good": prom["good"], "bad": prom["bad"]})
    fig.suptitle("Canary rollouts: good and bad canaries (canary.json), the acceptance's 10 % then 50 % (canary-exact.json)")
    fig.tight_layout()
    return fig


def autoscaling(results: dict[str, Results]) -> Figure:
    """Autoscaling replicas against load (autoscaling.json's full timeline)."""
    data = results["autoscaling"]
    timeline = data.get("full_timeline") or data["timeline"]
    t = [p["t_s"] for p in timeline]
    fig, load = plt.subplots(figsize=(9, 4.5))
    load.plot(t, [p["rps"] for p in timeline], color="tab:blue", label="load (requests/s)")
    load.set_xlabel("seconds from the first burst")
    load.set_ylabel("requests/s")
    load.set_ylim(bottom=0)
    replicas = load.twinx()
    replicas.step(t, [p["replicas"] for p in timeline], where="post", color="tab:orange", label="replicas asked")
    replicas.step(t, [p["ready"] for p in timeline], where="post", color="tab:green", linestyle="--", label="replicas ready")
    replicas.set_ylabel("replicas")
    replicas.set_ylim(0, max(p["replicas"] for p in timeline) + 1)
    replicas.yaxis.get_major_locator().set_params(integer=True)
    load.set_title(f"Autoscaling on inferences per second: {data['requests']:,} requests, {data['failures']} failed")
    lines = load.get_lines() + replicas.get_lines()
    load.legend(lines, [line.get_label() for line in lines], loc="upper right", fontsize=8)
    return fig


def phases(results: dict[str, Results]) -> Figure:
    """The time to ready per phase that the results hold: the scale run's stages, an
    autoscaling scale-up (asked to all ready) and Triton's own load of a model."""
    data = results["scale"]
    stages = [
        ("create 2,000 objects", 0.0, data["setup"]["creates_s"]),
        ("every version Ready", 0.0, data["versions_ready_s"]),
        ("every deployment has a status", 0.0, data["deployments_first_status_s"]),
        ("converged", 0.0, data["converged_s"]),
    ]
    timeline = results["autoscaling"].get("full_timeline") or results["autoscaling"]["timeline"]
    asked = next(p for p in timeline if p["replicas"] > timeline[0]["replicas"])
    ready = next(p for p in timeline if p["t_s"] >= asked["t_s"] and p["ready"] >= asked["replicas"])
    servers = results["triton"]["servers"]
    fig, (scale_ax, serve_ax) = plt.subplots(1, 2, figsize=(13, 4), gridspec_kw={"width_ratios": [3, 2]})
    bars = scale_ax.barh([s[0] for s in stages], [s[2] - s[1] for s in stages], left=[s[1] for s in stages], color="tab:blue",
                         label="seconds from the first create")
    scale_ax.bar_label(bars, fmt="%.1f s", fontsize=8)
    scale_ax.invert_yaxis()
    scale_ax.set_xlabel("seconds from the first create")
    scale_ax.set_title(f"At scale (scale.json): {data['setup']['versions']:,} versions, {data['setup']['deployments']:,} deployments")
    rows = [(f"scale-up {timeline[0]['replicas']} → {asked['replicas']} replicas: asked → all ready", ready["t_s"] - asked["t_s"])]
    rows += [(f"Triton loads the model: {s['configuration']} (pass {s['pass']})", s["ready_s"]) for s in servers]
    serve_ax.bar_label(serve_ax.barh([r[0] for r in rows], [r[1] for r in rows], color="tab:green", label="seconds"), fmt="%.1f s", fontsize=8)
    serve_ax.invert_yaxis()
    serve_ax.tick_params(axis="y", labelsize=8)
    serve_ax.set_xlabel("seconds")
    serve_ax.set_title("Serving (autoscaling.json, triton.json)")
    fig.suptitle("Time to ready per phase: the results hold no per-version verify, compress, gate and serve times "
                 "(modelops_phase_duration_seconds has them live)", fontsize=9)
    fig.tight_layout()
    return fig


# The plots of docs/benchmarks.md, by file name (docs/images/benchmarks/<name>.png).
PLOTS: dict[str, Callable[[dict[str, Results]], Figure]] = {
    "scale": scale,
    "canary": canary,
    "autoscaling": autoscaling,
    "phases": phases,
}


def _round(values: Any) -> list[Any]:
    out: list[Any] = []
    for v in values:
        try:
            out.append(round(float(v), 4))
        except (TypeError, ValueError):
            out.append(str(v))
    return out


def structure(fig: Figure) -> list[dict[str, Any]]:
    """What a figure shows, as data: its title, and per axes its title, labels, notes, lines and bars."""
    fig.canvas.draw()  # tick labels exist once drawn
    out: list[dict[str, Any]] = [{"suptitle": fig.get_suptitle()}]
    for ax in fig.get_axes():
        bars = [c for c in ax.containers if isinstance(c, BarContainer)]
        out.append({
            "title": ax.get_title(),
            "xlabel": ax.get_xlabel(),
            "ylabel": ax.get_ylabel(),
            "notes": [t.get_text() for t in ax.texts],
            "ticks": [t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels() if t.get_text() and not _number(t.get_text())],
            "lines": [{"label": line.get_label(), "x": _round(line.get_xdata()), "y": _round(line.get_ydata())} for line in ax.get_lines()],
            "bars": [{"label": c.get_label(), "left": _round(p.get_x() for p in c.patches), "width": _round(p.get_width() for p in c.patches),
                      "height": _round(p.get_height() for p in c.patches)} for c in bars],
        })
    return out


def _number(text: str) -> bool:
    try:
        float(text.replace("−", "-"))
    except ValueError:
        return False
    return True


def render(results: dict[str, Results]) -> dict[str, Figure]:
    return {name: plot(results) for name, plot in PLOTS.items()}


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, fig in render(load()).items():
        path = OUT / f"{name}.png"
        fig.savefig(path, dpi=DPI, bbox_inches="tight",
                    metadata={STRUCTURE_KEY: json.dumps(structure(fig), sort_keys=True), "Software": None})
        plt.close(fig)
        print(path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
