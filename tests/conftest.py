"""Shared fixtures: a fresh SHIPYARD_HOME per test, one small trained run per session (optimized,
and registered as the `production` champion), a real throwaway PostgreSQL server started with
initdb/pg_ctl on a free port, settings for both databases, and closing the pools after a test."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from harness.pg import Postgres, free_port
from shipyard.settings import Settings

if TYPE_CHECKING:
    from shipyard.bundle import Bundle
    from shipyard.optimizing.evaluate import Measured
    from shipyard.registry import Registry
    from shipyard.training import Run

    # what the shared fixtures below hand a test (annotate a test's parameter with these)
    Trained = tuple[Settings, Run]
    Optimized = tuple[Settings, Run, Bundle, list[Measured], str]
    Champion = tuple[Settings, Registry]

ROOT = Path(__file__).resolve().parents[1]
SHIPYARD = [sys.executable, "-m", "shipyard"]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home")


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """Environment for running the real `shipyard` command against a fresh home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")}
    env["SHIPYARD_HOME"] = str(tmp_path / "home")
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture(scope="session")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], subprocess.CompletedProcess[str]]:
    """`shipyard quickstart --json` run once on a fresh home (its test checks it; the UI's test
    browses the database it fills): (the environment, the finished process)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")}
    env["SHIPYARD_HOME"] = str(tmp_path_factory.mktemp("quickstart") / "home")
    env["PYTHONUNBUFFERED"] = "1"
    return env, run_cli(["quickstart", "--json"], env, timeout=600)


def run_cli(args: list[str], env: dict[str, str], check: bool = True,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([*SHIPYARD, *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"shipyard {' '.join(args)} exited {p.returncode}:\n{p.stderr}")
    return p


def stream_cli(args: list[str], env: dict[str, str], lines: int, timeout: float = 60) -> tuple[list[str], int, str]:
    """Start a long-running `shipyard` command, read its first `lines` stdout lines as they come,
    then Ctrl-C it: (the lines, its exit code, its stderr). Killed if it hangs past `timeout`."""
    import signal
    import tempfile
    import threading

    with tempfile.TemporaryFile("w+") as errf:
        proc = subprocess.Popen([*SHIPYARD, *args], env=env, stdout=subprocess.PIPE, stderr=errf, text=True)
        watchdog = threading.Timer(timeout, proc.kill)
        watchdog.start()
        try:
            assert proc.stdout is not None
            got = [proc.stdout.readline() for _ in range(lines)]
            proc.send_signal(signal.SIGINT)
            rc = proc.wait(timeout)
        finally:
            watchdog.cancel()
            proc.kill()
            proc.wait()
            proc.stdout.close()  # type: ignore[union-attr]
        errf.seek(0)
        return got, rc, errf.read()


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """One canonical MLP trained for 2 epochs on mnist-sample, shared by every test that only
    reads a trained run (and by later stages' tests)."""
    from shipyard.training import train

    s = Settings(home=tmp_path_factory.mktemp("trained") / "home")
    run = train(data="mnist-sample", epochs=2, settings=s, progress=False)
    return s, run


@pytest.fixture(scope="session")
def optimized(trained: Trained) -> Optimized:
    """The shared trained run, optimized into a bundle: (settings, run, bundle, measured, reason)."""
    from shipyard.optimizing.build import optimize

    settings, run = trained
    bundle, measured, reason = optimize(run, settings=settings, bench_seconds=0.05)
    return settings, run, bundle, measured, reason


_free_port = free_port


@pytest.fixture
def champion(optimized: Optimized, tmp_path: Path) -> Champion:
    """The shared optimized bundle registered as digits@1 behind `production` in a fresh home:
    (settings, registry)."""
    from shipyard.registry import Registry

    _, _, bundle, _, _ = optimized
    settings = Settings(home=tmp_path / "home")
    reg = Registry(settings=settings)
    reg.register(bundle.path, "digits", alias="production")
    return settings, reg


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A real PostgreSQL server for the session, on a free loopback port, stopped at the end."""
    pg = Postgres()
    try:
        yield pg
    finally:
        from shipyard.store.engine import dispose_engines

        dispose_engines()
        pg.close()


@pytest.fixture(scope="session")
def postgres_url(postgres: Postgres) -> str:
    return postgres.url()


@pytest.fixture
def fresh_pg_url(postgres: Postgres) -> str:
    """A new empty database on the session's PostgreSQL server, one per test."""
    import uuid

    return postgres.create_db(f"t_{uuid.uuid4().hex[:10]}")


@pytest.fixture(params=["sqlite", "postgresql"])
def reg_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Settings for a fresh home, once on SQLite and once on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return Settings(home=tmp_path / "home")
    return Settings(home=tmp_path / "home", database_url=request.getfixturevalue("fresh_pg_url"))


@pytest.fixture
def close_pools() -> Iterator[None]:
    """Close every pooled database connection after the test, so none outlives its database. A
    module opts in with `pytestmark = pytest.mark.usefixtures("close_pools")`."""
    from shipyard.store.engine import dispose_engines

    yield
    dispose_engines()
