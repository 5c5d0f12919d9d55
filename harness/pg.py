"""A real, throwaway PostgreSQL server (Debian's `postgresql`, installed by `make system-deps`):
initdb in a temp dir, a free port, trust auth; restartable, so tests can take it away under load.
Shared by the test suite and the benchmarks."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from glob import glob
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Postgres:
    """`listen` are the addresses it accepts connections on; `trust` the extra client networks
    (CIDR) allowed in without a password, e.g. the test hosts' network namespaces."""

    def __init__(self, listen: tuple[str, ...] = ("127.0.0.1",), trust: tuple[str, ...] = ()) -> None:
        bins = sorted(glob("/usr/lib/postgresql/*/bin/initdb"))
        if not bins:
            raise RuntimeError("PostgreSQL is not installed: run `make system-deps`")
        self.bindir = Path(bins[-1]).parent
        self.root = Path(tempfile.mkdtemp(prefix="shipyard-pg-"))
        self.data = self.root / "data"
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # initdb refuses to run as root
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.listen = listen
        self.port = free_port()
        subprocess.run([*self.as_user, str(self.bindir / "initdb"), "-D", str(self.data), "-U", "shipyard",
                        "--auth=trust", "-E", "UTF8"], check=True, capture_output=True)
        if trust:
            with open(self.data / "pg_hba.conf", "a") as f:
                f.writelines(f"host all all {net} trust\n" for net in trust)
        self.start()

    def url(self, host: str | None = None, db: str = "postgres") -> str:
        return f"postgresql+psycopg://shipyard@{host or self.listen[0]}:{self.port}/{db}"

    def _ctl(self, *args: str, check: bool = True) -> None:
        subprocess.run([*self.as_user, str(self.bindir / "pg_ctl"), "-D", str(self.data), *args],
                       check=check, capture_output=True)

    def start(self) -> None:
        self._ctl("-l", str(self.root / "log"), "-o",
                  f"-p {self.port} -k {self.root} -c listen_addresses={','.join(self.listen)} -c fsync=off "
                  "-c max_connections=200", "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-m", mode, "-w", "stop", check=False)

    def create_db(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url().replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as c:
            c.execute(f"CREATE DATABASE {name}")
        return self.url(db=name)

    def close(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
