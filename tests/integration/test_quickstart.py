"""The README's first command tells the whole story: `shipyard quickstart` on a fresh home."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from shipyard.registry import Registry
from shipyard.settings import Settings

from ..conftest import run_cli


def test_quickstart_closes_the_loop_and_leaves_no_process(quickstart) -> None:  # type: ignore[no-untyped-def]
    cli_env, r = quickstart
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["failed"] == 0 and out["requests"] > 500
    assert (out["champion"], out["promoted"]) == (1, 2)
    holdout = out["recent_holdout"]
    assert holdout["challenger"] >= holdout["champion"] + 0.05, holdout
    report = Path(out["report"])
    assert report.is_file() and 'class="sy-chart"' in report.read_text()
    for stage in ("train the canonical recipe", "shift the traffic", "retrain from production", "canary and promote"):
        assert stage in r.stderr
    home = Path(cli_env["SHIPYARD_HOME"])
    assert str(home.resolve()) in r.stderr  # it says where everything is
    reg = Registry(settings=Settings(home=home))
    assert reg.get("digits@production").version == 2
    assert reg.get("digits@2").meta.lineage.parent_version == 1
    # v2's reference is the shifted world it was retrained for (its recent holdout, never trained on)
    assert str(reg.get("digits@2").meta.to_dict()["reference"]["held_out"]).endswith("labelled production samples")
    # no server left behind: its metrics folder is gone and its port is closed
    assert not list((home / "run").glob("metrics-*"))
    port = int(r.stderr.split("serving on http://127.0.0.1:")[1].split()[0])
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0


def test_quickstart_exits_non_zero_when_a_stage_fails(cli_env: dict[str, str]) -> None:
    r = run_cli(["quickstart", "--epochs", "0", "--json"], cli_env, check=False, timeout=300)
    assert r.returncode != 0 and "train the canonical recipe" in json.loads(r.stdout.strip().splitlines()[-1])["error"]
