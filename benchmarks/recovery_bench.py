"""How fast `shipyard serve` recovers from a crash under load, and what it costs in failed requests.

    python benchmarks/recovery_bench.py [--repeat 3] [--threads 4]

A tiny real bundle (harness/bundles.py) served on loopback; client threads send single-instance
V2 requests back to back (after an error a client waits 10 ms, as a real one backs off). Then
one process gets SIGKILL: a worker (granian with 1 and 2 workers, uvicorn with 2), or the HTTP
server process itself (granian's main process, which the supervisor restarts). Measured from the
kill: seconds until the server answers again (the end of the first successful request sent
after the kill), seconds until full capacity (readiness reports every worker ready again, the
killed one replaced, and each worker of the new set has answered a probe itself), the longest
stretch without any successful answer, and the failed requests. Medians over the repeats;
nothing is asserted (tests/integration/test_serve_recovery.py checks the behaviour).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))  # the repository root: the shared harness/ (bundles, load)

from harness.load import Load  # noqa: E402 - after the path is set

BODY = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 784],
                               "data": [0.25] * 784}]}).encode()
SCENARIOS = [("granian", 1, "worker"), ("granian", 2, "worker"), ("granian", 2, "server"),
             ("uvicorn", 2, "worker")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def children(pid: int) -> list[int]:
    """Live child processes of `pid`, multiprocessing's resource tracker left out."""
    out = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                for c in (task / "children").read_text().split():
                    with contextlib.suppress(OSError):
                        state = Path(f"/proc/{c}/stat").read_text().rsplit(")", 1)[1].split()[0]
                        if state not in "ZX" and b"resource_tracker" not in Path(f"/proc/{c}/cmdline").read_bytes():
                            out.append(int(c))
    return out


def full(base: str, n: int, seen: set[int] | None = None) -> bool:
    """Readiness reports all `n` workers ready; the pid that answered is added to `seen`."""
    try:
        r = httpx.get(f"{base}/v2/health/ready", timeout=2)
    except httpx.HTTPError:
        return False
    doc = r.json()
    if seen is not None and r.status_code == 200 and "pid" in doc:
        seen.add(int(doc["pid"]))
    return r.status_code == 200 and doc.get("workers") == {"alive": n, "expected": n}


def until(predicate: Any, what: str, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.01)
    return value


def one(home: Path, http: str, workers: int, target: str, threads: int) -> dict[str, float]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")} | {"SHIPYARD_HOME": str(home)}
    log = (home.parent / f"server-{port}.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "shipyard", "serve", "--http", http, "--workers", str(workers),
                             "--port", str(port)], env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        until(lambda: proc.poll() is None and full(base, workers), "the server ready")
        server = until(lambda: children(proc.pid), "the server process")[0]
        victim = server if target == "server" or (http == "uvicorn" and workers == 1) else children(server)[0]
        with Load(base, BODY, threads) as load:
            until(lambda: sum(1 for r in list(load.records) if r[2] == 200) >= 50, "requests served")
            killed = time.monotonic()
            os.kill(victim, signal.SIGKILL)

            seen: set[int] = set()

            def restored() -> bool:
                """Readiness says every worker is ready, and each worker of the new set has
                answered a readiness probe itself (new connections spread over the workers)."""
                now = children(proc.pid)
                if len(now) != 1 or (target == "server" and now[0] == victim):
                    return False
                kids = now if http == "uvicorn" and workers == 1 else children(now[0])
                return (full(base, workers, seen) and victim not in kids and len(kids) == workers
                        and set(kids) <= seen)

            until(restored, "full capacity again")
            full_s = time.monotonic() - killed
            until(lambda: any(r[0] > killed + full_s and r[2] == 200 for r in list(load.records)), "answers after it")
        recs = [r for r in load.records if r[1] >= killed]
        answering = min(end for start, end, ok in recs if ok and start >= killed) - killed
        ends = sorted([killed] + [end for _, end, status in recs if status == 200])
        gap = max(b - a for a, b in zip(ends, ends[1:], strict=False))
        return {"answer_s": answering, "full_s": full_s, "gap_s": gap,
                "failed": sum(1 for r in recs if r[2] != 200), "requests": len(recs)}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=4)
    args = ap.parse_args()
    from harness.bundles import make_bundle
    from shipyard.registry import Registry
    from shipyard.settings import Settings

    with tempfile.TemporaryDirectory(prefix="recovery-bench-") as tmp:
        home = Path(tmp) / "home"
        Registry(settings=Settings(home=home)).register(make_bundle(Path(tmp) / "a"), "digits", alias="production")
        print(f"{'server':8} {'workers':>7} {'killed':>7} {'answering s':>12} {'full s':>7} {'max gap s':>10} "
              f"{'failed':>7} {'of':>6}")
        for http, workers, target in SCENARIOS:
            runs = [one(home, http, workers, target, args.threads) for _ in range(args.repeat)]

            def med(key: str, runs: list[dict[str, float]] = runs) -> float:
                return statistics.median(r[key] for r in runs)

            print(f"{http:8} {workers:>7} {target:>7} {med('answer_s'):>12.2f} {med('full_s'):>7.2f} "
                  f"{med('gap_s'):>10.2f} {med('failed'):>7.0f} {med('requests'):>6.0f}", flush=True)


if __name__ == "__main__":
    main()
