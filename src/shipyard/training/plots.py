"""Training curves as a PNG: loss and accuracy per epoch, train dashed and validation solid,
one colour per run."""

from __future__ import annotations

from pathlib import Path

from shipyard.training.tracking import Run


def plot_curves(runs: list[Run], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    for i, run in enumerate(runs):
        color = f"C{i % 10}"
        label = f"{run.id} ({run.recipe.get('model')}, {run.data_source})"
        for ax, key in ((ax_loss, "loss"), (ax_acc, "accuracy")):
            for split, style in (("train", "--"), ("val", "-")):
                values = run.metrics.get(f"{split}_{key}", [])
                epochs = range(1, len(values) + 1)
                ax.plot(epochs, values, style, color=color, marker="o", markersize=3,
                        label=f"{label} {split}" if key == "loss" else None)
        if run.best_epoch and run.best_val_accuracy is not None:
            ax_acc.scatter([run.best_epoch], [run.best_val_accuracy], s=80, facecolors="none",
                           edgecolors=color, zorder=3)
    ax_loss.set(title="loss", xlabel="epoch", ylabel="cross-entropy")
    ax_acc.set(title="accuracy (○ best checkpoint)", xlabel="epoch", ylabel="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.legend(loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.06 + 0.035 * (len(runs) - 1), 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
