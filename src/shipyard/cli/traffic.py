"""`shipyard traffic`: how a model's requests are split over its aliases (canary weights, a shadow),
stored in the registry's database so that every server and replica follows the same config. A thin
front over `Registry.traffic` / `Registry.set_traffic`: parse, call, print. No torch, no ONNX Runtime."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from shipyard.cli._common import JsonOpt, ReasonOpt, emit_json, err, out, registry, reporting, when
from shipyard.errors import NotFound, UsageError

if TYPE_CHECKING:
    from shipyard.registry import Deployment, Registry

_WEIGHT_RE = re.compile(r"[0-9]+")


def parse_assignments(pairs: list[str]) -> dict[str, int]:
    """`["production=90", "candidate=10"]` → {"production": 90, "candidate": 10}, in order. Whether
    the aliases exist and the weights sum to 100 is the registry's to check."""
    weights: dict[str, int] = {}
    for pair in pairs:
        alias, sep, raw = pair.partition("=")
        alias, raw = alias.strip(), raw.strip()
        if not sep or not alias:
            raise UsageError(f"traffic wants ALIAS=WEIGHT assignments (e.g. production=90 candidate=10), "
                             f"got {pair!r}")
        if not _WEIGHT_RE.fullmatch(raw):
            raise UsageError(f"the weight in {pair!r} must be a whole percent from 0 to 100")
        if alias in weights:
            raise UsageError(f"alias {alias!r} is given twice; give each alias one weight")
        weights[alias] = int(raw)
    return weights


def _versions(reg: Registry, dep: Deployment) -> dict[str, int | None]:
    """The version each alias of the config points at now (None: the alias does not exist, which
    only the default config can name)."""
    found: dict[str, int | None] = {}
    for alias in dep.aliases:
        try:
            found[alias] = reg.get(f"{dep.name}@{alias}").version
        except NotFound:
            found[alias] = None
    return found


def _config(dep: Deployment) -> str:
    return " ".join(f"{a}={w}" for a, w in dep.weights.items()) + f", shadow {dep.shadow or 'none'}"


def _print(dep: Deployment, versions: dict[str, int | None]) -> None:
    stored = (f"revision {dep.revision}, set {when(dep.to_dict()['updated_at'])} UTC" if dep.revision
              else "the default: nothing set yet")
    out.print(f"[bold]{dep.name}[/]  ({stored})")
    t = Table("alias", "traffic", "version")
    for alias in dep.aliases:
        v = versions.get(alias)
        share = f"{dep.weights[alias]}%" if alias in dep.weights else "shadow (a copy of every request)"
        t.add_row(alias, share, str(v) if v is not None else "– (no such alias)")
    out.print(t)


def traffic(
    name: Annotated[str, typer.Argument(help="Model name.")],
    assignments: Annotated[list[str] | None, typer.Argument(
        metavar="ALIAS=WEIGHT",
        help="Whole percents summing to 100, e.g. production=90 candidate=10; they replace the whole split. "
             "Without any: show the current config.")] = None,
    shadow: Annotated[str | None, typer.Option(
        "--shadow", metavar="ALIAS", help="Send a copy of every request to this alias too; its answers are logged, "
                                          "never returned [default: keep the current shadow].")] = None,
    no_shadow: Annotated[bool, typer.Option("--no-shadow", help="Stop shadowing.")] = False,
    reason: ReasonOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show or set how a model's requests are split over its aliases (canary weights, a shadow).

    Every server of the model follows the stored config by itself; moving an alias
    (`shipyard models alias`) changes the version behind a share. The aliases named must
    point at versions; an alias that carries traffic cannot be removed.

    \b
    Examples:
      shipyard traffic digits                                   show the split
      shipyard traffic digits production=90 candidate=10        10% to candidate
      shipyard traffic digits production=100 --shadow candidate
      shipyard traffic digits --no-shadow --reason "canary over"
    """
    with reporting(as_json):
        if shadow is not None and no_shadow:
            raise UsageError("--shadow and --no-shadow exclude each other")
        weights = parse_assignments(assignments or [])
        reg = registry()
        before = reg.traffic(name)
        if not weights and shadow is None and not no_shadow:
            if as_json:
                emit_json(before.to_dict() | {"versions": _versions(reg, before)})
            else:
                _print(before, _versions(reg, before))
            return
        dep = reg.set_traffic(name, weights or before.weights,
                              None if no_shadow else (shadow if shadow is not None else before.shadow),
                              reason=reason, expect_revision=before.revision)
        changed = dep.revision != before.revision
        if changed:
            err.print(f"{name} traffic: {_config(dep)} (revision {dep.revision}; was {_config(before)})")
        else:
            err.print(f"{name} traffic is already {_config(dep)}; nothing changed")
        result: dict[str, Any] = dep.to_dict() | {"versions": _versions(reg, dep), "changed": changed}
        if as_json:
            emit_json(result)
        else:
            _print(dep, result["versions"])
