"""S3 for tests: moto's standalone S3 server as a real process, and a TCP proxy in front of it that
can cut a download half-way or stand for an unreachable endpoint."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

import httpx

from .conftest import _free_port

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}


@contextmanager
def moto_server(host: str = "127.0.0.1") -> Iterator[str]:
    """moto's S3-compatible server on a free port; yields its endpoint URL."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", host, "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://{host}:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "moto exited"
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "moto_server did not start"
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()


@dataclass
class CutProxy:
    """Forwards TCP to `upstream`. While `cut_after` is set, a GET whose response passes that
    many bytes is cut there (the connection is closed mid-body); `cuts` limits how many times."""

    upstream: tuple[str, int]
    cut_after: int | None = None
    cuts: int = 1 << 30
    cut_count: int = 0
    gets: int = 0
    port: int = field(default_factory=_free_port)
    _sock: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> CutProxy:
        self._sock = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()

    def _accept(self) -> None:
        assert self._sock is not None
        while True:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            up = socket.create_connection(self.upstream)
            state = {"get": False, "sent": 0}
            threading.Thread(target=self._pump, args=(client, up, state, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(up, client, state, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, state: dict, request: bool) -> None:  # type: ignore[type-arg]
        try:
            while data := src.recv(65536):
                if request:
                    if data[:4] == b"GET ":
                        state["get"], state["sent"] = True, 0
                        self.gets += 1
                    elif data[:4].isupper() and data[:4].isalpha():
                        state["get"] = False
                elif state["get"] and self.cut_after is not None and self.cut_count < self.cuts \
                        and state["sent"] + len(data) > self.cut_after:
                    dst.sendall(data[: max(0, self.cut_after - state["sent"])])
                    self.cut_count += 1
                    raise ConnectionError("cut")
                else:
                    state["sent"] += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
