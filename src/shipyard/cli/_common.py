"""What every command module shares, so none of them imports `app`: the settings the root callback
chose, the shared options, and the output contract. `--json` prints exactly one JSON object on one
line as the last line of stdout (long-running commands print JSON Lines, one object per event);
narration, progress and errors go to stderr; exit codes are 0 (success), 1 (the operation
failed), 2 (usage error)."""

from __future__ import annotations

import json
import math
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from shipyard.errors import RunInterrupted, ShipyardError, UsageError
from shipyard.settings import Settings

if TYPE_CHECKING:
    from shipyard.registry import Registry

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
for _c in (out, err):
    if not _c.is_terminal:  # pipes and logs: do not squeeze tables into 80 columns
        _c.width = 120

JsonOpt = Annotated[bool, typer.Option(
    "--json", help="Print the result as one JSON object on the last line of stdout (long-running commands: "
                   "one line per event).")]
ReasonOpt = Annotated[str | None, typer.Option("--reason", help="Why: recorded in the model's history.")]


# -- settings ---------------------------------------------------------------------------------

class _State:
    settings: Settings | None = None


def use_settings(s: Settings) -> None:
    """Called by the root callback with what `--home`/`--db` and the environment say."""
    _State.settings = s


def settings() -> Settings:
    """The settings of this invocation (from the environment when the root callback did not run,
    as in tests that call a command function directly)."""
    return _State.settings or Settings.from_env()


def registry() -> Registry:
    """The registry of this invocation's settings (imported late: `--help` stays light)."""
    from shipyard.registry import Registry

    return Registry(settings=settings())


# -- the output contract ----------------------------------------------------------------------

def emit_json(obj: dict[str, Any]) -> None:
    """One JSON object on one line of stdout, flushed (so JSON Lines reach a pipe per event)."""
    sys.stdout.write(json.dumps(_clean(obj), default=str, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def _clean(obj: Any) -> Any:
    """NaN and infinity are not JSON: report them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


@contextmanager
def reporting(as_json: bool, on_interrupt: Callable[[str], dict[str, Any]] | None = None) -> Iterator[None]:
    """Turn our errors into a message on stderr, a `{"error": ...}` JSON line, and an exit code."""
    try:
        yield
    except RunInterrupted as e:
        err.print(f"[yellow]interrupted:[/] {escape(str(e))}")
        if as_json:
            emit_json(on_interrupt(e.run_id) if on_interrupt else {"error": str(e)})
        raise typer.Exit(e.exit_code) from None
    except ShipyardError as e:
        err.print(f"[red]error:[/] {escape(str(e))}")
        if as_json:
            emit_json({"error": str(e), "error_type": type(e).__name__})
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/]")
        if as_json:
            emit_json({"error": "interrupted", "error_type": "KeyboardInterrupt"})
        raise typer.Exit(1) from None
    except (typer.Exit, typer.Abort, SystemExit):
        raise
    except Exception as e:  # noqa: BLE001 - the contract: one line and a JSON object, never a bare traceback
        err.print(f"[red]error:[/] {type(e).__name__}: {escape(str(e))}")
        if as_json:
            emit_json({"error": f"{type(e).__name__}: {e}", "error_type": type(e).__name__})
        raise typer.Exit(1) from None


# -- parsing ------------------------------------------------------------------------------------

_SPAN = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")


def parse_since(text: str, now: float | None = None) -> float:
    """`30m`, `2h`, `7d` (ago) or an ISO 8601 time → unix seconds (`--since` of monitor and retrain)."""
    now = time.time() if now is None else now
    if m := _SPAN.match(text.strip()):
        return now - float(m[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m[2]]
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"--since {text!r}: give a span such as 30m, 2h or 7d, or an ISO time such as "
                         "2026-11-27T10:00") from None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


# -- formatting for people ----------------------------------------------------------------------

def pct(v: float | None) -> str:
    return "–" if v is None else f"{v:.2%}"


def size(n: float | None) -> str:
    """Bytes in decimal units, as `ls -h --si` would say them."""
    if n is None:
        return "–"
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def when(iso: str | None) -> str:
    """An ISO time as `YYYY-MM-DD HH:MM:SS` (the tables say UTC)."""
    return iso[:19].replace("T", " ") if iso else "–"


def batch_invariance(v: dict[str, Any]) -> str:
    """A variant's batch invariance in words: whether its answers depend on their batch-mates."""
    if v.get("batch_invariant") is None:
        return "not measured"
    return "invariant" if v["batch_invariant"] else f"varies {v.get('batch_max_diff') or 0:.1e}"


def variants_table(variants: list[dict[str, Any]]) -> Table:
    """The measured variants of a bundle (`optimize` and `bundle show`), relative to fp32."""
    fp32 = next((v for v in variants if v["name"] == "fp32"), variants[0])
    regression = fp32.get("mae") is not None
    t = Table("variant", "MAE" if regression else "accuracy", "size", "×fp32", "p50 b=1", "b=64 /s", "×fp32", "parity",
              "in a batch", "")
    for v in variants:
        parity = (f"max diff {v['max_abs_diff']:.1e}" if v.get("max_abs_diff") is not None
                  else f"agree {v['agreement']:.1%}" if v.get("agreement") is not None else "")
        t.add_row(v["name"], f"{v['mae']:.4g}" if regression else pct(v["accuracy"]),
                  f"{v['size_bytes'] / 1024:,.0f} KiB",
                  f"{v['size_bytes'] / fp32['size_bytes']:.2f}", f"{v['latency_p50_ms'] * 1000:,.1f} µs",
                  f"{v['throughput_per_s']:,.0f}", f"{v['throughput_per_s'] / fp32['throughput_per_s']:.2f}",
                  parity, batch_invariance(v), "[green]chosen[/]" if v.get("chosen") else "")
    return t
