"""The variant comparison as a bar chart: accuracy, size, batch-1 latency, batch-64 throughput.
Bars start at zero (a truncated axis makes a 0.1-point difference look like a cliff); the
accuracy bars say their difference from the first variant in points instead."""

from __future__ import annotations

from pathlib import Path

from shipyard.optimizing.evaluate import Measured


def plot_variants(measured: list[Measured], path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = ("mae", "validation MAE", 1.0, "target units") if measured and measured[0].mae is not None else \
        ("accuracy", "validation accuracy", 100.0, "%")
    panels = [first, ("size_bytes", "file size", 1 / 1024, "KiB"),
              ("latency_p50_ms", "p50 latency, batch 1", 1000.0, "µs"),
              ("throughput_per_s", "throughput, batch 64", 1 / 1000, "k samples/s")]
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.6), dpi=110)
    names = [m.name for m in measured]
    colors = ["C2" if m.chosen else "C0" for m in measured]
    for ax, (key, label, scale, unit) in zip(axes, panels, strict=True):
        values = [getattr(m, key) * scale for m in measured]
        bars = ax.bar(names, values, color=colors)
        if key == "accuracy" and values:
            ax.bar_label(bars, labels=[f"{v:.2f}" + ("" if i == 0 else f"\n{v - values[0]:+.2f} pt")
                                       for i, v in enumerate(values)], fontsize=8)
        else:
            ax.bar_label(bars, fmt="%.4g", fontsize=8)
        ax.set_title(f"{label} ({unit})", fontsize=10)
        ax.tick_params(axis="x", labelsize=8, rotation=15)
        if key == "accuracy":
            ax.set_ylim(0.0, 112.0)  # from zero, with room for the labels above a bar near 100%
    fig.suptitle(title or "variants (green: chosen)", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
