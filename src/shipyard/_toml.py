"""Reading the project's configuration files (alert rules, autopilot policies): one TOML format,
errors that name the file and what is wrong with it."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from shipyard.errors import ConfigError


def read(path: str | Path, what: str) -> dict[str, Any]:
    """The parsed document, or a ConfigError naming `what` (the setting the file was given for)."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except OSError as e:
        raise ConfigError(what, str(path), f"cannot read it ({e.strerror})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(what, str(path), f"not valid TOML: {e}") from None
