"""Explanations as pictures: each image beside its attribution heatmap (red pushes towards the
target, blue away; one symmetric scale per instance), or a table's columns as bars."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from shipyard.attribution.api import ExplainResult

#: instances drawn at most (one row each)
MAX_DRAWN = 8


def heatmap(result: ExplainResult, path: Path) -> Path:
    """Write the PNG and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ex = result.explanation
    n = min(len(ex.target), MAX_DRAWN)
    title = f"{result.model} v{result.version}" if result.version is not None else result.model
    if result.kind == "columns":
        fig, axes = plt.subplots(n, 1, figsize=(7, 0.35 * len(result.columns) * n + 1.2), squeeze=False)
        for i in range(n):
            v = np.array([ex.attributions[f"attributions/{c}"][i] for c in result.columns])
            ax = axes[i][0]
            ax.barh(result.columns, v, color=np.where(v >= 0, "#c0392b", "#2471a3"))
            ax.invert_yaxis()
            ax.axvline(0, color="black", lw=0.6)
            ax.set_title(f"{result.ids[i]}: {ex.target_label[i]} ({ex.output[i]:.3g}; baseline "
                         f"{ex.baseline_output[i]:.3g})", fontsize=9)
    else:
        attr = ex.attributions["attributions"]
        image = result.kind == "raw" and result.inputs.ndim >= 3
        # one column per instance: the input above, its heatmap below (red: towards the target)
        fig, axes = plt.subplots(2, n, figsize=(1.9 * n + 0.4, 4.9), squeeze=False)
        for i in range(n):
            a = attr[i] if image else attr[i].reshape(1, -1)
            a2 = a.sum(axis=-1) if a.ndim == 3 else a
            x = result.inputs[i] if image else result.inputs[i].reshape(1, -1)
            axes[0][i].imshow(x, cmap="gray" if np.ndim(x) == 2 else None, aspect="auto" if not image else None)
            axes[0][i].set_title(f"{result.ids[i]}"[:22], fontsize=7)
            lim = float(np.abs(a2).max()) or 1.0
            axes[1][i].imshow(a2, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto" if not image else None)
            axes[1][i].set_title(f"{ex.target_label[i]}: {ex.output[i]:.2f} (base {ex.baseline_output[i]:.2f})",
                                 fontsize=7)
            for ax in (axes[0][i], axes[1][i]):
                ax.set_xticks([])
                ax.set_yticks([])
    fig.suptitle(f"{title}: {ex.method}" + (f", {ex.params.steps} steps" if ex.method == "integrated_gradients"
                                            else ""), fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def maps_png(doc: dict[str, Any], path: Path | None = None) -> bytes:
    """A version's class maps (`maps.for_version`): per class, at bundle time over recent traffic
    (images as heatmaps, a table's columns as bars); the PNG's bytes, also written to `path`."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(label, doc[key]) for label, key in (("bundle (validation)", "bundle"), ("recent traffic", "recent"))
            if doc[key] is not None]
    classes = doc["classes"]
    shift = doc.get("shift") or [None] * len(classes)
    if doc["shape"] is not None and rows:
        k = len(classes)
        fig, axes = plt.subplots(len(rows), k, figsize=(1.25 * k + 0.6, 1.45 * len(rows) + 0.5), squeeze=False)
        for r, (label, m) in enumerate(rows):
            lim = float(np.max(m)) or 1.0
            for c in range(k):
                ax = axes[r][c]
                img = np.asarray(m[c]).reshape(doc["shape"])
                ax.imshow(img if img.ndim == 2 else img.sum(-1), cmap="magma", vmin=0, vmax=lim)
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(str(classes[c])[:10], fontsize=8)
                if r == len(rows) - 1 and shift[c] is not None:
                    ax.set_xlabel(f"shift {shift[c]:.2f}", fontsize=7)
            axes[r][0].set_ylabel(label, fontsize=8)
    else:
        fig, ax = plt.subplots(figsize=(8, 3.2))
        names = [n for n, _ in doc["columns"]] if doc["columns"] else None
        for i, (label, m) in enumerate(rows):
            v = np.asarray(m).mean(axis=0)
            if doc["columns"]:
                starts = np.cumsum([0, *(w for _, w in doc["columns"])])
                v = np.array([v[starts[j]:starts[j + 1]].sum() for j in range(len(doc["columns"]))])
            x = np.arange(len(v))
            ax.bar(x + 0.4 * i, v, width=0.4, label=label)
        if names:
            ax.set_xticks(np.arange(len(names)) + 0.2, names, rotation=45, ha="right", fontsize=7)
        ax.legend(fontsize=8)
        ax.set_ylabel("mean |attribution|")
    fig.suptitle(f"{doc['model']} v{doc['version']}: mean |attribution| per predicted class", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buf.getvalue())
    return buf.getvalue()
