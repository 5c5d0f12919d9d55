"""`shipyard models …`: the model registry from the command line. A thin front over
`shipyard.registry.Registry`: parse, call, print (tables for people, `--json` for scripts).
No torch, and ONNX Runtime only where a bundle is trial-loaded."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from shipyard.cli._common import (
    JsonOpt,
    ReasonOpt,
    batch_invariance,
    emit_json,
    err,
    out,
    pct,
    registry,
    reporting,
    size,
    when,
)
from shipyard.errors import ShipyardError, UsageError

if TYPE_CHECKING:
    from shipyard.registry import ModelEvent, ModelVersion

models_app = typer.Typer(
    help="The model registry: register bundles as numbered versions, point aliases at them, inspect, compare, "
         "download, and see the history of what was deployed.",
    no_args_is_help=True,
    rich_markup_mode=None,
)


def _tags(pairs: list[str] | None) -> dict[str, str]:
    tags: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--tag wants KEY=VALUE, got {pair!r}")
        tags[key.strip()] = value
    return tags


def _metric(key: str, v: Any) -> str:
    if v is None:
        return "–"
    if key == "accuracy" and isinstance(v, int | float):
        return pct(v)
    if key == "size_bytes" and isinstance(v, int | float):
        return size(int(v))
    if key == "latency_p50_ms" and isinstance(v, int | float):
        return f"{v:.3f} ms"
    if key == "throughput_per_s" and isinstance(v, int | float):
        return f"{v:,.0f}/s"
    return v if isinstance(v, str) else json.dumps(v, default=str)


@models_app.command()
def register(
    bundle: Annotated[Path, typer.Argument(help="A bundle folder or .tar.gz (e.g. what `shipyard optimize` wrote).")],
    name: Annotated[str | None, typer.Option(help="Model name [default: the bundle's name].")] = None,
    alias: Annotated[str | None, typer.Option(help="Point this alias (e.g. production) at the new version.")] = None,
    description: Annotated[str | None, typer.Option(help="A note stored with the version.")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="Tag KEY=VALUE, repeatable.")] = None,
    reason: ReasonOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Register a bundle as the next version of a model (verified and trial-loaded first)."""
    with reporting(as_json):
        mv = registry().register(bundle, name, alias=alias, description=description, tags=_tags(tag),
                                  reason=reason)
        err.print(f"registered [bold]{mv.ref}[/]" + (f" as {alias}" if alias else "")
                  + f"  ({size(mv.size_bytes)}, sha256 {mv.bundle_sha256[:12]}…)")
        if as_json:
            emit_json(mv.to_dict(meta=False))
        else:
            out.print(mv.ref)


@models_app.command("list")
def list_(as_json: JsonOpt = False) -> None:
    """List models with their versions and aliases."""
    with reporting(as_json):
        found = registry().list()
        if as_json:
            emit_json({"models": [m.to_dict() for m in found]})
            return
        if not found:
            out.print("no models yet: try `shipyard models register BUNDLE`")
            return
        t = Table("model", "version", "aliases", "variant", "accuracy", "size", "run", "registered", "description")
        for m in found:
            for v in reversed(m.versions):
                t.add_row(m.name if v is m.latest else "", str(v.version), ", ".join(v.aliases), v.variant or "–",
                          _metric("accuracy", v.metrics.get("accuracy")) if v.metrics.get("mae") is None
                          else f"MAE {v.metrics['mae']:.4g}", size(v.size_bytes), v.run_id or "–",
                          when(v.to_dict()["created_at"]), v.description or "")
            if not m.versions:
                t.add_row(m.name, "–", "", "", "", "", "", "", "(every version deleted)")
        out.print(t)


@models_app.command()
def show(
    ref: Annotated[str, typer.Argument(help="NAME (newest version), NAME@VERSION or NAME@ALIAS.")],
    as_json: JsonOpt = False,
) -> None:
    """Show one version: aliases, bundle, signature, metrics of every variant, lineage."""
    with reporting(as_json):
        mv = registry().get(ref)
        if as_json:
            emit_json(mv.to_dict())
            return
        _print_version(mv)


