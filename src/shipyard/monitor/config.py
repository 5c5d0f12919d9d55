"""How the prediction log keeps inputs (`LogConfig`) and how the evaluator cuts and tests windows
(`MonitorConfig`). Plain values with their checks, apart from the code that uses them, so the
server's configuration can name them without importing metrics (prometheus-client must be first
imported after `shipyard serve` has chosen its multiprocess folder)."""

from __future__ import annotations

from dataclasses import dataclass

from shipyard.errors import UsageError


@dataclass(frozen=True)
class LogConfig:
    """What is kept. `ring` full inputs per model (the most recent), plus a `sample` share kept
    until retention removes the row; all of it within `max_bytes` (`logbudget`), which the
    feedback horizon `horizon_s` shapes: predictions the horizon still needs go last."""

    enabled: bool = True
    sample: float = 0.10
    ring: int = 50_000
    ring_rate: float = 500.0  # inputs per second per worker written to the ring, at most
    retention_days: float = 30.0
    max_rows: int = 2_000_000  # per model
    flush_s: float = 0.25
    max_pending: int = 20_000  # instances waiting for the writer; beyond, dropped …
    max_pending_bytes: int = 32 << 20  # … and their arrays' bytes (10,000 inputs of 784 floats)
    max_bytes: int = 0  # the log's size budget in the database; 0: derived from the disk at start (logbudget)
    horizon_s: float = 0.0  # the feedback horizon (labels later than this are refused); 0: not known


def parse_size(text: str) -> int:
    """Bytes from `500M`, `20G`, `1.5T` or a plain number (powers of 1024), so an operator can
    write a budget the way disks are sized. 0 means: derive it from the disk."""
    units = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper()
    t = t[:-2] if t.endswith("IB") else t[:-1] if t.endswith("B") else t  # 2GiB, 64MB, 100B
    unit = t[-1:] if t[-1:].isalpha() and t[-1:] in units else ""
    try:
        value = float(t[:len(t) - len(unit)])
    except ValueError:
        raise UsageError(f"{text!r} is not a size (write e.g. 500M, 20G or a number of bytes)") from None
    if not value >= 0 or value == float("inf"):
        raise UsageError(f"a size must be ≥ 0, got {text!r}")
    return int(value * units[unit])


@dataclass(frozen=True)
class MonitorConfig:
    """How windows are cut and tested. Defaults suit the canonical model (see drift_bench)."""

    window: int = 250  # predictions per window
    max_age_s: float = 300.0  # a window older than this is evaluated with what it has …
    min_window: int = 50  # … if it has at least this many
    alpha: float = 0.002  # share of no-shift windows allowed to alarm (all three tests together)
    draws: int = 2000  # calibration windows per window size
    accuracy_last: int = 500  # realised accuracy over the newest N labelled predictions
    accuracy_every_s: float = 5.0
    tick_s: float = 1.0
    max_windows_per_tick: int = 4  # beyond this many full windows per tick, the oldest rows are skipped
    alerts_every_s: float = 5.0  # alert rules are checked this often, and after every window
    lease_ttl_s: float = 10.0
    retention_days: float = 30.0  # evaluated windows kept this long
    dedupe_ids: int = 20_000  # request ids remembered per model to count a balancer's retry once
    gap_s: float = 30.0  # how long the cursor waits at a hole in the log's ids (a commit still on its way)

    def check(self) -> None:
        problems = []
        if self.window < 10:
            problems.append(f"window must be at least 10 predictions, got {self.window}")
        if not 2 <= self.min_window <= self.window:
            problems.append(f"min_window must be in 2..window ({self.window}), got {self.min_window}")
        if not 0 < self.alpha < 0.5:
            problems.append(f"alpha must be in (0, 0.5), got {self.alpha}")
        if self.draws < 100:
            problems.append(f"draws must be at least 100, got {self.draws}")
        if self.tick_s <= 0 or self.lease_ttl_s <= 2 * self.tick_s:
            problems.append(f"lease_ttl_s ({self.lease_ttl_s}) must exceed twice tick_s ({self.tick_s})")
        if problems:
            raise UsageError("; ".join(problems))
