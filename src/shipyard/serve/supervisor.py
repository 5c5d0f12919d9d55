"""The `shipyard serve` parent process: runs the HTTP server (granian or uvicorn) as a child,
turns SIGTERM into a drain that drops no request, restarts the server when it dies, and takes it
down with it when it is killed itself.

HTTP servers stop listening the moment they get SIGTERM, so a load balancer still sending there
sees refused connections. Here SIGTERM first creates the drain file, which every worker's
readiness route checks, so readiness answers 503 at once while requests are still served; after
`grace_s` (time for balancers to notice) the child gets SIGTERM, stops listening, lets in-flight
and queued requests finish (the app's lifespan shutdown waits for them, up to the drain
timeout) and exits; then this process exits 0. Ctrl-C (SIGINT) skips the grace: a person at a
terminal wants it to stop.

Crashes: a dead worker is replaced by the HTTP server itself (granian `--respawn-failed-workers`,
uvicorn's multi-process supervisor); the server process itself (or granian giving up on a worker
that crash-loops) is restarted here, with a backoff doubling from 0.25 s up to 10 s (reset once a
run has lasted a minute). A server that never came up (start-up failed: bad model, port taken)
is not restarted: its exit code is ours. Workers alive and started (each marks itself ready after
its lifespan start-up, `worker_up`) against the configured count are written next to the drain
file, and readiness reports them (`capacity`).

Parent death: the server is started with `PR_SET_PDEATHSIG` = SIGTERM (through a tiny exec
wrapper, so nothing runs between fork and exec), and each worker sets the same towards the
server process (`die_with_parent`, from the app factory), so a `kill -9` of this process takes
the server and its workers with it."""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("shipyard.serve")

PR_SET_PDEATHSIG = 1
BACKOFF_START_S, BACKOFF_MAX_S, STABLE_S = 0.25, 10.0, 60.0

# sets the parent-death signal, checks the parent did not die before that, and becomes the server
_EXEC = ("import ctypes, os, signal, sys\n"
         "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)\n"
         "os.getppid() == int(sys.argv[1]) or sys.exit(1)\n"
         "os.execv(sys.argv[2], sys.argv[2:])\n")


