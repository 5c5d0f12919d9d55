"""Replicas on one PostgreSQL registry follow alias moves through LISTEN/NOTIFY, with polling off:
two `shipyard serve` processes switch to the new version without waiting for a poll interval."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from harness.bundles import make_bundle
from shipyard.registry import Registry
from shipyard.settings import Settings

from ..serving import serve, server_env


def _served_version(base: str) -> str:
    r = httpx.post(f"{base}/v1/models/digits:predict", json={"instances": [[0.5] * 784]}, timeout=5)
    assert r.status_code == 200
    return str(r.json()["model_version"])


def test_two_replicas_follow_an_alias_move_by_notification(fresh_pg_url: str, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", database_url=fresh_pg_url)
    reg = Registry(settings=settings)
    reg.register(make_bundle(tmp_path / "a"), "digits", alias="production")
    reg.register(make_bundle(tmp_path / "b", seed=1), "digits")
    env = server_env(tmp_path / "home", SHIPYARD_DATABASE_URL=fresh_pg_url)
    # --poll-s 0: no polling at all, so only a notification can tell them
    with serve(tmp_path / "home", "digits", "--poll-s", "0", env=env) as a, \
            serve(tmp_path / "home", "digits", "--poll-s", "0", env=env) as b:
        assert _served_version(a.base) == _served_version(b.base) == "1"
        t0 = time.monotonic()
        reg.set_alias("digits", "production", 2, reason="notify test")
        deadline = t0 + 30  # generous: a shared machine; typically well under a second
        while {_served_version(a.base), _served_version(b.base)} != {"2"}:
            assert time.monotonic() < deadline, "replicas did not follow the move"
            time.sleep(0.05)
        assert "PostgreSQL notifications" in a.log.read_text()
