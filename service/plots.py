"""Pictures of a replay report: the end-to-end latency CDF and the per-stage breakdown.

matplotlib is optional (`pip install 'polypstream[plot]'`); only `replay --plot` and the
benchmarks' plots need it.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType


class PlotUnavailableError(RuntimeError):
    """matplotlib is not installed."""


def pyplot() -> ModuleType:
    """matplotlib.pyplot drawing to files (no screen); PlotUnavailableError without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise PlotUnavailableError("--plot needs matplotlib: pip install 'polypstream[plot]'") from exc
    return plt


def plot_replay(report: dict[str, object], out: Path) -> None:
    """Write a PNG: left, the latency CDF; right, p50 and p99 of each server stage."""
    plt = pyplot()
    cdf = report.get("latency_cdf_ms")
    stages = report.get("server_stages_ms")
    if not isinstance(cdf, list) or not isinstance(stages, dict):
        raise ValueError("not a replay report: no latency_cdf_ms / server_stages_ms")
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    if cdf:
        left.plot(cdf, [i / (len(cdf) - 1) for i in range(len(cdf))], color="tab:blue")
    left.set_xlabel("end-to-end latency (ms, client send → result)")
    left.set_ylabel("fraction of frames")
    left.set_title(f"{report.get('frames')} frames, {report.get('fps')} frames/s")
    left.grid(alpha=0.3)
    names = list(stages)
    p50 = [float(stages[n].get("p50") or 0) for n in names]
    p99 = [float(stages[n].get("p99") or 0) for n in names]
    xs = range(len(names))
    right.bar([x - 0.2 for x in xs], p50, width=0.4, label="p50")
    right.bar([x + 0.2 for x in xs], p99, width=0.4, label="p99")
    right.set_xticks(list(xs), names, rotation=20)
    right.set_ylabel("ms")
    right.set_title("server time per stage")
    right.legend()
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)


def plot_alert_sweep(report: dict[str, object], out: Path) -> None:
    """Write a PNG of an eval-video sweep: false-positive activations per minute against
    per-polyp sensitivity (left) and median first-detection delay (right), one point per rule."""
    plt = pyplot()
    rows = report.get("sweep")
    if not isinstance(rows, list):
        raise ValueError("not an eval-video sweep: no sweep rows")
    chosen = report.get("chosen_rule")
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for row in rows:
        rule = row["rule"]
        label = f"{rule['min_seen']}/{rule['window']} h{rule['hold']}"
        colour = "tab:red" if rule == chosen else "tab:blue" if rule["min_seen"] > 1 else "black"
        x = row["fp_per_minute"] or 0.0
        left.scatter(x, row["per_polyp_sensitivity"] or 0.0, color=colour, s=18)
        right.scatter(x, row["first_detection_ms"]["median"] or 0.0, color=colour, s=18)
        if rule == chosen or rule["min_seen"] == 1:
            left.annotate(label, (x, row["per_polyp_sensitivity"] or 0.0), fontsize=8)
    left.set_xlabel("false-positive activations per minute")
    left.set_ylabel("per-polyp sensitivity")
    right.set_xlabel("false-positive activations per minute")
    right.set_ylabel("median first-detection delay (ms)")
    for axis in (left, right):
        axis.grid(alpha=0.3)
    figure.suptitle(
        f"alert rules (N of M frames, held h): {report.get('frames')} frames, {report.get('polyps')} polyps"
    )
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)
