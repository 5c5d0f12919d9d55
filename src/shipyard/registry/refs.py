"""Names and references: what a model name, an alias and a version number may be, and how
`NAME`, `NAME@3`, `NAME@production` and `NAME@latest` read. Every rule raises UsageError with
the bad value in its message, before anything touches the database."""

from __future__ import annotations

import json
import re
from typing import Any

from shipyard.errors import UsageError
from shipyard.store.schema import ALIAS_LEN, NAME_LEN

__all__ = ["RESERVED_ALIASES", "check_alias", "check_name", "check_tags", "check_version", "parse_ref"]

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_ALIAS_RE = re.compile(r"[a-z][a-z0-9_-]*")
_VERSION_RE = re.compile(r"[0-9]+")
#: `NAME@latest` is the newest version; no alias may take that name
RESERVED_ALIASES = frozenset({"latest"})


def check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or len(name) > NAME_LEN:
        raise UsageError(f"not a model name: {name!r} (letters, digits, '.', '_' and '-', "
                         f"starting with a letter or digit, at most {NAME_LEN} characters)")
    return name


def check_alias(alias: str) -> str:
    if isinstance(alias, str) and _VERSION_RE.fullmatch(alias):
        raise UsageError(f"alias {alias!r} is a number, which would be ambiguous with version {alias}; "
                         "aliases are names such as production or candidate")
    if alias in RESERVED_ALIASES:
        raise UsageError(f"alias {alias!r} is reserved: NAME@{alias} always means the newest version")
    if not isinstance(alias, str) or not _ALIAS_RE.fullmatch(alias) or len(alias) > ALIAS_LEN:
        raise UsageError(f"not an alias: {alias!r} (lowercase letters, digits, '_' and '-', starting "
                         f"with a letter, at most {ALIAS_LEN} characters)")
    return alias


def parse_ref(ref: str) -> tuple[str, int | str | None]:
    """`NAME` or `NAME@latest` → (name, None); `NAME@3` → (name, 3); `NAME@production` →
    (name, "production"). Raises UsageError for anything else."""
    if not isinstance(ref, str) or not ref.strip():
        raise UsageError("empty model reference; expected NAME, NAME@VERSION or NAME@ALIAS")
    name, sep, sel = ref.partition("@")
    if not name:
        raise UsageError(f"model reference {ref!r} has no name; expected NAME, NAME@VERSION or NAME@ALIAS")
    check_name(name)
    if not sep or sel == "latest":
        return name, None
    if not sel or "@" in sel:
        raise UsageError(f"not a model reference: {ref!r}; expected NAME, NAME@VERSION or NAME@ALIAS")
    if _VERSION_RE.fullmatch(sel):
        version = int(sel)
        if version < 1:
            raise UsageError(f"not a model reference: {ref!r}; versions start at 1")
        return name, version
    try:
        return name, check_alias(sel)
    except UsageError as e:
        raise UsageError(f"not a model reference: {ref!r}: {e}") from None


def check_version(version: int | str) -> int:
    """A version number given as an int or its digits (`set_alias NAME ALIAS 3`), ≥ 1."""
    if isinstance(version, int) and not isinstance(version, bool):
        v = version
    elif isinstance(version, str) and _VERSION_RE.fullmatch(version.strip()):
        v = int(version.strip())
    else:
        raise UsageError(f"not a version number: {version!r}")
    if v < 1:
        raise UsageError(f"not a version number: {version!r}; versions start at 1")
    return v


def check_tags(tags: dict[str, Any] | None) -> dict[str, str]:
    """A version's tags as stored: non-empty string keys, values as strings (others JSON-encoded)."""
    out: dict[str, str] = {}
    for k, v in (tags or {}).items():
        if not isinstance(k, str) or not k.strip():
            raise UsageError(f"tag keys must be non-empty strings, got {k!r}")
        out[k] = v if isinstance(v, str) else json.dumps(v)
    return out
