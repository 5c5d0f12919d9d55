"""The deployment config (traffic weights over aliases, a shadow) stored in the registry, on both
databases we support, and `shipyard traffic` end to end: validation, history, the refusal to
remove an alias that carries traffic, the change marker servers poll, and the 0002 → 0003 upgrade."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from harness.bundles import make_bundle
from shipyard.errors import NotFound, UsageError
from shipyard.registry import Deployment, Registry, RegistryConflict
from shipyard.settings import Settings
from shipyard.store.engine import MIGRATIONS, current_revision, dispose_engines
from shipyard.store.schema import HEAD

from ..conftest import SHIPYARD, run_cli

pytestmark = pytest.mark.usefixtures("close_pools")


@pytest.fixture
def registry(reg_settings: Settings, tmp_path: Path) -> Registry:
    """`tiny` with version 1 as production and version 2 as candidate."""
    reg = Registry(settings=reg_settings)
    reg.register(make_bundle(tmp_path / "b1", seed=1), alias="production")
    reg.register(make_bundle(tmp_path / "b2", seed=2), alias="candidate")
    return reg


def traffic_events(reg: Registry, name: str = "tiny") -> list[Any]:
    return [e for e in reg.history(name) if e.kind == "traffic"]


# -- the Python API ---------------------------------------------------------------------------
def test_the_default_is_everything_to_production(registry: Registry, tmp_path: Path) -> None:
    dep = registry.traffic("tiny")
    assert dep == Deployment("tiny", {"production": 100}, None, 0, None)
    assert dep.to_dict() == {"name": "tiny", "weights": {"production": 100}, "shadow": None, "revision": 0,
                             "updated_at": None}
    registry.register(make_bundle(tmp_path / "d", seed=3), name="digits")  # no alias at all
    assert registry.traffic("digits").weights == {"production": 100}
    assert traffic_events(registry) == []  # reading stores nothing


def test_set_and_read_back(registry: Registry) -> None:
    dep = registry.set_traffic("tiny", {"production": 90, "candidate": 10}, reason="canary")
    assert (dep.weights, dep.shadow, dep.revision) == ({"production": 90, "candidate": 10}, None, 1)
    assert dep.updated_at is not None and dep.updated_at.tzinfo is not None
    dispose_engines()  # a fresh process sees the same config
    registry = Registry(settings=registry.settings)
    assert registry.traffic("tiny") == dep
    assert dep.aliases == ["production", "candidate"]

    # zero shares are dropped; an alias with no share may be the shadow
    shadowed = registry.set_traffic("tiny", {"production": 100, "candidate": 0}, shadow="candidate")
    assert (shadowed.weights, shadowed.shadow, shadowed.revision) == ({"production": 100}, "candidate", 2)
    assert shadowed.aliases == ["production", "candidate"]
    assert registry.traffic("tiny") == shadowed
    flipped = registry.set_traffic("tiny", {"candidate": 100})
    assert (flipped.weights, flipped.shadow, flipped.revision) == ({"candidate": 100}, None, 3)


@pytest.mark.parametrize(("weights", "shadow", "error", "message"), [
    ({"production": 90}, None, UsageError, "must sum to 100, got 90 (production=90)"),
    ({"production": 0, "candidate": 0}, None, UsageError, "must sum to 100, got 0"),
    ({"production": 110, "candidate": -10}, None, UsageError,
     "weight of alias 'production' must be a whole percent from 0 to 100, got 110"),
    ({"production": 50.0, "candidate": 50}, None, UsageError, "whole percent from 0 to 100, got 50.0"),
    ({"production": "50", "candidate": 50}, None, UsageError, "got '50'"),
    ({}, None, UsageError, "summing to 100"),
    ({"Prod": 100}, None, UsageError, "not an alias: 'Prod'"),
    ({"latest": 100}, None, UsageError, "alias 'latest' is reserved"),
    ({"staging": 100}, None, NotFound,
     "model 'tiny' has no alias 'staging' (aliases: candidate→2, production→1); point it at a version first"),
    ({"production": 100}, "staging", NotFound, "has no alias 'staging'"),
    ({"production": 90, "candidate": 10}, "candidate", UsageError,
     "alias 'candidate' cannot both carry 10% of the traffic and be the shadow"),
])
def test_invalid_configs_are_refused_and_store_nothing(registry: Registry, weights: dict[str, Any],
                                                       shadow: str | None, error: type[Exception],
                                                       message: str) -> None:
    before = registry.change_marker(["tiny"])
    with pytest.raises(error) as e:
        registry.set_traffic("tiny", weights, shadow=shadow)
    assert message in str(e.value)
    assert registry.traffic("tiny").revision == 0
    assert traffic_events(registry) == []
    assert registry.change_marker(["tiny"]) == before


def test_an_unknown_model_is_not_found(registry: Registry) -> None:
    with pytest.raises(NotFound, match="no model 'nosuch'"):
        registry.traffic("nosuch")
    with pytest.raises(NotFound, match="no model 'nosuch'"):
        registry.set_traffic("nosuch", {"production": 100})
    with pytest.raises(UsageError, match="not a model name"):
        registry.traffic("bad name")


def test_setting_the_same_config_again_changes_nothing(registry: Registry) -> None:
    first = registry.set_traffic("tiny", {"production": 90, "candidate": 10}, reason="canary")
    same = registry.set_traffic("tiny", {"candidate": 10, "production": 90, "staging": 0}, reason="again")
    assert same == first  # same revision and time: nothing was written
    assert [e.reason for e in traffic_events(registry)] == ["canary"]
    # an explicit production=100 over the default is stored: it pins the config
    assert registry.set_traffic("tiny", {"production": 100}).revision == 2


def test_history_records_each_change_with_the_previous_config(registry: Registry) -> None:
    registry.set_traffic("tiny", {"production": 90, "candidate": 10}, reason="canary 10%")
    other = Registry(settings=registry.settings, actor="ci@builder")
    other.set_traffic("tiny", {"production": 100}, shadow="candidate", reason="shadow only")
    events = traffic_events(registry)
    assert [(e.reason, e.actor) for e in events] == [("canary 10%", registry.actor), ("shadow only", "ci@builder")]
    assert events[0].details == {
        "weights": {"production": 90, "candidate": 10}, "shadow": None, "revision": 1,
        "versions": {"production": 1, "candidate": 2},
        "previous": {"weights": {"production": 100}, "shadow": None, "revision": 0}}
    assert events[1].details["previous"] == {"weights": {"production": 90, "candidate": 10}, "shadow": None,
                                             "revision": 1}
    assert (events[1].details["weights"], events[1].details["shadow"]) == ({"production": 100}, "candidate")
    assert events[1].details["versions"] == {"production": 1, "candidate": 2}
    assert events[0].to_dict()["kind"] == "traffic" and events[0].version is None


def test_an_alias_that_carries_traffic_cannot_be_removed(registry: Registry, tmp_path: Path) -> None:
    registry.set_traffic("tiny", {"production": 90, "candidate": 10})
    with pytest.raises(RegistryConflict) as e:
        registry.unalias("tiny", "candidate")
    assert "alias 'candidate' carries 10% of the traffic of 'tiny'" in str(e.value)
    assert "shipyard traffic tiny" in str(e.value)
    registry.set_traffic("tiny", {"production": 100}, shadow="candidate")
    with pytest.raises(RegistryConflict, match="alias 'candidate' is the shadow of 'tiny'.*--no-shadow"):
        registry.unalias("tiny", "candidate")
    with pytest.raises(RegistryConflict, match="carries 100% of the traffic"):
        registry.unalias("tiny", "production")
    assert registry.get("tiny@candidate").version == 2  # still there
    assert [e.kind for e in registry.history("tiny")][-1] == "traffic"  # no unalias recorded

    registry.set_alias("tiny", "staging", 1)  # not routed: removable as before
    assert registry.unalias("tiny", "staging").from_version == 1
    registry.set_traffic("tiny", {"production": 100})  # candidate no longer shadows
    assert registry.unalias("tiny", "candidate").from_version == 2
    with pytest.raises(NotFound, match="has no alias 'candidate'"):
        registry.set_traffic("tiny", {"production": 50, "candidate": 50})


def test_moving_an_alias_keeps_the_config_and_the_new_version_gets_its_share(registry: Registry,
                                                                              tmp_path: Path) -> None:
    registry.set_traffic("tiny", {"production": 80, "candidate": 20})
    registry.register(make_bundle(tmp_path / "b3", seed=3))
    registry.set_alias("tiny", "candidate", 3)
    dep = registry.traffic("tiny")
    assert (dep.weights, dep.revision) == ({"production": 80, "candidate": 20}, 1)
    assert registry.get("tiny@candidate").version == 3


def test_compare_and_set_refuses_a_stale_revision(registry: Registry) -> None:
    registry.set_traffic("tiny", {"production": 90, "candidate": 10}, expect_revision=0)
    with pytest.raises(RegistryConflict, match=r"changed meanwhile \(now revision 1: production=90 candidate=10"):
        registry.set_traffic("tiny", {"production": 100}, expect_revision=0)
    assert registry.traffic("tiny").weights == {"production": 90, "candidate": 10}
    assert registry.set_traffic("tiny", {"production": 100}, expect_revision=1).revision == 2


def test_change_marker_moves_with_every_change_and_only_then(registry: Registry, tmp_path: Path) -> None:
    assert registry.change_marker([]) == 0
    assert registry.change_marker(["nosuch"]) == 0
    start = registry.change_marker(["tiny"])
    assert start > 0  # the registrations and alias moves of the fixture
    assert registry.change_marker(["tiny", "tiny", "nosuch"]) == start

    def after(action: Any) -> int:
        action()
        return registry.change_marker(["tiny"])

    m1 = after(lambda: registry.set_alias("tiny", "candidate", 1))
    assert m1 > start
    assert after(lambda: registry.set_alias("tiny", "candidate", 1)) == m1  # already there: no change
    m2 = after(lambda: registry.set_traffic("tiny", {"production": 90, "candidate": 10}))
    assert m2 > m1
    assert after(lambda: registry.set_traffic("tiny", {"production": 90, "candidate": 10})) == m2  # no-op
    assert after(lambda: (registry.traffic("tiny"), registry.get("tiny@candidate"), registry.list())) == m2
    with pytest.raises(UsageError):
        registry.set_traffic("tiny", {"production": 99})
    assert registry.change_marker(["tiny"]) == m2

    # another model's changes move its marker and a marker over both, not this one's
    registry.register(make_bundle(tmp_path / "d", seed=4), name="digits", alias="production")
    both = registry.change_marker(["tiny", "digits"])
    assert registry.change_marker(["tiny"]) == m2
    assert both > m2
    registry.set_traffic("digits", {"production": 100})
    assert registry.change_marker(["tiny"]) == m2
    assert registry.change_marker(["digits", "tiny"]) > both
    assert registry.change_marker("tiny") == m2  # type: ignore[arg-type]  # one name, not its letters
    # None: every model (a server following every production alias), the same sum in one query
    assert registry.change_marker(None) == registry.change_marker(["digits", "tiny"])


def test_concurrent_changes_get_consecutive_revisions(registry: Registry) -> None:
    configs = [({"production": 100 - k, "candidate": k}, None) for k in (10, 20, 30)] + [({"production": 100},
                                                                                           "candidate")]
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        reg = Registry(settings=registry.settings, actor=f"w{i}@test")
        try:
            for k in range(6):
                weights, shadow = configs[(i + k) % len(configs)]
                reg.set_traffic("tiny", weights, shadow=shadow)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    events = traffic_events(registry)
    revisions = [e.details["revision"] for e in events]
    assert revisions == list(range(1, len(events) + 1))
    for prev, e in zip(events, events[1:], strict=False):
        assert e.details["previous"] == {k: prev.details[k] for k in ("weights", "shadow", "revision")}
        assert (e.details["weights"], e.details["shadow"]) != (prev.details["weights"], prev.details["shadow"])
    assert registry.traffic("tiny").revision == len(events)


def test_a_0002_database_upgrades_and_keeps_its_models(reg_settings: Settings, tmp_path: Path) -> None:
    url = reg_settings.db_url
    engine = sa.create_engine(url)
    if engine.dialect.name == "sqlite":
        Path(engine.url.database or "").parent.mkdir(parents=True, exist_ok=True)
    try:
        with engine.begin() as conn:
            cfg = Config()
            cfg.set_main_option("script_location", str(MIGRATIONS))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0002")
        assert current_revision(engine) == "0002"
        assert "deployments" not in sa.inspect(engine).get_table_names()
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO models (name, created_at, last_version) "
                                 "VALUES ('old', CURRENT_TIMESTAMP, 0)"))
    finally:
        engine.dispose()

    reg = Registry(settings=reg_settings)  # brings it to HEAD
    assert HEAD >= "0003"
    assert current_revision(reg.engine) == HEAD
    assert {"deployments", "prediction_chunks", "feedback"} <= set(sa.inspect(reg.engine).get_table_names())
    assert [m.name for m in reg.list()] == ["old"]
    assert reg.traffic("old").revision == 0
    reg.register(make_bundle(tmp_path / "b", seed=5), name="old", alias="production")
    assert reg.set_traffic("old", {"production": 100}).revision == 1


# -- the command line -----------------------------------------------------------------------
def last_json(stdout: str) -> dict:  # type: ignore[type-arg]
    lines = stdout.strip().splitlines()
    assert lines, "no output on stdout"
    return json.loads(lines[-1])


def table_rows(text: str) -> list[list[str]]:
    """The body rows of a rich table, each cell's wrapped lines joined again."""
    rows: list[list[str]] = []
    for line in text.splitlines():
        if not line.startswith("│"):
            continue
        cells = [c.strip() for c in line.strip("│").split("│")]
        if rows and not cells[0]:  # a wrapped continuation of the row above
            rows[-1] = [" ".join(x for x in (a, b) if x) for a, b in zip(rows[-1], cells, strict=True)]
        else:
            rows.append(cells)
    return rows


