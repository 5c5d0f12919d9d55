"""`shipyard bundle …`: verify and inspect bundles (folders or .tar.gz) before they are registered."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from shipyard.cli._common import JsonOpt, emit_json, err, out, reporting, variants_table

if TYPE_CHECKING:
    from shipyard.bundle import Bundle
    from shipyard.data.preprocess import PreprocessSpec

bundle_app = typer.Typer(help="Verify and inspect bundles (folders or .tar.gz).", no_args_is_help=True,
                         rich_markup_mode=None)


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
            emit_json({"bundle": str(path), "files": files, **b.meta.to_dict()})
            return
        m = b.meta
        grid = Table.grid(padding=(0, 2))
        grid.add_column(no_wrap=True)
        grid.add_column(overflow="fold")
        rows = [("name", m.name), ("variant", f"{m.variant}  ({m.choice.reason if m.choice else ''})"),
                ("inputs", "; ".join(f"{i.name} {i.dtype} {list(i.shape)}" for i in m.signature.inputs)),
                ("outputs", "; ".join(f"{o.name} {o.dtype} {list(o.shape)}" for o in m.signature.outputs)),
                ("targets" if m.task == "regression" else "classes", ", ".join(m.classes)),
                ("preprocess", _spec(m.preprocess)),
                ("lineage", ", ".join(f"{k}={v}" for k, v in m.lineage.to_dict().items()
                                      if k in ("run_id", "parent_version", "data_source", "exporter"))),
                ("reference", "none" if not m.reference else
                 f"{m.reference.sample_size} samples, {m.reference.pca_components} PCA components"),
                ("files", ", ".join(f"{k} ({v:,} B)" for k, v in files.items()))]
        for k, v in rows:
            grid.add_row(f"[dim]{k}[/]", escape(str(v)))
        out.print(grid)
        if m.variants:
            out.print(variants_table([v.to_dict() for v in m.variants]))


def _open(path: Path) -> tuple[Bundle, dict[str, int]]:
    """Verify a bundle folder or archive (an archive unpacks into a temporary folder, removed
    before this returns, also when verifying fails: the metadata and file sizes are kept)."""
    from shipyard.bundle import Bundle

    with Bundle.load(path) as b:
        return b, b.files()


def _spec(p: PreprocessSpec | None) -> str:
    if p is None:
        return "none (clients send ready features)"
    return (f"raw {p.raw_dtype} {list(p.raw_shape)} → ×{p.scale:.6g}" + (" → flatten" if p.flatten else "")
            + (f" → standardize ({p.standardize})" if p.standardize != "none" else ""))
