"""Waiting in tests: for a condition, never for a guessed number of seconds. The timeout is a
bound on a hang, not a speed requirement; when it passes, the message says what did not happen."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], what: str, timeout: float = 60, interval: float = 0.05) -> T:
    """Poll `predicate` until it returns something truthy, and return that. AssertionError
    naming `what` (and the last value seen) if it has not within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {value!r})")
        time.sleep(interval)


def clock_moves_on() -> None:
    """Return once `time.time()` has passed the moment of the call: what is stamped next gets a
    later time than what was stamped before (e.g. distinct prediction-log chunks)."""
    then = time.time()
    wait_for(lambda: time.time() > then, "the clock to move on", timeout=5, interval=0.001)
