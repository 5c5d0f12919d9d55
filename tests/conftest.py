"""Shared fixtures: a fresh SHIPYARD_HOME per test, one small trained run per session, and a
real throwaway PostgreSQL server started with initdb/pg_ctl on a free port."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from glob import glob
from pathlib import Path

import pytest

from shipyard.settings import Settings

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


def run_cli(args: list[str], env: dict[str, str], check: bool = True,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([*SHIPYARD, *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"shipyard {' '.join(args)} exited {p.returncode}:\n{p.stderr}")
    return p


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """One canonical MLP trained for 2 epochs on mnist-sample, shared by every test that only
    reads a trained run (and by later stages' tests)."""
    from shipyard.train import train

    s = Settings(home=tmp_path_factory.mktemp("trained") / "home")
    run = train(data="mnist-sample", epochs=2, settings=s, progress=False)
    return s, run


@pytest.fixture(scope="session")
def optimized(trained):  # type: ignore[no-untyped-def]
    """The shared trained run, optimized into a bundle: (settings, run, bundle, measured, reason)."""
    from shipyard.optimize.build import optimize

    settings, run = trained
    bundle, measured, reason = optimize(run, settings=settings, bench_seconds=0.05)
    return settings, run, bundle, measured, reason


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL server for the session (Debian's `postgresql`, installed by
    `make system-deps`), in a temp dir on a free loopback port, stopped at the end."""
    bins = sorted(glob("/usr/lib/postgresql/*/bin/initdb"))
    if not bins:
        raise RuntimeError("PostgreSQL is not installed: run `make system-deps`")
    bindir = Path(bins[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="shipyard-pg-"))
    data = root / "data"
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "shipyard",
                    "--auth=trust", "-E", "UTF8"], check=True, capture_output=True)
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"),
                    "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off",
                    "-w", "start"], check=True, capture_output=True)
    try:
        url = f"postgresql+psycopg://shipyard@127.0.0.1:{port}/postgres"
        yield url
    finally:
        from shipyard.registry.db import dispose_engines

        dispose_engines()
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                        "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def fresh_pg_url(postgres_url: str) -> str:
    """A new empty database on the session's PostgreSQL server, one per test."""
    import uuid

    import psycopg

    name = f"t_{uuid.uuid4().hex[:10]}"
    dsn = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return postgres_url.rsplit("/", 1)[0] + f"/{name}"
