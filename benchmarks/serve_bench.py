"""`shipyard serve` against the bare HTTP limit and MLServer, measured the way users run servers.

    python benchmarks/serve_bench.py [--seconds 10] [--concurrency 1,16,64] [--pin]
                                     [--no-mlserver] [--uvicorn] [--json]

Load: wrk with one thread (`-t1`) on the same machine, over loopback, POSTing the same single
instance (784 floats, the ~7 KB V2 JSON body; the binary and v1 rows carry the same numbers in
their own form), `--seconds` per cell after a `--warmup` of the same load. Unpinned by default:
server and wrk share the cores as the OS schedules them, as on a user's machine; `--pin` puts the
server on CPU 0 and wrk on CPU 1 (steadier numbers on a 2-core machine; the 2-worker server is
never pinned). The header says which. One server worker unless the row says otherwise; ONNX
Runtime at 1 thread; the canonical MNIST MLP (trained 1 epoch on the bundled sample: the speed
does not depend on the weights), optimized with `--variants fp32` and registered; the bundle has
its reference profile (`reference.npz`), so drift evaluation is really on in (b).

Rows (servers, in the order of round 1):
  (a) bare granian RSGI + orjson: parses the body fully, answers a constant. THE LIMIT: the goals
      are ratios to it;
  bare granian RSGI + orjson + ONNX Runtime: (a) that also runs the model, inline, one request per
      call, and answers its probabilities: the floor of a server that runs this model per request
      on this stack (no validation, batching, log or metrics), for reference beside the goals;
  bare granian ASGI + orjson: the same on ASGI (the interface of `shipyard serve --http uvicorn`
      and of embedding; `shipyard serve` runs granian's RSGI);
  bare uvicorn + orjson: only with `--uvicorn` (the slower Starlette and simdjson handlers of
      earlier versions are dropped, to keep the run short);
  MLServer 1.7 serving the same model.onnx through benchmarks/_mlserver_onnx.py (a minimal
      ONNX Runtime runtime, inline in `predict` as MLServer's own runtimes do), no adaptive
      batching, `parallel_workers: 0` (inference in the one server process: its fastest
      single-process set-up) and `debug: false` (no access log); installed on first use into
      its own virtual environment, benchmarks/.mlserver-venv, never into the package's.
      `--no-mlserver` skips it;
  (b) `shipyard serve digits` with the defaults a user gets, V2 JSON: batching on, metrics,
      prediction log and the drift evaluator on;
  (c) the same server, V2 binary tensor extension;
  (d) the same server, v1 `:predict`;
  (e) V2 JSON with batching off (`--max-batch-size 1`);
  (f) V2 JSON with `--workers 2`, at the highest concurrency only;
  (g) V2 JSON with monitoring off (`--no-log --no-metrics`), at the highest concurrency only:
      the cost of monitoring.

Every cell runs twice: round 1 starts each server in the order above, measures its cells and
stops it; round 2 does the same in reverse server order. The table shows both runs side by side
(`round 1 / round 2`) for req/s, p50, p99 and errors. Then, against (a) in the same run (ratios
of the two runs' means, with the worse of the per-round ratios beside them), the issue's goals
with PASS/FAIL: at the highest concurrency (b) req/s ≥ 0.5× (a) and (b) p99 ≤ 2× (a); at the
lowest, (b) p50 ≤ 1.3× (a) and (b) req/s > MLServer's; (f) ≥ 1.3× (b) at the highest; (c) and
(d) req/s ≥ 0.9× (b) at every concurrency. Also: the in-process ONNX Runtime throughput at batch
1 and 64 (the compute limit), each server's ready time and RSS, batching on/off, monitoring
on/off. `--json` writes all results as one JSON object to stdout (the tables go to stderr).

Needs `wrk` (Debian package). A full default run is about 10 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from _setup import (
    BIN,
    HERE,
    SHIPYARD,
    Bodies,
    bench_env,
    canonical_bundle,
    extract_onnx,
    family,
    free_port,
    pinned,
    rss_mb,
    stop,
    wait_ready,
    wrk,
)

MLSERVER_VENV = HERE / ".mlserver-venv"
MLSERVER_SPEC = "mlserver==1.7.*"
LIMIT = "(a) bare granian RSGI+orjson"
B, C, D, E, F, G = ("(b) V2 JSON", "(c) V2 binary", "(d) v1", "(e) V2 JSON, batching off",
                    "(f) V2 JSON, 2 workers", "(g) V2 JSON, monitoring off")
MLSERVER = "MLServer 1.7 (ONNX)"
BARE_MODEL = "bare RSGI+orjson+ORT"


@dataclass
class Server:
    label: str
    kind: str  # granian | uvicorn | shipyard | mlserver
    cmd: list[str]
    routes: list[tuple[str, str, bytes, dict[str, str]]]  # row, path, body, headers
    concs: list[int]
    pin: bool = True  # whether --pin applies (the 2-worker server gets both cores)
    starts: list[dict[str, Any]] = field(default_factory=list)  # per round: ready_s, rss_mb


def ensure_mlserver() -> Path:
    """benchmarks/.mlserver-venv/bin/mlserver, creating the venv on first use."""
    exe = MLSERVER_VENV / "bin" / "mlserver"
    if exe.exists():
        return exe
    print(f"creating {MLSERVER_VENV} with {MLSERVER_SPEC} and onnxruntime (once)…", file=sys.stderr)
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", str(MLSERVER_VENV)], check=True)
    res = subprocess.run([str(MLSERVER_VENV / "bin" / "pip"), "install", "-q", MLSERVER_SPEC, "onnxruntime",
                          "numpy"], capture_output=True, text=True)
    if res.returncode != 0:
        shutil.rmtree(MLSERVER_VENV, ignore_errors=True)
        raise SystemExit(f"installing MLServer failed (or run with --no-mlserver):\n{res.stderr[-3000:]}")
    return exe


def mlserver_version() -> str:
    res = subprocess.run([str(MLSERVER_VENV / "bin" / "python"), "-c", "import mlserver; print(mlserver.__version__)"],
                         capture_output=True, text=True)
    return res.stdout.strip() or "?"


def mlserver_repo(tmp: Path, onnx: Path, port: int) -> Path:
    """A fresh MLServer model repository for one start: settings.json (ports, no access log,
    inference inline) and the model's model-settings.json (no adaptive batching)."""
    repo = tmp / f"mlserver-{port}"
    repo.mkdir()
    (repo / "settings.json").write_text(json.dumps({
        "debug": False, "parallel_workers": 0, "host": "127.0.0.1", "http_port": port,
        "grpc_port": free_port(), "metrics_port": free_port()}))
    (repo / "model-settings.json").write_text(json.dumps({
        "name": "digits", "implementation": "_mlserver_onnx.OnnxRuntime", "max_batch_size": 0,
        "max_batch_time": 0, "parameters": {"uri": str(onnx)}}))
    return repo


