"""The variant comparison as a bar chart: accuracy, size, batch-1 latency, batch-64 throughput."""

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
        ax.bar_label(bars, fmt="%.4g", fontsize=8)
        ax.set_title(f"{label} ({unit})", fontsize=10)
        ax.tick_params(axis="x", labelsize=8, rotation=15)
        if key == "accuracy":
            lo = min(values)
            ax.set_ylim(max(0.0, lo - 3), min(100.0, max(values) + 1))
    fig.suptitle(title or "variants (green: chosen)", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
