"""Running a real `shipyard serve` process for tests: a free loopback port, wait for readiness,
stop it afterwards (and show its log when something fails)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from .conftest import SHIPYARD, _free_port


@dataclass
class Server:
    base: str
    proc: subprocess.Popen[bytes]
    log: Path

    def health(self) -> dict:  # type: ignore[type-arg]
        return httpx.get(f"{self.base}/v2/health/ready", timeout=5).json()  # type: ignore[no-any-return]


def server_env(home: Path, **extra: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")} | {"SHIPYARD_HOME": str(home),
                                                                                  **extra}


@contextmanager
def serve(home: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 90) -> Iterator[Server]:
    """`shipyard serve ARGS…` against `home` until it reports ready; stopped on exit."""
    port = _free_port()
    log_path = home.parent / f"server-{port}.log"
    with log_path.open("w") as log:
        # its own process group: whatever happens, the server and its HTTP workers go with it
        proc = subprocess.Popen([*SHIPYARD, "serve", *args, "--port", str(port)], env=env or server_env(home),
                                stdout=log, stderr=log, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while True:
                assert proc.poll() is None, log_path.read_text()
                try:
                    if httpx.get(f"{base}/v2/health/ready", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "server did not become ready:\n" + log_path.read_text()
                time.sleep(0.1)
            yield Server(base, proc, log_path)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)  # SIGTERM would wait out the drain grace
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            with contextlib.suppress(ProcessLookupError):  # nothing of it outlives the test
                os.killpg(proc.pid, signal.SIGKILL)