def start(server: Server, tmp: Path, env: dict[str, str], onnx: Path | None, pin: bool,
          ) -> tuple[subprocess.Popen[bytes], int, float, Any]:
    port = free_port()
    if server.kind == "granian" or server.kind == "uvicorn":
        cmd = [*server.cmd, "--host", "127.0.0.1", "--port", str(port)]
        ready_url = f"http://127.0.0.1:{port}/"
    elif server.kind == "mlserver":
        assert onnx is not None
        cmd = [*server.cmd, str(mlserver_repo(tmp, onnx, port))]
        ready_url = f"http://127.0.0.1:{port}/v2/models/digits/ready"
    else:
        cmd = [*server.cmd, "--port", str(port)]
        ready_url = f"http://127.0.0.1:{port}/v2/health/ready"
    log = (tmp / f"{server.label.replace(' ', '_').replace('/', '_')}.log").open("a")
    proc = subprocess.Popen(pinned(0 if pin and server.pin else None, cmd), env=env, cwd=HERE,
                            stdout=log, stderr=log)
    try:
        ready = wait_ready(ready_url, proc)
    except BaseException:
        stop(proc)
        log.close()
        raise SystemExit(f"{server.label} did not get ready; its log: {log.name}") from None
    return proc, port, ready, log


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=10, help="measured seconds per cell and run")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of the same load before each cell (0: none)")
    ap.add_argument("--concurrency", default="1,16,64", help="wrk connections, comma-separated")
    ap.add_argument("--pin", action="store_true", help="server on CPU 0, wrk on CPU 1 (default: unpinned)")
    ap.add_argument("--no-mlserver", dest="mlserver", action="store_false", help="skip the MLServer row")
    ap.add_argument("--uvicorn", action="store_true", help="add the bare uvicorn+orjson row")
    ap.add_argument("--json", action="store_true", help="all results as one JSON object on stdout; tables on stderr")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: apt-get install wrk")
    if args.pin and (os.cpu_count() or 1) < 2:
        raise SystemExit("--pin needs 2 CPUs")
    conc = sorted({int(c) for c in args.concurrency.split(",")})
    top, low = max(conc), min(conc)
    wrk_cpu = 1 if args.pin else None
    tmp = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    env = bench_env(tmp)
    bodies = Bodies()
    mlserver_exe = ensure_mlserver() if args.mlserver else None
    print("training, optimizing and registering the canonical model…", file=sys.stderr)
    bundle = canonical_bundle(tmp, env)
    onnx = extract_onnx(bundle, tmp / "model.onnx")
    env["BARE_MODEL"] = str(onnx)

    js, binary = bodies.json_headers, bodies.binary_headers
    v2 = "/v2/models/digits/infer"
    gr = [str(BIN / "granian"), "--log-level", "warning", "--no-ws"]
    servers = [
        Server(LIMIT, "granian", [*gr, "--interface", "rsgi", "_bare:rsgi_app"],
               [(LIMIT, "/", bodies.v2_json, js)], conc),
        Server(BARE_MODEL, "granian", [*gr, "--interface", "rsgi", "_bare:rsgi_model_app"],
               [(BARE_MODEL, "/", bodies.v2_json, js)], conc),
        Server("bare granian ASGI+orjson", "granian", [*gr, "--interface", "asgi", "_bare:orjson_app"],
               [("bare granian ASGI+orjson", "/", bodies.v2_json, js)], conc),
    ]
    if args.uvicorn:
        servers.append(Server("bare uvicorn+orjson", "uvicorn",
                              [str(BIN / "uvicorn"), "--log-level", "warning", "--no-access-log", "_bare:orjson_app"],
                              [("bare uvicorn+orjson", "/", bodies.v2_json, js)], conc))
    if mlserver_exe:
        servers.append(Server(MLSERVER, "mlserver", [str(mlserver_exe), "start"],
                              [(MLSERVER, v2, bodies.v2_json, js)], conc))
    serve = [SHIPYARD, "serve", "digits"]
    servers += [
        Server("shipyard", "shipyard", serve, [(B, v2, bodies.v2_json, js), (C, v2, bodies.v2_binary, binary),
                                                (D, "/v1/models/digits:predict", bodies.v1, js)], conc),
        Server("shipyard unbatched", "shipyard", [*serve, "--max-batch-size", "1"],
               [(E, v2, bodies.v2_json, js)], conc),
        Server("shipyard unmonitored", "shipyard", [*serve, "--no-log", "--no-metrics"],
               [(G, v2, bodies.v2_json, js)], [top]),
        Server("shipyard 2 workers", "shipyard", [*serve, "--workers", "2"], [(F, v2, bodies.v2_json, js)], [top],
               pin=False),
    ]

    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    for rnd, order in ((1, servers), (2, servers[::-1])):
        for server in order:
            proc, port, ready, log = start(server, tmp, env, onnx, args.pin)
            try:
                for row, path, body, headers in server.routes:
                    for c in server.concs:
                        r = wrk(f"http://127.0.0.1:{port}{path}", body, headers, c, args.seconds, tmp,
                                warmup=args.warmup, cpu=wrk_cpu)
                        results.setdefault((row, c), []).append(r)
                        print(f"  round {rnd}  {row:<30} c={c:<3} {r['rps']:>9,.0f} req/s  p50 {r['p50_ms']:.2f} ms"
                              f"  p99 {r['p99_ms']:.2f} ms  errors {r['errors']}", file=sys.stderr)
                server.starts.append({"round": rnd, "ready_s": ready,
                                      "rss_mb": [round(rss_mb(p), 1) for p in family(proc.pid)]})
            finally:
                stop(proc)
                log.close()
    compute = in_process(env, args.seconds, 0 if args.pin else None)
    shutil.rmtree(tmp, ignore_errors=True)

    out: TextIO = sys.stderr if args.json else sys.stdout
    rows = [(row, c) for s in servers for row, *_ in s.routes for c in s.concs]
    pin = ("pinned: server on CPU 0, wrk on CPU 1 (the 2-worker server unpinned)" if args.pin
           else "unpinned (server and wrk share the CPUs as the OS schedules them)")
    header = (f"serve_bench: wrk -t1 on the same machine ({os.cpu_count()} CPUs), one worker unless stated, "
              f"ORT 1 thread, single 784-float instance, {args.seconds} s per cell after {args.warmup} s warm-up, "
              "each cell run twice "
              f"(round 1 in server order, round 2 reversed: values are 'round 1 / round 2'); {pin}")
    print(f"\n{header}\n", file=out)
    if mlserver_exe:
        print(f"MLServer {mlserver_version()} from {MLSERVER_VENV.relative_to(HERE.parent)}: custom ONNX Runtime "
              "runtime (_mlserver_onnx.py), no batching, parallel_workers 0, debug off\n", file=out)
    print(f"{'row':<31}{'conc':>5}{'req/s':>20}{'p50 ms':>15}{'p99 ms':>15}{'errors':>10}", file=out)
    for row, c in rows:
        r1, r2 = (results[(row, c)] + results[(row, c)])[:2]
        print(f"{row:<31}{c:>5}{_pair(r1['rps'], r2['rps'], '{:,.0f}'):>20}"
              f"{_pair(r1['p50_ms'], r2['p50_ms'], '{:.2f}'):>15}{_pair(r1['p99_ms'], r2['p99_ms'], '{:.2f}'):>15}"
              f"{_pair(r1['errors'], r2['errors'], '{:.0f}'):>10}", file=out)
    for batch, (ips, us) in compute.items():
        print(f"{'in-process ORT, batch ' + str(batch):<36}{ips:>20,.0f} instances/s, {us:.1f} µs per call "
              "(the compute limit)", file=out)

    goals = evaluate_goals(results, top, low, bool(mlserver_exe))
    print(f"\ngoals against {LIMIT} in this run (ratio of the two runs' means; worse per-round ratio in brackets):",
          file=out)
    for g in goals:
        print(f"  {g['verdict']:<5} {g['goal']}: {g['text']}", file=out)

    def mean(row: str, c: int, key: str) -> float:
        runs = results[(row, c)]
        return sum(r[key] for r in runs) / len(runs)

    info = []
    for c in conc:  # against the floor of running the model at all (not a goal: where the goals' limit lies)
        info.append(f"c={c}: (b) / bare RSGI+ORT: {mean(B, c, 'rps') / mean(BARE_MODEL, c, 'rps'):.2f}× req/s, p50 "
                    f"{mean(B, c, 'p50_ms') / mean(BARE_MODEL, c, 'p50_ms'):.2f}×; bare RSGI+ORT / (a): p50 "
                    f"{mean(BARE_MODEL, c, 'p50_ms') / mean(LIMIT, c, 'p50_ms'):.2f}×")
    for c in conc:
        info.append(f"(b) batching on / (e) off at c={c}: {mean(B, c, 'rps') / mean(E, c, 'rps'):.2f}× req/s")
    on, off = mean(B, top, "rps"), mean(G, top, "rps")
    info.append(f"monitoring cost at c={top}: (b) {on:,.0f} vs (g) {off:,.0f} req/s = {(1 - on / off) * 100:.1f}% "
                f"of req/s, p99 {mean(B, top, 'p99_ms'):.2f} vs {mean(G, top, 'p99_ms'):.2f} ms (goal ≤ 10%)")
    for s in servers:
        each = "; ".join(f"round {st['round']}: ready {st['ready_s']:.2f} s, RSS "
                         + ", ".join(f"{m:.0f}" for m in st["rss_mb"]) + " MB" for st in s.starts)
        info.append(f"{s.label}: {each}")
    info.append("(shipyard's RSS: supervisor with the drift evaluator, then granian and its workers; ready goal ≤ 1 s, "
                "RSS goal < 150 MB per process)")
    errors = sum(r["errors"] for (row, _), runs in results.items() for r in runs if row in (B, C, D, E, F, G))
    info.append(f"errors in shipyard's rows: {errors:.0f} (goal 0)")
    print("", file=out)
    for line in info:
        print(line, file=out)

    if args.json:
        json.dump({
            "config": {"seconds": args.seconds, "warmup": args.warmup, "concurrency": conc, "pinned": args.pin,
                       "cpus": os.cpu_count(), "wrk_threads": 1, "limit": LIMIT,
                       "mlserver": mlserver_version() if mlserver_exe else None},
            "cells": [{"row": row, "concurrency": c, "runs": results[(row, c)],
                       "mean": {k: mean(row, c, k) for k in ("rps", "p50_ms", "p99_ms", "errors")}}
                      for row, c in rows],
            "servers": {s.label: s.starts for s in servers},
            "compute": {str(b): {"instances_per_s": ips, "us_per_call": us} for b, (ips, us) in compute.items()},
            "goals": goals,
            "monitoring_cost": 1 - on / off,
            "errors_shipyard": errors,
        }, sys.stdout, indent=1)
        print()


