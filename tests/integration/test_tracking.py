"""Run tracking on both databases we support: SQLite (default) and a real PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from shipyard.errors import UsageError
from shipyard.settings import Settings
from shipyard.store.engine import MIGRATIONS, current_revision, dispose_engines, engine_for
from shipyard.store.schema import HEAD, run_metrics
from shipyard.training import Recipe
from shipyard.training.tracking import RunStore

pytestmark = pytest.mark.usefixtures("close_pools")


def test_head_constant_matches_the_migrations() -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(cfg).get_current_head() == HEAD


def test_migrations_create_the_schema_once(reg_settings: Settings) -> None:
    engine = engine_for(reg_settings.db_url)
    assert current_revision(engine) == HEAD
    tables = set(sa.inspect(engine).get_table_names())
    assert {"runs", "run_metrics", "run_artifacts", "alembic_version"} <= tables
    dispose_engines()
    assert current_revision(engine_for(reg_settings.db_url)) == HEAD  # idempotent


def test_runs_persist_with_metrics_and_artifacts(reg_settings: Settings) -> None:
    store = RunStore(reg_settings)
    run_id = store.create(Recipe(epochs=3).to_dict(), "mnist-sample")
    for epoch in (1, 2, 3):
        store.log_epoch(run_id, epoch, {"val_accuracy": 0.5 + epoch / 10, "train_loss": 1 / epoch},
                        epochs_run=epoch, best_epoch=epoch, best_val_accuracy=0.5 + epoch / 10)
    store.put_artifact(run_id, "checkpoint", b"first")
    old = store.get(run_id).artifacts["checkpoint"]["sha256"]
    store.put_artifact(run_id, "checkpoint", b"second")
    store.update(run_id, status="finished")
    dispose_engines()
    store = RunStore(reg_settings)  # a fresh store, as another process would see it
    run = store.get(run_id)
    assert run.status == "finished" and run.epochs_run == 3
    assert run.metrics["val_accuracy"] == pytest.approx([0.6, 0.7, 0.8])
    assert Path(run.checkpoint).read_bytes() == b"second"
    assert store.artifacts.path(old).exists()  # blobs are immutable, never deleted under a reader
    assert run.recipe["epochs"] == 3
    assert [r.id for r in store.list(status="finished")] == [run_id]


WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from shipyard.settings import Settings
    from shipyard.training import Recipe
    from shipyard.training.tracking import RunStore
    home, url, tag = sys.argv[1], sys.argv[2] or None, sys.argv[3]
    store = RunStore(Settings(home=Path(home), database_url=url))
    for i in range(15):
        rid = store.create(Recipe(seed=i).to_dict(), f"writer-{tag}")
        for epoch in range(1, 6):
            store.log_epoch(rid, epoch, {"val_accuracy": epoch / 10, "train_loss": 1.0},
                            epochs_run=epoch)
            store.put_artifact(rid, "checkpoint", f"{tag}-{i}-{epoch}".encode())
        store.update(rid, status="finished")
""")


def test_two_processes_writing_at_once_lose_nothing(reg_settings: Settings, tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    url = reg_settings.database_url or ""
    RunStore(reg_settings)  # migrate first, as any command does
    procs = [subprocess.Popen([sys.executable, str(script), str(reg_settings.home), url, tag],
                              stderr=subprocess.PIPE, text=True) for tag in ("a", "b")]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    store = RunStore(reg_settings)
    found = store.list(limit=100)
    assert len(found) == 30
    assert all(r.status == "finished" and r.epochs_run == 5 for r in found)
    assert sorted({r.data_source for r in found}) == ["writer-a", "writer-b"]
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(run_metrics)).scalar() == 30 * 5 * 2
    for r in found:
        assert Path(r.checkpoint).read_bytes().endswith(b"-5")


def test_unreachable_database_is_a_clear_error(tmp_path: Path) -> None:
    from shipyard.errors import ShipyardError

    s = Settings(home=tmp_path, database_url="postgresql+psycopg://nobody@127.0.0.1:1/none")
    with pytest.raises(ShipyardError, match="cannot reach the database"):
        RunStore(s)


def test_a_training_run_tracked_in_postgres(fresh_pg_url: str, tmp_path: Path) -> None:
    from shipyard.training import get_run, train

    s = Settings(home=tmp_path / "home", database_url=fresh_pg_url)
    run = train(data="mnist-sample", epochs=1, settings=s, progress=False)
    again = get_run(run.id, settings=s)
    assert again.status == "finished" and again.metrics["val_accuracy"] == run.metrics["val_accuracy"]
    assert not (tmp_path / "home" / "shipyard.db").exists()  # nothing went to SQLite


# -- names and tags (0011) -----------------------------------------------------------------------
def _at(engine: sa.Engine, revision: str, how: str = "upgrade") -> None:
    with engine.begin() as conn:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["connection"] = conn
        getattr(command, how)(cfg, revision)


