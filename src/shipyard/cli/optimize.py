"""`shipyard optimize` and `shipyard import`: the two ways a bundle is made, from a tracked run
(export, measure fp32 and int8 variants, choose) or from a model trained elsewhere (ONNX, Keras)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from shipyard.cli._common import JsonOpt, emit_json, err, out, pct, registry, reporting, settings, variants_table


def optimize(
    run: Annotated[str, typer.Argument(help="Run id, unique prefix, or 'latest'.")],
    name: Annotated[str | None, typer.Option(help="Model name in the bundle [default: MODEL-DATA, e.g. mlp-mnist-sample].")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Bundle folder, or a .tar.gz [default: the run's folder/bundle].")] = None,
    optimize_for: Annotated[str, typer.Option(help="throughput (batch 64) | latency (batch-1 p50).")] = "throughput",
    variants: Annotated[str, typer.Option(help="Comma-separated: fp32,int8-dynamic,int8-static.")] = "fp32,int8-dynamic,int8-static",
    threads: Annotated[int, typer.Option(help="ONNX Runtime threads while measuring.")] = 1,
    bench_seconds: Annotated[float, typer.Option(help="Seconds per latency and per throughput measurement.")] = 0.5,
    allow_batch_variance: Annotated[bool, typer.Option("--allow-batch-variance", help="Let a variant whose answers depend on their batch-mates (int8-dynamic) be chosen; recorded in the bundle, and servers refuse to batch it unless --unbatched-if-variant.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Export a run to ONNX, measure fp32 and int8 variants, and bundle the best by policy.

    Only variants that answer an input the same alone and inside a batch of 2-64 (max difference
    of probabilities ≤ 1e-6) are chosen, unless --allow-batch-variance."""
    from shipyard.optimizing.build import optimize as run_optimize
    from shipyard.optimizing.plots import plot_variants

    with reporting(as_json):
        wanted = tuple(v.strip() for v in variants.split(",") if v.strip())
        bundle, measured, reason = run_optimize(run, name=name, output=output, optimize_for=optimize_for,
                                                variants=wanted, threads=threads, bench_seconds=bench_seconds,
                                                settings=settings(), allow_batch_variance=allow_batch_variance)
        run_id = bundle.meta.lineage.run_id
        plot_path = (Path(settings().runs_dir / str(run_id)) / "variants.png" if output is None
                     else Path(str(output).removesuffix(".tar.gz").removesuffix(".tgz") + ".variants.png"))
        plot = plot_variants(measured, plot_path, title=f"{bundle.name} (run {run_id}): green is chosen")
        where = str(output) if output is not None else str(bundle.path)
        if as_json:
            emit_json({"bundle": where, "name": bundle.name, "chosen": bundle.meta.variant, "reason": reason,
                       "batch_invariant": bundle.meta.batch_invariant, "allow_batch_variance": allow_batch_variance,
                       "variants": [m.to_dict() for m in measured], "plot": str(plot)})
            return
        out.print(variants_table([m.to_dict() for m in measured]))
        out.print(escape(f"bundle  {where}\nplot    {plot}"))


def import_model(
    path: Annotated[Path, typer.Argument(help="model.onnx, model.keras or model.h5.")],
    name: Annotated[str, typer.Option(help="Register as the next version of this model.")],
    labels: Annotated[str | None, typer.Option(help="Class names, comma-separated [default: 0..C-1].")] = None,
    preprocess: Annotated[str, typer.Option(help="none (clients send features) | image (uint8 pixels / 255; an input [H,W,1], [1,H,W] or [C,H,W] takes [H,W] or [H,W,C] images) | a JSON spec file.")] = "none",
    data: Annotated[str | None, typer.Option(help="Labelled data (a --data source) to measure accuracy and build the reference profile.")] = None,
    alias: Annotated[str | None, typer.Option(help="Point this alias at the new version.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Turn a model trained elsewhere (ONNX, Keras) into a bundle and register it."""
    from shipyard.optimizing.importer import import_model as run_import

    with reporting(as_json):
        reg = registry()
        with tempfile.TemporaryDirectory() as tmp:
            bundle = run_import(path, name=name, labels=[x.strip() for x in labels.split(",")] if labels else None,
                                preprocess=preprocess, data=data, output=Path(tmp) / "bundle")
            mv = reg.register(bundle.path, name, alias=alias, reason=f"imported from {path.name}")
        stored = str(reg.bundle_path(mv.ref))
        if as_json:
            emit_json({"bundle": stored, "name": mv.name, "version": mv.version,
                       "softmax_added": bundle.meta.lineage.softmax_added,
                       "val_accuracy": bundle.meta.metrics.val_accuracy})
            return
        acc = bundle.meta.metrics.val_accuracy
        err.print(f"imported {path.name} as [bold]{mv.name}@{mv.version}[/]"
                  + (f", val accuracy {pct(acc)}" if acc is not None else ", no data given: no accuracy or reference profile"))
        out.print(escape(stored))