def _pair(a: float, b: float, fmt: str) -> str:
    return f"{fmt.format(a)} / {fmt.format(b)}"


def evaluate_goals(results: dict[tuple[str, int], list[dict[str, float]]], top: int, low: int,
                   with_mlserver: bool) -> list[dict[str, Any]]:
    """The issue's goals: each a ratio of the two runs' means against its limit, with the worse of
    the per-round ratios (round 1 to round 1, round 2 to round 2) beside it."""

    def ratio(num: tuple[str, int], den: tuple[str, int], key: str) -> tuple[float, list[float]]:
        a, b = results[num], results[den]
        mean = (sum(r[key] for r in a) / len(a)) / max(sum(r[key] for r in b) / len(b), 1e-9)
        return mean, [x[key] / max(y[key], 1e-9) for x, y in zip(a, b, strict=False)]

    goals = []

    def goal(name: str, num: tuple[str, int], den: tuple[str, int], key: str, op: str, limit: float) -> None:
        mean, per_round = ratio(num, den, key)
        ok = {"≥": mean >= limit, "≤": mean <= limit, ">": mean > limit}[op]
        worse = min(per_round) if op in ("≥", ">") else max(per_round)
        worse_ok = {"≥": worse >= limit, "≤": worse <= limit, ">": worse > limit}[op]
        goals.append({"goal": name, "ratio": mean, "per_round": per_round, "worse": worse, "op": op, "limit": limit,
                      "pass": ok, "verdict": "PASS" if ok else "FAIL",
                      "text": f"{mean:.2f}× [{worse:.2f}×] (goal {op} {limit:g})"
                              + ("" if ok == worse_ok else f"; the worse run {'passes' if worse_ok else 'fails'}")})

    goal(f"c={top} (b) req/s / (a) req/s", (B, top), (LIMIT, top), "rps", "≥", 0.5)
    goal(f"c={top} (b) p99 / (a) p99", (B, top), (LIMIT, top), "p99_ms", "≤", 2)
    goal(f"c={low} (b) p50 / (a) p50", (B, low), (LIMIT, low), "p50_ms", "≤", 1.3)
    if with_mlserver:
        goal(f"c={low} (b) req/s / MLServer req/s", (B, low), (MLSERVER, low), "rps", ">", 1)
    else:
        goals.append({"goal": f"c={low} (b) req/s / MLServer req/s", "pass": None, "verdict": "SKIP",
                      "text": "--no-mlserver"})
    goal(f"c={top} (f) 2 workers req/s / (b) req/s", (F, top), (B, top), "rps", "≥", 1.3)
    concs = sorted(c for row, c in results if row == B)
    for tag, label in ((C, "(c) binary"), (D, "(d) v1")):
        per_c = {c: ratio((tag, c), (B, c), "rps") for c in concs}
        ok = all(m >= 0.9 for m, _ in per_c.values())
        worse = min(min(pr) for _, pr in per_c.values())
        goals.append({"goal": f"{label} req/s / (b) req/s at every concurrency",
                      "ratio": {c: m for c, (m, _) in per_c.items()},
                      "per_round": {c: pr for c, (_, pr) in per_c.items()}, "worse": worse, "op": "≥", "limit": 0.9,
                      "pass": ok, "verdict": "PASS" if ok else "FAIL",
                      "text": ", ".join(f"c={c} {m:.2f}×" for c, (m, _) in per_c.items())
                              + f" [{worse:.2f}×] (goal ≥ 0.9)"})
    return goals


