"""Where a `shipyard serve` worker's CPU goes, per request, by stage.

    python benchmarks/serve_profile.py [--seconds 10] [--concurrency 64] [--rate 200] [--route v2-json]
                                       [-- EXTRA `shipyard serve` OPTIONS]

Sets up the same canonical bundle as serve_bench.py (benchmarks/_setup.py: MLP trained 1 epoch,
optimized `--variants fp32` with its reference profile, registered as digits@production), starts
`shipyard serve digits` with one worker (plus any options after `--`), finds the granian worker
process (the busiest one under a warm-up load), then drives it with wrk (one thread, c=64 by
default, the ~7 KB V2 JSON body unless `--route` says otherwise) for `--seconds` while py-spy
samples the worker (`py-spy record --format raw --nonblocking`: the server is not paused; idle
threads are left out). py-spy is installed into the running venv if missing.

Each sampled stack is given to ONE stage, by the innermost frame that belongs to a stage:
  model              onnxruntime, shipyard/serve/runtime.py
  prediction log     shipyard/monitor/predlog.py, logstate.py
  metrics            shipyard/monitor/metrics.py, prometheus_client
  drift evaluator    shipyard/monitor/evaluator.py, drift.py, stats.py
  reference projection  shipyard/bundle/reference.py (projecting inputs onto the reference profile)
  queue/batching     shipyard/serve/batching.py
  encode             shipyard/serve/codec*.py, jsonrule.py, functions named encode*/dumps
  parse/decode       shipyard/serve/codec*.py, jsonrule.py, the rest
  guard              shipyard/serve/guard.py
  data plane         shipyard/serve/dataplane.py, fleet.py
  HTTP transport     shipyard/serve/http.py, wire.py (their own code and what it calls outside these stages)
  event loop/granian/other   stacks with none of these (asyncio, granian's Python side, …)
C code called from a frame (orjson, numpy, sqlite3) counts for that frame's stage.

Shares are of the sampled (Python) stacks. They become µs per request with the worker's CPU
time over the run (utime + stime from /proc/PID/stat, all its threads) and the requests wrk
completed: the sampled stacks account for (samples / rate) CPU seconds, and the CPU the samples
do not see (granian's Rust threads doing the HTTP I/O, the kernel's socket work) is the
"not in Python stacks" line. py-spy's own sampling competes for the CPUs: req/s here is a little
lower than serve_bench's.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _setup import (
    BIN,
    HERE,
    SHIPYARD,
    Bodies,
    bench_env,
    canonical_bundle,
    cmdline,
    cpu_s,
    family,
    free_port,
    stop,
    wait_ready,
    wrk,
)

STAGES: list[tuple[str, re.Pattern[str]]] = [
    ("model", re.compile(r"onnxruntime/|shipyard/serve/runtime\.py")),
    ("prediction log", re.compile(r"shipyard/monitor/(predlog|logstate)\.py")),
    ("metrics", re.compile(r"shipyard/monitor/metrics\.py|prometheus_client/")),
    ("drift evaluator", re.compile(r"shipyard/monitor/(evaluator|drift|stats)\.py")),
    ("reference projection", re.compile(r"shipyard/bundle/reference\.py")),
    ("queue/batching", re.compile(r"shipyard/serve/batching\.py")),
    ("encode", re.compile(r"^(encode\w*|_?dumps) \(.*shipyard/serve/(codec\w*|jsonrule)\.py")),
    ("parse/decode", re.compile(r"shipyard/serve/(codec\w*|jsonrule)\.py")),
    ("guard", re.compile(r"shipyard/serve/guard\.py")),
    ("data plane", re.compile(r"shipyard/serve/(dataplane|fleet)\.py")),
    ("HTTP transport", re.compile(r"shipyard/serve/(http|wire)\.py")),
]
OTHER = "event loop/granian/other"
FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(:\d+)?\)$")


def stage_of(stack: list[str]) -> str:
    """The stage of a root-first list of frames: the innermost frame that matches one."""
    for frame in reversed(stack):
        for name, pattern in STAGES:
            if pattern.search(frame):
                return name
    return OTHER


def ensure_py_spy() -> str:
    exe = shutil.which("py-spy", path=str(BIN)) or shutil.which("py-spy")
    if exe:
        return exe
    print("installing py-spy into the venv…", file=sys.stderr)
    subprocess.run([str(BIN / "pip"), "install", "-q", "py-spy"], check=True)
    return str(BIN / "py-spy")


def worker_pid(root: int, load) -> int:  # type: ignore[no-untyped-def]
    """The descendant of `root` that burns the most CPU while `load()` runs: the granian worker."""
    procs = family(root)
    before = {p: cpu_s(p) for p in procs}
    load()
    used = {p: cpu_s(p) - before[p] for p in procs}
    return max(used, key=used.__getitem__)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=10, help="sampled seconds under load")
    ap.add_argument("--concurrency", type=int, default=64, help="wrk connections")
    ap.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    ap.add_argument("--route", choices=["v2-json", "v2-binary", "v1"], default="v2-json")
    ap.add_argument("--top", type=int, default=8, help="also list the N hottest innermost frames (0: none)")
    ap.add_argument("serve_args", nargs=argparse.REMAINDER, help="after --: more `shipyard serve` options")
    args = ap.parse_args()
    extra = [a for a in args.serve_args if a != "--"]
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: apt-get install wrk")
    py_spy = ensure_py_spy()
    tmp = Path(tempfile.mkdtemp(prefix="serve-profile-"))
    env = bench_env(tmp)
    bodies = Bodies()
    path, body, headers = {
        "v2-json": ("/v2/models/digits/infer", bodies.v2_json, bodies.json_headers),
        "v2-binary": ("/v2/models/digits/infer", bodies.v2_binary, bodies.binary_headers),
        "v1": ("/v1/models/digits:predict", bodies.v1, bodies.json_headers),
    }[args.route]
    print("training, optimizing and registering the canonical model…", file=sys.stderr)
    canonical_bundle(tmp, env)
    port = free_port()
    url = f"http://127.0.0.1:{port}{path}"
    log = (tmp / "serve.log").open("w")
    proc = subprocess.Popen([SHIPYARD, "serve", "digits", "--port", str(port), *extra], env=env, cwd=HERE,
                            stdout=log, stderr=log)
    try:
        wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", proc)
        pid = worker_pid(proc.pid, lambda: wrk(url, body, headers, args.concurrency, 2, tmp, warmup=0))
        raw = tmp / "stacks.txt"
        spy = subprocess.Popen([py_spy, "record", "--pid", str(pid), "--duration", str(args.seconds), "--rate",
                                str(args.rate), "--format", "raw", "--full-filenames", "--nolineno",
                                "--nonblocking", "--output", str(raw)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(0.3)  # py-spy attaches
        cpu0 = cpu_s(pid)
        r = wrk(url, body, headers, args.concurrency, args.seconds, tmp, warmup=0)
        cpu = cpu_s(pid) - cpu0
        spy_out, _ = spy.communicate(timeout=args.seconds + 30)
        if spy.returncode != 0 or not raw.exists():
            raise SystemExit(f"py-spy failed ({spy.returncode}):\n{spy_out}")
        worker = cmdline(pid)
    finally:
        stop(proc)
        log.close()

    stages: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = [f for f in stack.split(";") if f]
        stages[stage_of(frames)] += int(n)
        leaves[_short(frames[-1])] += int(n)
    samples = sum(stages.values())
    shutil.rmtree(tmp, ignore_errors=True)
    if not samples:
        raise SystemExit(f"py-spy collected no stacks:\n{spy_out}")

    requests = r["requests"]
    cpu_us = cpu / max(requests, 1) * 1e6
    sampled_s = samples / args.rate
    seen = min(sampled_s, cpu)  # CPU seconds the Python stacks account for
    print(f"\nserve_profile: `{' '.join(['shipyard serve digits', *extra])}`, route {args.route}, wrk -t1 "
          f"-c{args.concurrency}, {args.seconds} s, py-spy at {args.rate} Hz (non-blocking, idle threads left out)")
    print(f"worker pid {pid} ({worker[:80]}): {r['rps']:,.0f} req/s, p50 {r['p50_ms']:.2f} ms, p99 "
          f"{r['p99_ms']:.2f} ms, errors {r['errors']}; CPU {cpu:.2f} s over {requests:,} requests = "
          f"{cpu_us:.1f} µs per request ({cpu / args.seconds * 100:.0f}% of a core)")
    print(f"{samples:,} sampled stacks = {sampled_s:.2f} CPU s at {args.rate} Hz"
          + (" (more than the worker's CPU time: threads waiting for the GIL or in a syscall are sampled as busy; "
             "the shares are scaled to the CPU time)" if sampled_s > cpu else "") + "\n")
    print(f"{'stage':<28}{'share':>8}{'µs/request':>12}")
    for name in [*(s for s, _ in STAGES), OTHER]:
        share = stages[name] / samples
        print(f"{name:<28}{share * 100:>7.1f}%{share * seen / max(requests, 1) * 1e6:>12.1f}")
    print(f"{'not in Python stacks':<28}{'':>8}{(cpu - seen) / max(requests, 1) * 1e6:>12.1f}"
          "   (granian's Rust threads, kernel, native threads)")
    print(f"{'total (worker CPU)':<28}{'':>8}{cpu_us:>12.1f}")
    if args.top:
        print("\nhottest innermost frames (share of sampled stacks):")
        for leaf, count in leaves.most_common(args.top):
            print(f"  {count / samples * 100:5.1f}%  {leaf}")


def _short(frame: str) -> str:
    """`func (path)` with the path cut after site-packages/ or src/."""
    m = FRAME.match(frame)
    if not m:
        return frame
    file = re.sub(r"^.*/(site-packages|src|lib/python3\.\d+)/", "", m["file"])
    return f"{m['func']} ({file})"


if __name__ == "__main__":
    main()