def traffic(args: list[str], env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    return run_cli(["traffic", *args], env, check=check)


@pytest.fixture
def registered(cli_env: dict[str, str], tmp_path: Path) -> Registry:
    """digits@1 as production and digits@2 as candidate, registered through the Python API."""
    reg = Registry(settings=Settings(home=Path(cli_env["SHIPYARD_HOME"])))
    reg.register(make_bundle(tmp_path / "r1", name="digits", seed=1), alias="production")
    reg.register(make_bundle(tmp_path / "r2", name="digits", seed=2), alias="candidate")
    dispose_engines()
    return reg


def test_cli_shows_and_sets_the_split(registered: Registry, cli_env: dict[str, str]) -> None:
    shown = last_json(traffic(["digits", "--json"], cli_env).stdout)
    assert shown == {"name": "digits", "weights": {"production": 100}, "shadow": None, "revision": 0,
                     "updated_at": None, "versions": {"production": 1}}

    p = traffic(["digits", "production=90", "candidate=10", "--reason", "canary", "--json"], cli_env)
    assert len(p.stdout.strip().splitlines()) == 1
    set1 = last_json(p.stdout)
    assert (set1["weights"], set1["shadow"], set1["revision"], set1["changed"]) == (
        {"production": 90, "candidate": 10}, None, 1, True)
    assert set1["versions"] == {"production": 1, "candidate": 2}
    assert "digits traffic: production=90 candidate=10, shadow none (revision 1; was production=100" in p.stderr
    again = traffic(["digits", "production=90", "candidate=10", "--json"], cli_env)
    assert (last_json(again.stdout)["revision"], last_json(again.stdout)["changed"]) == (1, False)
    assert "nothing changed" in again.stderr

    shadowed = last_json(traffic(["digits", "production=100", "--shadow", "candidate", "--json"], cli_env).stdout)
    assert (shadowed["weights"], shadowed["shadow"], shadowed["revision"]) == ({"production": 100}, "candidate", 2)
    # new weights keep the current shadow; --no-shadow alone keeps the weights
    kept = last_json(traffic(["digits", "production=100", "candidate=0", "--json"], cli_env).stdout)
    assert (kept["shadow"], kept["changed"]) == ("candidate", False)
    cleared = last_json(traffic(["digits", "--no-shadow", "--json"], cli_env).stdout)
    assert (cleared["weights"], cleared["shadow"], cleared["revision"]) == ({"production": 100}, None, 3)
    assert registered.traffic("digits").to_dict() == {k: v for k, v in cleared.items()
                                                      if k not in ("versions", "changed")}

    assert traffic(["digits", "production=95", "--shadow", "candidate"], cli_env, check=False).returncode == 2
    traffic(["digits", "production=80", "candidate=20"], cli_env)
    table = traffic(["digits"], cli_env).stdout
    assert "digits  (revision 4, set " in table
    assert all(s in table for s in ("production", "80%", "candidate", "20%"))
    assert "shadow" not in table

    refused = run_cli(["models", "unalias", "digits", "candidate"], cli_env, check=False)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "alias 'candidate' carries 20% of the traffic of 'digits'" in refused.stderr


def test_cli_history_shows_traffic_changes(registered: Registry, cli_env: dict[str, str]) -> None:
    traffic(["digits", "production=90", "candidate=10", "--reason", "canary"], cli_env)
    traffic(["digits", "production=100", "--shadow", "candidate"], cli_env)
    rows = table_rows(run_cli(["models", "history", "digits"], cli_env).stdout)
    assert [r[1:] for r in rows if r[1] == "traffic"] == [
        ["traffic", "production=90 candidate=10 (was production=100)", rows[0][3], "canary"],
        ["traffic", "production=100, shadow candidate (was production=90 candidate=10)", rows[0][3], ""]]
    events = last_json(run_cli(["models", "history", "digits", "--json"], cli_env).stdout)["events"]
    assert [(e["kind"], e["reason"]) for e in events if e["kind"] == "traffic"] == [("traffic", "canary"),
                                                                                      ("traffic", None)]
    assert events[-1]["details"]["previous"]["weights"] == {"production": 90, "candidate": 10}


@pytest.mark.parametrize(("args", "code", "message"), [
    (["digits", "production=abc"], 2, "the weight in 'production=abc' must be a whole percent from 0 to 100"),
    (["digits", "=5"], 2, "traffic wants ALIAS=WEIGHT assignments"),
    (["digits", "production"], 2, "got 'production'"),
    (["digits", "production=-5", "candidate=105"], 2, "the weight in 'production=-5'"),
    (["digits", "production=50", "production=50"], 2, "alias 'production' is given twice"),
    (["digits", "production=90"], 2, "must sum to 100, got 90"),
    (["digits", "Prod=100"], 2, "not an alias: 'Prod'"),
    (["digits", "--shadow", "candidate", "--no-shadow"], 2, "--shadow and --no-shadow exclude each other"),
    (["digits", "production=90", "candidate=10", "--shadow", "candidate"], 2, "cannot both carry 10%"),
    (["digits", "staging=100"], 1, "model 'digits' has no alias 'staging'"),
    (["nosuch"], 1, "no model 'nosuch'"),
    (["nosuch", "production=100"], 1, "no model 'nosuch'"),
])
def test_cli_errors_are_one_clear_line_with_meaningful_exit_codes(registered: Registry, cli_env: dict[str, str],
                                                                  args: list[str], code: int, message: str) -> None:
    for as_json in (False, True):
        p = traffic([*args, "--json"] if as_json else args, cli_env, check=False)
        assert p.returncode == code, p.stderr
        assert "Traceback" not in p.stderr
        assert p.stderr.strip().splitlines() == [p.stderr.strip()], p.stderr  # one line
        assert p.stderr.startswith("error: ") and message in p.stderr
        if as_json:
            assert message in last_json(p.stdout)["error"]
        else:
            assert p.stdout == ""
    assert registered.traffic("digits").revision == 0  # nothing stored


def test_cli_help(cli_env: dict[str, str]) -> None:
    p = run_cli(["traffic", "--help"], cli_env)
    assert "Usage:" in p.stdout and "ALIAS=WEIGHT" in p.stdout
    assert all(flag in p.stdout for flag in ("--shadow", "--no-shadow", "--reason", "--json"))
    assert "traffic" in run_cli(["--help"], cli_env).stdout


def test_cli_against_postgresql(fresh_pg_url: str, cli_env: dict[str, str], tmp_path: Path) -> None:
    env = dict(cli_env, SHIPYARD_DATABASE_URL=fresh_pg_url)
    reg = Registry(settings=Settings(home=Path(cli_env["SHIPYARD_HOME"]), database_url=fresh_pg_url))
    reg.register(make_bundle(tmp_path / "b1", seed=1), alias="production")
    reg.register(make_bundle(tmp_path / "b2", seed=2), alias="candidate")
    set1 = last_json(traffic(["tiny", "production=75", "candidate=25", "--json"], env).stdout)
    assert (set1["revision"], set1["versions"]) == (1, {"production": 1, "candidate": 2})
    assert reg.traffic("tiny").weights == {"production": 75, "candidate": 25}
    assert not (Path(cli_env["SHIPYARD_HOME"]) / "shipyard.db").exists()  # nothing went to SQLite


def test_traffic_does_not_import_torch_or_onnxruntime(registered: Registry, cli_env: dict[str, str]) -> None:
    code = ("import sys\nfrom shipyard.cli.app import app\n"
            "for args in (['digits'], ['digits', 'production=50', 'candidate=50']):\n"
            "    try:\n        app(['traffic', *args, '--json'])\n    except SystemExit as e:\n"
            "        assert e.code == 0, e.code\n"
            "print('torch' in sys.modules, 'onnxruntime' in sys.modules)\n")
    p = subprocess.run([SHIPYARD[0], "-c", code], env=cli_env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "False False"
    assert registered.traffic("digits").weights == {"production": 50, "candidate": 50}