def in_process(env: dict[str, str], seconds: int, cpu: int | None) -> dict[int, tuple[float, float]]:
    """ONNX Runtime alone at batch 1 and 64 on the served bundle, 1 thread: the compute limit."""
    code = (
        "import json, sys, time, numpy as np\n"
        "from shipyard.registry import Registry\n"
        "from shipyard.serve.runtime import ModelRuntime\n"
        "reg = Registry(); mv = reg.get('digits@production')\n"
        "rt = ModelRuntime(reg.load(mv.ref), version=mv.version, threads=1)\n"
        "out = {}\n"
        "for b in (1, 64):\n"
        "    x = np.random.default_rng(0).random((b, 784), dtype=np.float32)\n"
        "    n, t0 = 0, time.perf_counter()\n"
        f"    while time.perf_counter() - t0 < {max(1, seconds // 2)}:\n"
        "        rt.predict(x); n += 1\n"
        "    dt = time.perf_counter() - t0\n"
        "    out[b] = (n * b / dt, dt / n * 1e6)\n"
        "print(json.dumps(out))\n")
    res = subprocess.run(pinned(cpu, [sys.executable, "-c", code]), env=env, capture_output=True, text=True,
                         check=True)
    return {int(k): tuple(v) for k, v in json.loads(res.stdout.splitlines()[-1]).items()}


if __name__ == "__main__":
    main()