def die_with_parent(sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send `sig` to this process when its parent dies (Linux; elsewhere
    nothing happens). Returns whether it was set; exits at once if the parent is already gone."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        ok = ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False
    if ok and os.getppid() == 1:  # orphaned before the call: the signal will never come
        os.kill(os.getpid(), sig)
    return ok


def supervise(cmd: list[str], env: dict[str, str], drain_file: Path, *, grace_s: float,
              drain_timeout_s: float, workers: int = 1) -> int:
    """Run `cmd` (a server of `workers` workers) until a signal asks us to stop, restarting it
    when it dies after it was up (a worker marked itself ready); returns the exit code to use."""
    drain_file.parent.mkdir(parents=True, exist_ok=True)
    drain_file.unlink(missing_ok=True)
    shutil.rmtree(ready_dir(drain_file), ignore_errors=True)
    status_file = capacity_file(drain_file)
    got: list[int] = []
    wake = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        got.append(signum)
        wake.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    wrapped = [sys.executable, "-c", _EXEC, str(os.getpid()), *cmd] if sys.platform.startswith("linux") else cmd
    proc = subprocess.Popen(wrapped, env=env)
    started, up, backoff, alive_seen = time.monotonic(), False, BACKOFF_START_S, -1
    next_probe, short = 0.0, False
    try:
        while True:
            if wake.wait(0.1):
                break
            if proc.poll() is not None:  # the server stopped by itself: start-up failed, or it crashed
                code = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
                if not (up or any(_markers(ready_dir(drain_file)))):
                    return code  # it never came up: start-up failed, and would again
                backoff = BACKOFF_START_S if time.monotonic() - started >= STABLE_S else backoff
                log.error("the HTTP server exited (%s); restarting it in %.2f s", _how(proc.returncode), backoff)
                _write_capacity(status_file, 0, workers)
                alive_seen, short = 0, True
                if wake.wait(backoff):
                    return 0
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                proc = subprocess.Popen(wrapped, env=env)
                started = time.monotonic()
                continue
            now = time.monotonic()
            if now >= next_probe:
                next_probe = now + 0.2
                alive = _ready_workers(proc.pid, ready_dir(drain_file))
                up = up or alive > 0
                if alive != alive_seen:
                    if up and alive < min(alive_seen, workers):
                        log.warning("%d of %d HTTP worker(s) ready", alive, workers)
                        short = True
                    elif short and alive >= workers:
                        log.warning("all %d HTTP worker(s) ready again", workers)
                        short = False
                    alive_seen = alive
                    _write_capacity(status_file, alive, workers)
        drain_file.touch()
        if got[0] == signal.SIGTERM and grace_s > 0:
            log.warning("SIGTERM: draining; readiness is 503, still serving for %.1f s", grace_s)
            wake.clear()
            wake.wait(grace_s)  # a second signal cuts the grace short
        if proc.poll() is not None:
            return 0
        proc.send_signal(signal.SIGTERM if got[0] == signal.SIGTERM else signal.SIGINT)
        rc = _stopped(proc, drain_timeout_s + 10)
        if rc is None:
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
        for f in (drain_file, status_file):
            with contextlib.suppress(OSError):
                f.unlink()
        shutil.rmtree(ready_dir(drain_file), ignore_errors=True)


def _stopped(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    """Wait for the server to exit after it was asked to stop; its exit code, or None after
    `timeout`. Each second its workers get SIGTERM again: a worker that was starting when the
    server passed the signal on (granian forks it with the server's own handler, which swallows
    it until the worker installs its own) would otherwise hold the shutdown up until granian's
    kill timeout. A worker already draining takes a second SIGTERM as the first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return proc.wait(min(1.0, max(deadline - time.monotonic(), 0.01)))
        except subprocess.TimeoutExpired:
            if time.monotonic() >= deadline:
                return None
            for child in _children(proc.pid):
                with contextlib.suppress(OSError):
                    os.kill(child, signal.SIGTERM)


def _how(returncode: int) -> str:
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-returncode).name}"
    return f"exit code {returncode}"


def _ready_workers(pid: int, ready: Path) -> int:
    """Processes of the server (`pid` or its children: granian's workers, uvicorn's) alive and
    marked ready by their lifespan start-up (`worker_up`); markers of dead ones are removed."""
    live = {pid, *_children(pid)}
    n = 0
    for marker in _markers(ready):
        if marker.name.isdigit() and int(marker.name) in live:
            n += 1
        else:
            with contextlib.suppress(OSError):
                marker.unlink()
    return n


def _markers(ready: Path) -> list[Path]:
    try:
        return list(ready.iterdir())
    except OSError:
        return []


def _children(pid: int) -> list[int]:
    """Child processes of `pid` that are alive (not zombies)."""
    out = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                for child in (task / "children").read_text().split():
                    with contextlib.suppress(OSError):
                        if Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX":
                            out.append(int(child))
    return out


def ready_dir(drain_file: Path | str) -> Path:
    p = Path(drain_file)
    return p.with_name(p.stem + ".ready")


def worker_up(drain_file: str | None) -> None:
    """Called by a worker once its lifespan start-up is complete: it counts as capacity."""
    if drain_file is None:
        return
    with contextlib.suppress(OSError):
        d = ready_dir(drain_file)
        d.mkdir(exist_ok=True)
        (d / str(os.getpid())).touch()


def _write_capacity(path: Path, alive: int, workers: int) -> None:
    with contextlib.suppress(OSError):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"alive": alive, "expected": workers}))
        os.replace(tmp, path)


def capacity_file(drain_file: Path | str) -> Path:
    p = Path(drain_file)
    return p.with_name(p.stem + ".workers")


def capacity(drain_file: str | None) -> dict[str, Any] | None:
    """What the supervisor last saw of the workers (`alive`, `expected`), or None (not under a
    supervisor, or not known yet)."""
    if drain_file is None:
        return None
    try:
        doc = json.loads(capacity_file(drain_file).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def drain_file_for(home: Path, pid: int) -> Path:
    return home / "run" / f"serve-{pid}-{int(time.time())}.draining"
