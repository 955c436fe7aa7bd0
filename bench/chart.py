"""The benchmark's PNG chart (matplotlib: ``pip install -e '.[bench]'``): one panel per metric, medians."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bench.report import METRICS, REFERENCE, TIMES


def write_png(path: str, summary: Mapping[str, Mapping[str, Any]], labels: Mapping[str, str], title: str) -> None:
    """Horizontal bars of each datapath's median per metric, annotated with the ratio to the reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in METRICS if any(m.key in s["median"] for s in summary.values())]
    names = list(summary)
    cols = 4
    rows = max(1, -(-len(metrics) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 0.45 * len(names) * rows + 1.4 * rows), squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, metric in zip(axes.flat, metrics, strict=False):
        values = [summary[n]["median"].get(metric.key) for n in names]
        shown = [v * metric.scale if v is not None else 0.0 for v in values]
        bars = ax.barh(range(len(names)), shown, color=[colours(i % 10) for i in range(len(names))])
        ax.set_yticks(range(len(names)), [labels.get(n, n) for n in names], fontsize=7)
        ax.invert_yaxis()
        ax.set_title(f"{metric.header} ({metric.better} is better)", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        top = max(shown) if shown and max(shown) > 0 else 1.0
        ax.set_xlim(0, top * 1.45)
        for bar, name, value in zip(bars, names, values, strict=True):
            if value is None:
                text = "n/a"
            else:
                text = format(value * metric.scale, metric.fmt)
                ratio = summary[name]["ratio"].get(metric.key)
                if metric.ratio and ratio is not None and name != REFERENCE:
                    text += f" ({TIMES}{ratio:.2f})"
            ax.text(bar.get_width() + top * 0.02, bar.get_y() + bar.get_height() / 2, text, va="center", fontsize=6)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