def _print_version(mv: ModelVersion) -> None:
    d = mv.to_dict()
    out.print(f"[bold]{mv.ref}[/]" + (f"  ({', '.join(mv.aliases)})" if mv.aliases else ""))
    head = Table.grid(padding=(0, 2))
    head.add_column(no_wrap=True)
    head.add_column(overflow="fold")
    sig = mv.meta.signature
    io = "; ".join(f"{k}: " + ", ".join(f"{s.name} {s.dtype} {list(s.shape)}" for s in specs)
                   for k, specs in (("inputs", sig.inputs), ("outputs", sig.outputs)))
    classes = mv.meta.classes
    rows = [("registered", when(d["created_at"])), ("bundle", f"sha256 {mv.bundle_sha256}, {size(mv.size_bytes)}"),
            ("variant", mv.variant or "–"), ("signature", io),
            ("classes", f"{len(classes)}: {', '.join(map(str, classes[:12]))}{' …' if len(classes) > 12 else ''}"),
            ("run", mv.run_id or "–"), ("description", mv.description or "–"),
            ("tags", ", ".join(f"{k}={v}" for k, v in mv.tags.items()) or "–")]
    for k, v in mv.lineage.to_dict().items():
        if k != "run_id":
            rows.append((f"lineage.{k}", v if isinstance(v, str) else json.dumps(v, default=str)))
    for k, v in rows:
        head.add_row(f"[dim]{k}[/]", str(v))
    out.print(head)
    if mv.variants:
        t = Table("variant", "accuracy", "size", "p50 batch 1", "throughput batch 64", "in a batch")
        for v in mv.variants:
            mark = " *" if v.name == mv.variant else ""
            t.add_row(f"{v.name}{mark}", *[_metric(k, getattr(v, k)) for k in
                                           ("accuracy", "size_bytes", "latency_p50_ms", "throughput_per_s")],
                      batch_invariance(v.to_dict()))
        out.print(t)


@models_app.command()
def compare(
    ref_a: Annotated[str, typer.Argument(help="NAME@VERSION or NAME@ALIAS.")],
    ref_b: Annotated[str, typer.Argument(help="NAME@VERSION or NAME@ALIAS.")],
    as_json: JsonOpt = False,
) -> None:
    """Compare two versions side by side: shipped variant and metrics, every variant, lineage."""
    with reporting(as_json):
        reg = registry()
        c = reg.compare(ref_a, ref_b).to_dict()
        if as_json:
            emit_json(c)
            return
        t = Table("", *c["refs"])
        t.add_row("variant", *[str(x) for x in c["chosen"]])
        for k, (a, b) in c["metrics"].items():
            t.add_row(k, _metric(k, a), _metric(k, b))
        for name, metrics in c["variants"].items():
            for k, (a, b) in metrics.items():
                t.add_row(f"[dim]{name}.{k}[/]", _metric(k, a), _metric(k, b))
        for k, (a, b) in c["lineage"].items():
            mark = "" if k in c["differing_lineage"] else "[dim]"
            t.add_row(f"{mark}lineage.{k}", *[x if isinstance(x, str) else json.dumps(x, default=str)[:60]
                                              for x in (a, b)])
        out.print(t)


@models_app.command()
def download(
    ref: Annotated[str, typer.Argument(help="NAME, NAME@VERSION or NAME@ALIAS.")],
    dest: Annotated[Path, typer.Argument(help="A new or empty folder to unpack the bundle into.")],
    as_json: JsonOpt = False,
) -> None:
    """Download a verified copy of a version's bundle into a folder."""
    with reporting(as_json):
        reg = registry()
        mv = reg.get(ref)
        b = reg.download(mv.ref, dest)
        err.print(f"{mv.ref} → {b.path} (verified)")
        if as_json:
            emit_json({"name": mv.name, "version": mv.version, "path": str(b.path.resolve()),
                       "bundle_sha256": mv.bundle_sha256, "files": b.files()})
        else:
            out.print(str(b.path))


