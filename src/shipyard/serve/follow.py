"""Following the registry: a server converges on what the registry says without being told.

One cheap indexed query per interval (`Fleet.check_marker`), and on PostgreSQL a LISTEN thread
that wakes the poller the moment a change is committed; the fleet re-resolves only when the marker
moved. Every (re)connection of the listener wakes the poller once, so a change made while it was
disconnected is not lost; polling stays as the fallback when notifications cannot arrive."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import threading

from shipyard.registry.registry import NOTIFY_CHANNEL
from shipyard.serve.fleet import Fleet

log = logging.getLogger("shipyard.serve")


def freeze_heap() -> None:
    """Move everything loaded so far (libraries, models) out of the garbage collector's sight:
    otherwise each full collection walks it all, and those pauses set the p99 (measured at
    c=64: 17.8 ms p99 without, 7.8 ms with; the bare handler's is 7.8 ms)."""
    gc.collect()
    gc.freeze()


class Follower:
    """Keeps `fleet` up to date with the registry while the server runs."""

    def __init__(self, fleet: Fleet, *, poll_s: float = 2.0, notify: bool = True) -> None:
        self.fleet = fleet
        self.poll_s = poll_s
        self.notify = notify
        self._wake: asyncio.Event | None = None  # set by the LISTEN thread when the registry changed
        self._stop = threading.Event()  # set to stop the LISTEN thread
        self._task: asyncio.Task[None] | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._wake = asyncio.Event()
        listening = self._start_listener(loop)
        if self.poll_s > 0 or listening:
            self._task = loop.create_task(self._poll())

    def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()

    def wake(self) -> None:
        """Look at the registry now (e.g. after this server wrote to it)."""
        if self._wake is not None:
            self._wake.set()

    async def _poll(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wake is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_s if self.poll_s > 0 else None)
            self._wake.clear()
            try:
                if await loop.run_in_executor(None, self.fleet.check_marker):
                    changed = await loop.run_in_executor(None, self.fleet.refresh)
                    if changed:
                        freeze_heap()
                if self.fleet.errors.pop("registry", None) is not None:
                    log.warning("reading the registry again")
            except Exception as e:  # noqa: BLE001 - the database may be away: keep serving what we have
                if "registry" not in self.fleet.errors:  # one line per outage, not one per poll
                    log.warning("cannot read the registry (still serving what is loaded): %s", e)
                self.fleet.errors["registry"] = f"cannot read the registry: {e}"
            self.fleet.reap()

    def _start_listener(self, loop: asyncio.AbstractEventLoop) -> bool:
        """On PostgreSQL, LISTEN for registry changes in a thread (psycopg is imported only there)."""
        engine = self.fleet.registry.engine
        if engine.dialect.name != "postgresql" or not self.notify:
            return False
        url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)

        def wake() -> None:
            if self._wake is not None:
                loop.call_soon_threadsafe(self._wake.set)

        def listen() -> None:
            import psycopg

            failing = False
            while not self._stop.is_set():
                try:
                    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
                        conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                        if failing:
                            log.warning("registry notifications: listening again")
                            failing = False
                        wake()
                        while not self._stop.is_set():
                            for _ in conn.notifies(timeout=1.0):
                                wake()
                except Exception as e:  # noqa: BLE001 - the database went away: retry, poll meanwhile
                    if not failing:  # one line per outage; reconnecting every second until it is back
                        log.warning("registry notifications: %s; reconnecting", e)
                        failing = True
                    self._stop.wait(1.0)  # reconnect in a second, unless told to stop meanwhile

        threading.Thread(target=listen, name="shipyard-listen", daemon=True).start()
        log.info("following the registry through PostgreSQL notifications (and every %g s)", self.poll_s)
        return True
