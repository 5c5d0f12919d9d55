"""CLI verbs for the optimize stage and bundles: `optimize`, `bundle verify|show`."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from shipyard._output import emit_json, err, out, pct, reporting

bundle_app = typer.Typer(help="Verify and inspect bundles (folders or .tar.gz).", no_args_is_help=True,
                         rich_markup_mode=None)
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on the last line of stdout.")]


def variants_table(variants: list[dict[str, Any]]) -> Table:
    fp32 = next((v for v in variants if v["name"] == "fp32"), variants[0])
    t = Table("variant", "accuracy", "size", "×fp32", "p50 b=1", "b=64 /s", "×fp32", "parity", "")
    for v in variants:
        parity = (f"max diff {v['max_abs_diff']:.1e}" if v.get("max_abs_diff") is not None
                  else f"agree {v['agreement']:.1%}" if v.get("agreement") is not None else "")
        t.add_row(v["name"], pct(v["accuracy"]), f"{v['size_bytes'] / 1024:,.0f} KiB",
                  f"{v['size_bytes'] / fp32['size_bytes']:.2f}", f"{v['latency_p50_ms'] * 1000:,.1f} µs",
                  f"{v['throughput_per_s']:,.0f}", f"{v['throughput_per_s'] / fp32['throughput_per_s']:.2f}",
                  parity, "[green]chosen[/]" if v.get("chosen") else "")
    return t


def optimize(
    run: Annotated[str, typer.Argument(help="Run id, unique prefix, or 'latest'.")],
    name: Annotated[str | None, typer.Option(help="Model name in the bundle [default: MODEL-DATA, e.g. mlp-mnist-sample].")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Bundle folder, or a .tar.gz [default: the run's folder/bundle].")] = None,
    optimize_for: Annotated[str, typer.Option(help="throughput (batch 64) | latency (batch-1 p50).")] = "throughput",
    variants: Annotated[str, typer.Option(help="Comma-separated: fp32,int8-dynamic,int8-static.")] = "fp32,int8-dynamic,int8-static",
    threads: Annotated[int, typer.Option(help="ONNX Runtime threads while measuring.")] = 1,
    bench_seconds: Annotated[float, typer.Option(help="Seconds per latency and per throughput measurement.")] = 0.5,
    as_json: JsonOpt = False,
) -> None:
    """Export a run to ONNX, measure fp32 and int8 variants, and bundle the best by policy."""
    from shipyard.cli import settings
    from shipyard.optimize.build import optimize as run_optimize
    from shipyard.optimize.plots import plot_variants

    with reporting(as_json):
        wanted = tuple(v.strip() for v in variants.split(",") if v.strip())
        bundle, measured, reason = run_optimize(run, name=name, output=output, optimize_for=optimize_for,
                                                variants=wanted, threads=threads, bench_seconds=bench_seconds,
                                                settings=settings())
        lineage = bundle.meta["lineage"]
        plot_path = (Path(settings().runs_dir / bundle.meta["lineage"]["run_id"]) / "variants.png" if output is None
                     else Path(str(output).removesuffix(".tar.gz").removesuffix(".tgz") + ".variants.png"))
        plot = plot_variants(measured, plot_path, title=f"{bundle.name} (run {lineage['run_id']}): green is chosen")
        where = str(output) if output is not None else str(bundle.path)
        if as_json:
            emit_json({"bundle": where, "name": bundle.name, "chosen": bundle.meta["variant"], "reason": reason,
                       "variants": [m.to_dict() for m in measured], "plot": str(plot)})
            return
        out.print(variants_table([m.to_dict() for m in measured]))
        out.print(escape(f"bundle  {where}\nplot    {plot}"))


@bundle_app.command("verify")
def verify(
    path: Annotated[Path, typer.Argument(help="Bundle folder or .tar.gz.")],
    as_json: JsonOpt = False,
) -> None:
    """Check every file against the manifest; exit 1 naming the first bad file."""
    with reporting(as_json):
        b, files = _open(path)
        if as_json:
            emit_json({"ok": True, "bundle": str(path), "name": b.name, "files": files})
            return
        err.print(f"[green]ok[/] {escape(str(path))}: {len(files)} files verified")


@bundle_app.command("show")
def show(
    path: Annotated[Path, typer.Argument(help="Bundle folder or .tar.gz.")],
    as_json: JsonOpt = False,
) -> None:
    """Describe a verified bundle: signature, classes, preprocessing, variants, lineage."""
    with reporting(as_json):
        b, files = _open(path)
        if as_json:
            emit_json({"bundle": str(path), "files": files, **b.meta})
            return
        m = b.meta
        grid = Table.grid(padding=(0, 2))
        grid.add_column(no_wrap=True)
        grid.add_column(overflow="fold")
        sig = m["signature"]
        rows = [("name", m["name"]), ("variant", f"{m.get('variant')}  ({m.get('choice', {}).get('reason', '')})"),
                ("inputs", "; ".join(f"{i['name']} {i['dtype']} {i['shape']}" for i in sig["inputs"])),
                ("outputs", "; ".join(f"{o['name']} {o['dtype']} {o['shape']}" for o in sig["outputs"])),
                ("classes", ", ".join(m["classes"])), ("preprocess", _spec(m.get("preprocess"))),
                ("lineage", ", ".join(f"{k}={v}" for k, v in m.get("lineage", {}).items()
                                      if k in ("run_id", "parent_version", "data_source", "exporter"))),
                ("reference", "none" if not m.get("reference") else
                 f"{m['reference']['sample_size']} samples, {m['reference']['pca_components']} PCA components"),
                ("files", ", ".join(f"{k} ({v:,} B)" for k, v in files.items()))]
        for k, v in rows:
            grid.add_row(f"[dim]{k}[/]", escape(str(v)))
        out.print(grid)
        if m.get("variants"):
            out.print(variants_table(m["variants"]))


def _open(path: Path) -> tuple[Any, dict[str, int]]:
    """Verify a bundle folder or archive (archives unpack into a temporary folder, removed after)."""
    from shipyard.bundle import Bundle

    with tempfile.TemporaryDirectory() as tmp:
        b = Bundle.load(path, unpack_to=Path(tmp) / "bundle")
        return b, b.files()


def _spec(p: dict[str, Any] | None) -> str:
    if not p:
        return "none (clients send ready features)"
    return (f"raw {p['raw_dtype']} {p['raw_shape']} → ×{p['scale']:.6g}" + (" → flatten" if p["flatten"] else "")
            + (f" → standardize ({p['standardize']})" if p["standardize"] != "none" else ""))


def import_model(
    path: Annotated[Path, typer.Argument(help="model.onnx, model.keras or model.h5.")],
    name: Annotated[str, typer.Option(help="Register as the next version of this model.")],
    labels: Annotated[str | None, typer.Option(help="Class names, comma-separated [default: 0..C-1].")] = None,
    preprocess: Annotated[str, typer.Option(help="none (clients send features) | image (uint8 pixels / 255) | a JSON spec file.")] = "none",
    data: Annotated[str | None, typer.Option(help="Labelled data (a --data source) to measure accuracy and build the reference profile.")] = None,
    alias: Annotated[str | None, typer.Option(help="Point this alias at the new version.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Turn a model trained elsewhere (ONNX, Keras) into a bundle and register it."""
    from shipyard.cli import settings
    from shipyard.optimize.importer import import_model as run_import
    from shipyard.registry import Registry

    with reporting(as_json):
        s = settings()
        with tempfile.TemporaryDirectory() as tmp:
            bundle = run_import(path, name=name, labels=[x.strip() for x in labels.split(",")] if labels else None,
                                preprocess=preprocess, data=data, output=Path(tmp) / "bundle")
            mv = Registry(settings=s).register(bundle.path, name, alias=alias, reason=f"imported from {path.name}")
        stored = str(Registry(settings=s).bundle_path(mv.ref))
        if as_json:
            emit_json({"bundle": stored, "name": mv.name, "version": mv.version,
                       "softmax_added": bundle.meta["lineage"]["softmax_added"],
                       "val_accuracy": bundle.meta["metrics"].get("val_accuracy")})
            return
        acc = bundle.meta["metrics"].get("val_accuracy")
        err.print(f"imported {path.name} as [bold]{mv.name}@{mv.version}[/]"
                  + (f", val accuracy {pct(acc)}" if acc is not None else ", no data given: no accuracy or reference profile"))
        out.print(escape(stored))
