"""Whether the prediction log can write, and what it lost: the state readiness shows, the one
log line per change of state (an outage that lasts an hour is two lines, not 14,400), the
Prometheus gauge and the dropped rows counted by reason. Kept apart from the writer (`predlog`),
which only reports what each attempt found."""

from __future__ import annotations

import logging
import time
from typing import Any

from shipyard.monitor import metrics

log = logging.getLogger("shipyard.monitor")


class LogState:
    """`state` is "ok", or why rows cannot be written: `deleted`, `replaced`, `unwritable` (the
    SQLite file; `store.engine.FileProblem`) or `write_error` (the database refused or is away)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity  # rows that may wait in memory (said in the log line)
        self.state: str = "ok"
        self.error: str | None = None
        self.since = time.time()
        self.lost: dict[str, int] = {}  # rows not written, by reason
        self._lost_before = 0  # rows lost when the state last left "ok"
        metrics.LOG_OK.set(1)

    @property
    def ok(self) -> bool:
        return self.state == "ok"

    def set(self, state: str, error: str | None = None) -> None:
        """What the last attempt found; logged only when the state changes."""
        if state == self.state:
            self.error = error
            return
        lasted = time.time() - self.since
        self.state, self.error, self.since = state, error, time.time()
        metrics.LOG_OK.set(1 if state == "ok" else 0)
        lost = sum(self.lost.values())
        if state == "ok":
            log.warning("prediction log: writing again after %.0f s; %d row(s) dropped meanwhile", lasted,
                        lost - self._lost_before)
            return
        self._lost_before = lost
        log.error("prediction log: cannot write (%s): %s. Predictions are still answered; up to %d rows wait in "
                  "memory, more are dropped and counted (shipyard_prediction_log_dropped_total)", state, error,
                  self.capacity)

    def dropped(self, n: int) -> None:
        """`n` rows will never be written: counted under the current reason (`backlog` while the
        database is fine and the writer just fell behind)."""
        reason = "backlog" if self.ok else self.state
        self.lost[reason] = self.lost.get(reason, 0) + n
        metrics.LOG_LOST.labels(reason).inc(n)

    def health(self, pending: int) -> dict[str, Any]:
        """For readiness: whether rows are written, since when, why not, what waits, what was lost."""
        return {"ok": self.ok, "state": self.state, "since": round(self.since, 3), "error": self.error,
                "pending": pending, "dropped": dict(self.lost)}


def why(e: BaseException) -> str:
    """An error's first line, without SQLAlchemy's background link."""
    text = str(getattr(e, "orig", None) or e) or type(e).__name__
    return text.splitlines()[0][:500]
