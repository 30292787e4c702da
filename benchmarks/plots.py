"""The report's PNG plots: latency versus T per contender, and speedup bars per shape (drawn for
:class:`benchmarks.outputs.Outputs`, which saves them)."""

from __future__ import annotations

from typing import Any, Optional

from benchmarks.contenders import BASELINE
from benchmarks.suite_results import Results, floor_ms, speedup


def plot_latency(results: Results, plt) -> Optional[Any]:
    """Latency versus T per contender (log-log), one panel per (workload, B).

    Args:
        results (Results): a parsed file.
        plt: ``matplotlib.pyplot``.

    Returns:
        Figure | None: the figure, or None when nothing has T > 0.
    """
    workloads = [w for w in results.workloads() if w != "stream"]
    batches = sorted({r.batch for r in results.rows if r.workload in workloads})
    if not workloads or not batches:
        return None
    fig, axes = plt.subplots(len(workloads), len(batches), figsize=(4.2 * len(batches), 3.2 * len(workloads)),
                             squeeze=False, layout="constrained")
    for i, workload in enumerate(workloads):
        for j, b in enumerate(batches):
            ax = axes[i][j]
            for c in results.contenders():
                pts = sorted((r.time, r.median_ms) for r in results.rows
                             if r.workload == workload and r.batch == b and r.contender == c)
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=c)
            floor = sorted((r.time, floor_ms(results, r)) for r in results.rows
                           if r.workload == workload and r.batch == b and r.contender == BASELINE and r.gflop)
            if floor:
                ax.plot([p[0] for p in floor], [p[1] for p in floor], "k--", linewidth=1, label="compute floor")
            ax.set_xscale("log", base=2)
            ts = sorted({r.time for r in results.rows if r.workload == workload and r.batch == b})
            ax.set_xticks(ts, [str(t) for t in ts])
            ax.minorticks_off()
            ax.set_yscale("log")
            ax.set_title(f"{workload}, B={b}", fontsize=10)
            ax.set_xlabel("T (frames per clip)")
            ax.set_ylabel("median latency (ms)")
            ax.grid(True, which="both", alpha=0.3)
            if ax.has_data():
                ax.legend(fontsize=7)
    fig.suptitle(f"Latency vs T - {results.device_name}", fontsize=11)
    return fig


def plot_speedup(results: Results, plt) -> Optional[Any]:
    """Bars of speedup over eager fp32 per (workload, B, T) and contender (a figure); None without any speedup."""
    others = [c for c in results.contenders() if c != BASELINE]
    groups = [(w, b, t) for w in results.workloads() for b, t in results.shapes(w)]
    values = {(g, c): speedup(results, r) for g in groups for c in others
              if (r := results.row(g[0], g[1], g[2], c)) is not None}
    values = {k: v for k, v in values.items() if v is not None}
    if not values:
        return None
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(groups) * max(1, len(others)) + 2), 4), layout="constrained")
    width = 0.8 / max(1, len(others))
    for k, c in enumerate(others):
        xs = [i + k * width for i, g in enumerate(groups) if (g, c) in values]
        ys = [values[(g, c)] for g in groups if (g, c) in values]
        if xs:
            ax.bar(xs, ys, width=width, label=c)
    ax.axhline(1.0, color="k", linewidth=1)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))])
    ax.set_xticklabels([f"{w}\nB{b} T{t}" for w, b, t in groups], fontsize=7)
    ax.set_ylabel(f"speedup over {BASELINE} (x)")
    ax.set_yscale("log")
    ax.set_title(f"Speedup over eager PyTorch fp32 - {results.device_name}", fontsize=11)
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return fig
