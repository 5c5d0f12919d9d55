"""`shipyard gc`: blobs nothing refers to are removed once older than the grace period; referenced
blobs, young ones and a blob stored again are kept; the registry still serves every version."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from harness.bundles import make_bundle
from shipyard.registry import Registry
from shipyard.settings import Settings
from shipyard.training.tracking import RunStore

from ..conftest import run_cli


def _age(path: Path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_gc_removes_old_orphans_and_keeps_what_is_referenced(tmp_path: Path, cli_env: dict[str, str]) -> None:
    settings = Settings(home=Path(cli_env["SHIPYARD_HOME"]))
    reg = Registry(settings=settings)
    v1 = reg.register(make_bundle(tmp_path / "b1", seed=1), "tiny", alias="production")
    reg.load(v1.ref)  # an unpacked cache entry that stays referenced
    runs = RunStore(settings)
    run_id = runs.create({"model": "mlp"}, "test")
    checkpoint = runs.put_artifact(run_id, "checkpoint", b"weights")
    old_orphan = reg.artifacts.put_bytes(b"left by a crash between the blob and its row")
    young_orphan = reg.artifacts.put_bytes(b"its row is still on its way")
    again = reg.artifacts.put_bytes(b"stored again just now")
    stale_cache = settings.home / "bundles" / ("f" * 64)  # an unpacked bundle no version names
    stale_cache.mkdir(parents=True)
    for sha in (v1.bundle_sha256, checkpoint, old_orphan, again):
        _age(reg.artifacts.path(sha), 7200)
    _age(stale_cache, 7200)
    reg.artifacts.put_bytes(b"stored again just now")  # renews it: its new reference is on its way

    dry = json.loads(run_cli(["gc", "--dry-run", "--json"], cli_env).stdout)
    assert [b["sha256"] for b in dry["removed"]] == [old_orphan] and dry["dry_run"]
    assert dry["caches_removed"] == [str(stale_cache)]
    assert reg.artifacts.exists(old_orphan) and stale_cache.exists()  # a dry run removes nothing

    done = json.loads(run_cli(["gc", "--json"], cli_env).stdout)
    assert [b["sha256"] for b in done["removed"]] == [old_orphan]
    assert done["bytes_freed"] == len(b"left by a crash between the blob and its row")
    assert done["kept_young"] == 2 and done["referenced"] == 2
    assert not reg.artifacts.exists(old_orphan) and not stale_cache.exists()
    for sha in (v1.bundle_sha256, checkpoint, young_orphan, again):
        assert reg.artifacts.exists(sha)
    assert Registry(settings=settings).load("tiny@production").path.name == v1.bundle_sha256

    assert json.loads(run_cli(["gc", "--grace", "0", "--json"], cli_env).stdout)["removed"] != []
    bad = run_cli(["gc", "--grace", "-1"], cli_env, check=False)
    assert bad.returncode == 2 and "--grace" in bad.stderr
