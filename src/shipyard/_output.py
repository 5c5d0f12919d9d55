"""Output contracts shared by every command: `--json` prints exactly one JSON object on one
line as the last line of stdout; narration, progress and errors go to stderr; exit codes are
0 (success), 1 (the operation failed), 2 (usage error)."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from shipyard.errors import RunInterrupted, ShipyardError

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
for _c in (out, err):
    if not _c.is_terminal:  # pipes and logs: do not squeeze tables into 80 columns
        _c.width = 120


def emit_json(obj: dict[str, Any]) -> None:
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


def pct(v: float | None) -> str:
    return "–" if v is None else f"{v:.2%}"