@models_app.command()
def alias(
    name: Annotated[str, typer.Argument(help="Model name.")],
    alias_name: Annotated[str, typer.Argument(metavar="ALIAS", help="Alias, e.g. production or candidate.")],
    version: Annotated[str, typer.Argument(help="The version it should point at.")],
    reason: ReasonOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Point an alias at a version (after verifying and trial-loading it): deploy or roll back."""
    with reporting(as_json):
        change = registry().set_alias(name, alias_name, version, reason=reason)
        if change.changed:
            was = f" (was {change.from_version})" if change.from_version is not None else " (new)"
            err.print(f"{name}@{alias_name} → {change.to_version}{was}")
        else:
            err.print(f"{name}@{alias_name} already points at {change.to_version}; nothing changed")
        if as_json:
            emit_json(change.to_dict())


@models_app.command()
def unalias(
    name: Annotated[str, typer.Argument(help="Model name.")],
    alias_name: Annotated[str, typer.Argument(metavar="ALIAS", help="The alias to remove.")],
    reason: ReasonOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Remove an alias."""
    with reporting(as_json):
        change = registry().unalias(name, alias_name, reason=reason)
        err.print(f"removed {name}@{alias_name} (pointed at {change.from_version})")
        if as_json:
            emit_json(change.to_dict())


@models_app.command()
def history(
    name: Annotated[str, typer.Argument(help="Model name.")],
    limit: Annotated[int | None, typer.Option(help="Only the newest N events.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Every change to a model, oldest first: registrations, alias moves, traffic changes, deletions; who, when, why."""
    with reporting(as_json):
        if limit is not None and limit < 1:
            raise UsageError(f"--limit must be a positive integer, got {limit}")
        events = registry().history(name, limit=limit)
        if as_json:
            emit_json({"name": name, "events": [e.to_dict() for e in events]})
            return
        t = Table("when (UTC)", "event", "what", "who", "why")
        for e in events:
            t.add_row(when(e.to_dict()["at"]), e.kind, _what(e), e.actor or "–", e.reason or "")
        out.print(t)


def _what(e: ModelEvent) -> str:
    if e.kind == "register":
        return f"version {e.version}"
    if e.kind in ("alias", "unalias"):
        src = "–" if e.from_version is None else str(e.from_version)
        dst = "–" if e.to_version is None else str(e.to_version)
        return f"{e.alias}: {src} → {dst}"
    if e.kind == "delete":
        return f"version {e.version} deleted"
    if e.kind == "traffic" and e.details:
        return _traffic_what(e.details)
    parts = [f"version {e.version}" if e.version is not None else "", e.alias or "",
             json.dumps(e.details, default=str) if e.details else ""]
    return " ".join(p for p in parts if p)


def _traffic_what(d: dict[str, Any]) -> str:
    """`production=90 candidate=10, shadow mirror (was production=100)`."""
    def config(c: dict[str, Any]) -> str:
        weights = c.get("weights") or {}
        shadow = c.get("shadow")
        return (" ".join(f"{a}={w}" for a, w in weights.items()) or "–") + (f", shadow {shadow}" if shadow else "")

    prev = d.get("previous") or {}
    return f"{config(d)} (was {config(prev)})" if prev else config(d)


@models_app.command()
def delete(
    ref: Annotated[str, typer.Argument(help="NAME@VERSION.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    reason: ReasonOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete one version (refused while an alias points at it)."""
    with reporting(as_json):
        from shipyard.registry.refs import parse_ref

        if parse_ref(ref)[1] is None:
            raise UsageError(f"delete needs one version: {ref}@VERSION")
        reg = registry()
        mv = reg.deletable(ref)
        if not yes:
            if not sys.stdin.isatty():
                raise UsageError(f"delete {mv.ref} asks for confirmation; pass --yes to delete without asking")
            if not typer.confirm(f"Delete {mv.ref} ({size(mv.size_bytes)}, registered {when(mv.to_dict()['created_at'])})?",
                                 err=True):
                raise ShipyardError(f"{mv.ref} not deleted")
        gone = reg.delete(mv.ref, reason=reason)
        err.print(f"deleted {gone.ref}")
        if as_json:
            emit_json({"deleted": gone.ref, "name": gone.name, "version": gone.version})
