"""Continuous inference load from client threads, each request recorded as (start, end, status
code or error name): what the crash-recovery tests and benchmarks/recovery_bench.py watch while
they kill server processes. After an error a client pauses 10 ms, as a real client backs off."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx


class Load:
    def __init__(self, base: str, body: bytes, threads: int, model: str = "digits") -> None:
        self.url = f"{base}/v2/models/{model}/infer"
        self.body = body
        self.records: list[tuple[float, float, Any]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        with httpx.Client(timeout=30) as c:
            while not self.stop.is_set():
                t0 = time.monotonic()
                try:
                    status: Any = c.post(self.url, content=self.body).status_code
                except httpx.HTTPError as e:
                    status = type(e).__name__
                self.records.append((t0, time.monotonic(), status))
                if status != 200:
                    self.stop.wait(0.01)

    def ok_after(self, t: float) -> int:
        """Requests started after `t` that were answered 200."""
        return sum(1 for start, _, status in list(self.records) if start > t and status == 200)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)
