"""`shipyard explain`: why a model answered what it did, in-process (no server, no torch): the
same explainer as the server's `/explain` route, over a file's first rows."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shipyard.cli._common import JsonOpt, emit_json, err, out, reporting, settings


def explain(
    ref: Annotated[str, typer.Argument(metavar="REF", help="NAME, NAME@ALIAS, NAME@VERSION, or a bundle folder or .tar.gz.")],
    source: Annotated[Path | None, typer.Argument(metavar="[INPUT]", help="An image file or a folder of images, a .npy array (one instance, or [N, …]), an .npz, or a .csv/.parquet table (its first rows). Not with --maps.")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write a PNG: each image beside its heatmap (red: towards the target), or a table's columns as bars.")] = None,
    target: Annotated[str | None, typer.Option(help="The class to explain, by label or index [default: the predicted class; a regression: its first target].")] = None,
    method: Annotated[str | None, typer.Option(help="integrated_gradients | occlusion | kernel_shap [default: integrated_gradients where the bundle has a gradient graph, else occlusion].")] = None,
    steps: Annotated[int, typer.Option(help="Integrated Gradients: steps along the path (2..1024).")] = 64,
    baseline: Annotated[str, typer.Option(help="zeros (black pixels; zero features) | mean (the training features' mean).")] = "zeros",
    integration: Annotated[str, typer.Option(help="riemann_trapezoid | gausslegendre (Integrated Gradients' rule).")] = "riemann_trapezoid",
    patch: Annotated[int, typer.Option(help="occlusion, kernel_shap on images: the patch side in pixels.")] = 4,
    samples: Annotated[int, typer.Option(help="kernel_shap: coalitions sampled per instance.")] = 1024,
    rows: Annotated[int, typer.Option(help="Explain the first ROWS good rows of INPUT (1..256).")] = 16,
    maps: Annotated[bool, typer.Option("--maps", help="Instead of INPUT: the version's mean |attribution| per predicted class, at bundle time and over recent traffic, with the shift per class (-o: a PNG).")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Attributions for the first rows of INPUT: per pixel for images, per feature, or per column
    of a table, with the target's output and the baseline's. Exit 0 done, 1 bad data, 2 usage."""
    from shipyard.attribution.api import explain as run_explain
    from shipyard.errors import UsageError

    with reporting(as_json):
        if maps:
            if source is not None:
                raise UsageError("--maps takes no INPUT: it explains the version's recent traffic")
            _maps(ref, output, as_json)
            return
        if source is None:
            raise UsageError("give INPUT (an image, .npy, .npz, CSV or Parquet file), or --maps")
        chosen: int | str | None = int(target) if target is not None and target.isdigit() else target
        result = run_explain(ref, source, target=chosen, method=method, steps=steps, baseline=baseline,
                             integration=integration, patch=patch, samples=samples, rows=rows, settings=settings())
        ex = result.explanation
        if output is not None:
            from shipyard.attribution.plots import heatmap

            heatmap(result, output)
        if as_json:
            emit_json({**result.to_dict(), "output_file": str(output) if output else None})
            return
        out.print(f"{result.model}" + (f" v{result.version}" if result.version is not None else "")
                  + f": {ex.method} on {len(ex.target)} instance(s) in {result.seconds * 1000:.0f} ms")
        for i, rid in enumerate(result.ids):
            if result.kind == "columns":
                top = sorted(((float(ex.attributions[f"attributions/{c}"][i]), c) for c in result.columns),
                             key=lambda t: -abs(t[0]))[:5]
                what = ", ".join(f"{c} {v:+.3g}" for v, c in top)
            else:
                a = ex.attributions["attributions"][i]
                what = f"sum {float(a.sum()):+.4g}, largest |a| {float(abs(a).max()):.3g}"
            out.print(f"  {rid}: {ex.target_label[i]} output {ex.output[i]:.4g} (baseline "
                      f"{ex.baseline_output[i]:.4g}); {what}")
        if ex.note:
            err.print(ex.note)
        if result.left_out:
            err.print(f"{result.left_out} more row(s) not explained (--rows)")
        if output is not None:
            err.print(f"wrote {output}")


def _maps(ref: str, output: Path | None, as_json: bool) -> None:
    from shipyard.attribution import maps
    from shipyard.registry import Registry

    reg = Registry(settings=settings())
    mv = reg.get(ref)
    doc = maps.for_version(reg, mv.name, mv.version)
    if output is not None:
        from shipyard.attribution.plots import maps_png

        maps_png(doc, output)
    if as_json:
        emit_json({**maps.to_json(doc), "output_file": str(output) if output else None})
        return
    out.print(f"{mv.name} v{mv.version}: mean |attribution| per predicted class; recent: {doc['recent_rows']} "
              f"logged inputs ({doc['method'] or 'none'})")
    counts = doc["recent_counts"] if doc["recent_counts"] is not None else [0] * len(doc["classes"])
    for c, name in enumerate(doc["classes"]):
        s = (doc["shift"] or [None] * len(doc["classes"]))[c]
        out.print(f"  {name:<12} recent inputs {int(counts[c]):>5}  shift {'-' if s is None else f'{s:.3f}'}")
    if doc["note"]:
        err.print(doc["note"])
    if output is not None:
        err.print(f"wrote {output}")