def test_a_0010_database_upgrades_to_0011_and_keeps_its_runs_and_alerts(reg_settings: Settings) -> None:
    engine = sa.create_engine(reg_settings.db_url)
    if engine.dialect.name == "sqlite":
        Path(engine.url.database or "").parent.mkdir(parents=True, exist_ok=True)
    try:
        _at(engine, "0010")
        assert current_revision(engine) == "0010"
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO runs (id, status, created_at, recipe, data_source, epochs_run) "
                                 "VALUES ('oldrun', 'finished', CURRENT_TIMESTAMP, '{\"epochs\": 3}', 'old-data', 3)"))
            conn.execute(sa.text("INSERT INTO alerts (model, version, rule, kind, severity, status, opened_at, "
                                 "last_seen_at, message, details) VALUES ('digits', 1, 'drift', 'drift', 'warning', "
                                 "'firing', 1.0, 2.0, 'input drift', '{}')"))
    finally:
        engine.dispose()

    store = RunStore(reg_settings)  # brings it to HEAD, as any command does
    assert current_revision(store.engine) == HEAD >= "0011"
    old = store.get("oldrun")
    assert (old.status, old.epochs_run, old.recipe, old.name, old.tags) == ("finished", 3, {"epochs": 3}, None, {})
    assert old.to_dict()["name"] is None and old.to_dict()["tags"] == {}
    from shipyard.monitor import alerts

    [alert] = alerts.recent(store.engine, "digits")
    assert alert["message"] == "input drift"
    assert (alert["acknowledged_at"], alert["acknowledged_by"], alert["ack_reason"]) == (None, None, None)
    assert "ix_runs_name" in {ix["name"] for ix in sa.inspect(store.engine).get_indexes("runs")}
    store.set_name_tags("oldrun", name="baseline", tags={"team": "vision"})
    assert [r.id for r in store.list(name="baseline")] == ["oldrun"]
    dispose_engines()

    engine = sa.create_engine(reg_settings.db_url)  # and back down: the rows stay, the columns go
    try:
        _at(engine, "0010", "downgrade")
        assert "name" not in {c["name"] for c in sa.inspect(engine).get_columns("runs")}
        assert "ack_reason" not in {c["name"] for c in sa.inspect(engine).get_columns("alerts")}
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT data_source FROM runs")).scalars().all() == ["old-data"]
            assert conn.execute(sa.text("SELECT count(*) FROM alerts")).scalar() == 1
    finally:
        engine.dispose()


def test_runs_have_a_name_and_tags_to_find_them_by(reg_settings: Settings) -> None:
    store = RunStore(reg_settings)
    a = store.create(Recipe().to_dict(), "mnist-sample", name="wide mlp", tags={"team": "vision", "v.2": "yes"})
    b = store.create(Recipe().to_dict(), "mnist-sample")
    assert (store.get(a).name, store.get(a).tags) == ("wide mlp", {"team": "vision", "v.2": "yes"})
    assert (store.get(b).name, store.get(b).tags) == (None, {})
    assert [r.id for r in store.list(name="wide mlp")] == [a]
    assert [r.id for r in store.list(tag="v.2")] == [a]
    assert [r.id for r in store.list(tag="team=vision")] == [a]
    assert store.list(tag="team=audio") == [] and store.list(name="wide") == []

    run = store.set_name_tags(a[:6], name="wider mlp", tags={"team": "audio", "seed": "3"}, untag=["v.2"])
    assert (run.id, run.name, run.tags) == (a, "wider mlp", {"team": "audio", "seed": "3"})
    assert store.set_name_tags(a, tags={"only": "this"}, replace=True).tags == {"only": "this"}
    cleared = store.set_name_tags(a, name="", untag=["only"])
    assert (cleared.name, cleared.tags) == (None, {})

    for kwargs, message in [
        ({"name": "x" * 129}, "a run name must be at most 128 characters, got 129"),
        ({"name": "two\nlines"}, "a run name must be printable characters"),
        ({"name": "   "}, "a run name must be 1..128 printable characters"),
        ({"tags": {"bad key": "v"}}, "tag key 'bad key': 1..64 characters of A-Z a-z 0-9 _ . -"),
        ({"tags": {"k" * 65: "v"}}, "1..64 characters"),
        ({"tags": {"": "v"}}, "tag key ''"),
        ({"tags": {"k": "v" * 257}}, "tag k: the value must be at most 256 characters, got 257"),
        ({"tags": {f"k{i}": "v" for i in range(33)}}, "a run has at most 32 tags, got 33"),
        ({"untag": ["nope"]}, f"run {b} has no tag 'nope' (it has no tags)"),
    ]:
        with pytest.raises(UsageError) as e:
            store.set_name_tags(b, **kwargs)  # type: ignore[arg-type]
        assert message in str(e.value), (kwargs, str(e.value))
    store.set_name_tags(b, tags={f"k{i}": "v" for i in range(32)})
    with pytest.raises(UsageError, match=f"run {b} would have 33 tags; a run has at most 32"):
        store.set_name_tags(b, tags={"one": "more"})
    with pytest.raises(UsageError, match="a run name must be at most 128"):
        store.create(Recipe().to_dict(), "mnist-sample", name="y" * 129)
    with pytest.raises(UsageError, match="tag filter 'bad key'"):
        store.list(tag="bad key")
