"""The `shipyard serve` parent process: runs the HTTP server (granian or uvicorn) as a child and
turns SIGTERM into a drain that drops no request.

HTTP servers stop listening the moment they get SIGTERM, so a load balancer still sending there
sees refused connections. Here SIGTERM first creates the drain file, which every worker's
readiness route checks, so readiness answers 503 at once while requests are still served; after
`grace_s` (time for balancers to notice) the child gets SIGTERM, stops listening, lets in-flight
and queued requests finish (the app's lifespan shutdown waits for them, up to the drain
timeout) and exits; then this process exits 0. Ctrl-C (SIGINT) skips the grace: a person at a
terminal wants it to stop."""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import threading
import time
from pathlib import Path

log = logging.getLogger("shipyard.serve")


def supervise(cmd: list[str], env: dict[str, str], drain_file: Path, *, grace_s: float,
              drain_timeout_s: float) -> int:
    """Run `cmd` until it exits or a signal asks us to stop; returns the exit code to use."""
    drain_file.parent.mkdir(parents=True, exist_ok=True)
    drain_file.unlink(missing_ok=True)
    got: list[int] = []
    wake = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        got.append(signum)
        wake.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    proc = subprocess.Popen(cmd, env=env)
    try:
        while proc.poll() is None and not wake.wait(0.2):
            pass
        if proc.poll() is not None:  # the server stopped by itself: start-up failed, or it crashed
            return proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
        drain_file.touch()
        if got[0] == signal.SIGTERM and grace_s > 0:
            log.warning("SIGTERM: draining; readiness is 503, still serving for %.1f s", grace_s)
            wake.clear()
            wake.wait(grace_s)  # a second signal cuts the grace short
        proc.send_signal(signal.SIGTERM if got[0] == signal.SIGTERM else signal.SIGINT)
        try:
            rc = proc.wait(drain_timeout_s + 10)
        except subprocess.TimeoutExpired:
            log.error("the server did not finish draining in %.0f s; killing it", drain_timeout_s + 10)
            proc.kill()
            proc.wait()
            return 1
        return 0 if rc in (0, -signal.SIGTERM, -signal.SIGINT) else rc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for s, h in previous.items():
            signal.signal(s, h)
        with contextlib.suppress(OSError):
            drain_file.unlink()


def drain_file_for(home: Path, pid: int) -> Path:
    return home / "run" / f"serve-{pid}-{int(time.time())}.draining"
