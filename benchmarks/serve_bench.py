"""Our server against bare HTTP handlers on the same stack, with wrk on loopback.

    python benchmarks/serve_bench.py [--seconds 10] [--concurrency 1,16,64]

One worker, ONNX Runtime at 1 thread, the canonical MNIST model (trained for 1 epoch on the
bundled sample here: the speed does not depend on the weights), single-instance requests (one
784-float instance, about 7 KB of JSON). Measured in one run: (a) bare handlers that parse the
body fully and answer a constant (uvicorn + Starlette + std json, uvicorn + orjson, granian +
orjson, granian + simdjson); (b) our V2 JSON route with the defaults a user gets; (c) our V2
binary route; (d) our v1 route; (e) our V2 JSON route with batching off (--max-batch-size 1),
which is why batching is on by default; (f) two workers; (g) our V2 JSON route with monitoring off
(--no-log --no-metrics), for the cost of monitoring; and the in-process ONNX Runtime
throughput at batch 1 and 64 (the compute limit). Prints req/s, p50, p99, errors, the ratios
(b)/(a), (c)/(a) against the fastest bare handler at the highest concurrency, (b)/(e), (f)/(b),
and each server process's RSS. Needs `wrk` (Debian package).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early ({proc.returncode})")
        try:
            if url.endswith("/ready"):
                if httpx.get(url, timeout=1).status_code == 200:
                    return time.monotonic() - t0
            else:  # a bare handler answers anything once it listens
                httpx.get(url, timeout=1)
                return time.monotonic() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"{url} not ready in {timeout} s")


def pinned(cpu: int, cmd: list[str]) -> list[str]:
    """Pin a process to one CPU: the load generator on one core, the one-worker server on the
    other, so neither steals the other's core (unpinned, the same server varies 8,500–12,500
    req/s run to run on this 2-core machine; pinned it holds within a few percent)."""
    if PIN and shutil.which("taskset"):
        return ["taskset", "-c", str(cpu), *cmd]
    return cmd


PIN = (os.cpu_count() or 1) >= 2


def wrk(url: str, body: bytes, headers: dict[str, str], conns: int, seconds: int, tmp: Path) -> dict[str, float]:
    (tmp / "body.bin").write_bytes(body)
    hdrs = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in headers.items())
    (tmp / "post.lua").write_text(
        'wrk.method = "POST"\n'
        f'local f = io.open("{tmp / "body.bin"}", "rb"); wrk.body = f:read("*a"); f:close()\n{hdrs}'
        "done = function(summary, latency, requests)\n"
        '  io.write(string.format("JSON %d %d %d %d %d %d\\n", summary.requests, summary.duration,\n'
        "    latency:percentile(50), latency:percentile(99), summary.errors.status,\n"
        "    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))\n"
        "end\n")
    subprocess.run(pinned(1, ["wrk", "-t1", f"-c{conns}", "-d2s", "-s", str(tmp / "post.lua"), url]),
                   capture_output=True)
    out = subprocess.run(pinned(1, ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "-s", str(tmp / "post.lua"), url]),
                         capture_output=True, text=True).stdout
    m = re.search(r"JSON (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)", out)
    assert m, out
    reqs, dur_us, p50, p99, status_err, sock_err = map(int, m.groups())
    return {"rps": reqs / (dur_us / 1e6), "p50_ms": p50 / 1000, "p99_ms": p99 / 1000,
            "errors": status_err + sock_err}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--concurrency", default="1,16,64")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: apt-get install wrk")
    conc = [int(c) for c in args.concurrency.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    env = {**os.environ, "SHIPYARD_HOME": str(tmp / "home"), "PYTHONPATH": str(HERE)}
    shipyard = [str(BIN / "shipyard")]
    run = json.loads(subprocess.run([*shipyard, "train", "--epochs", "1", "-q", "--json"], env=env,
                                    capture_output=True, text=True, check=True).stdout.splitlines()[-1])
    subprocess.run([*shipyard, "optimize", run["run_id"], "--variants", "fp32", "--bench-seconds", "0.1",
                    "-o", str(tmp / "m.tar.gz")], env=env, capture_output=True, check=True)
    subprocess.run([*shipyard, "models", "register", str(tmp / "m.tar.gz"), "--name", "digits", "--alias",
                    "production"], env=env, capture_output=True, check=True)

    x = np.random.default_rng(0).random((1, 784), dtype=np.float32)
    json_body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 784],
                                        "data": [round(float(v), 6) for v in x.ravel()]}]}).encode()
    header = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 784],
                                     "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    v1_body = json.dumps({"instances": [[round(float(v), 6) for v in x.ravel()]]}).encode()
    ctype = {"Content-Type": "application/json"}
    uv = [str(BIN / "uvicorn"), "--log-level", "warning", "--no-access-log"]
    gr = [str(BIN / "granian"), "--interface", "asgi", "--log-level", "warning", "--no-ws"]
    v2_json = ("(b) V2 JSON", "/v2/models/digits/infer", json_body, ctype)
    servers = [
        ("bare uvicorn+starlette+json", [*uv, "--factory", "_bare:starlette_app"], [("(a)", "/", json_body, ctype)]),
        ("bare uvicorn+orjson", [*uv, "_bare:orjson_app"], [("(a)", "/", json_body, ctype)]),
        ("bare granian+orjson", [*gr, "_bare:orjson_app"], [("(a)", "/", json_body, ctype)]),
        ("bare granian+simdjson", [*gr, "_bare:simdjson_app"], [("(a)", "/", json_body, ctype)]),
        ("shipyard", [*shipyard, "serve", "digits"], [
            v2_json,
            ("(c) V2 binary", "/v2/models/digits/infer", header + x.tobytes(),
             {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))}),
            ("(d) v1", "/v1/models/digits:predict", v1_body, ctype)]),
        ("shipyard unbatched", [*shipyard, "serve", "digits", "--max-batch-size", "1"],
         [("(e) V2 JSON, batching off", *v2_json[1:])]),
        ("shipyard unmonitored", [*shipyard, "serve", "digits", "--no-log", "--no-metrics"],
         [("(g) V2 JSON, monitoring off", *v2_json[1:])]),
        ("shipyard 2 workers", [*shipyard, "serve", "digits", "--workers", "2"],
         [("(f) V2 JSON, 2 workers", *v2_json[1:])]),
    ]
    rows = []
    rss: dict[str, float] = {}
    top = max(conc)
    for label, cmd, routes in servers:
        port = free_port()
        flag = ["--port", str(port)] if "granian" not in cmd[0] else ["--port", str(port), "--host", "127.0.0.1"]
        # one worker on CPU 0; two workers get both cores (shared with wrk: a functional figure)
        full = [*cmd, *flag] if "--workers" in cmd else pinned(0, [*cmd, *flag])
        log = (tmp / f"{label.replace(' ', '_')}.log").open("w")
        proc = subprocess.Popen(full, env=env, cwd=HERE, stdout=log, stderr=log)
        try:
            ready = wait_ready(f"http://127.0.0.1:{port}/v2/health/ready" if label.startswith("shipyard")
                               else f"http://127.0.0.1:{port}/", proc)
            for name, path, body, headers in routes:
                for c in (conc if label not in ("shipyard 2 workers", "shipyard unmonitored") else [top]):
                    r = wrk(f"http://127.0.0.1:{port}{path}", body, headers, c, args.seconds, tmp)
                    rows.append((f"{name} {label}" if name == "(a)" else name, c, r))
                    print(f"  {rows[-1][0]:<28} c={c:<3} {r['rps']:>9,.0f} req/s  p99 {r['p99_ms']:.2f} ms",
                          file=sys.stderr)
            if label.startswith("shipyard"):
                family = _family(proc.pid)
                rss[label] = max(_rss_mb(p) for p in family)
                each = ", ".join(f"{_rss_mb(p):.0f}" for p in family)
                print(f"  {label} ready in {ready:.2f} s after start; RSS after the load, MB: {each} "
                      "(supervisor with the drift evaluator, then granian and its workers)", file=sys.stderr)
                if label == "shipyard":
                    rss["ready_s"] = ready
        finally:
            proc.send_signal(signal.SIGINT)  # SIGTERM would make shipyard wait out its drain grace
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
    compute = in_process(tmp, env, args.seconds)
    shutil.rmtree(tmp, ignore_errors=True)
    pin = "server pinned to CPU 0, wrk to CPU 1" if PIN and shutil.which("taskset") else "unpinned"
    print(f"\nserve_bench: one worker, ORT 1 thread, single 784-float instance, {args.seconds} s per cell, {pin}\n")
    print(f"{'route':<30}{'conc':>5}{'req/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
    for name, c, r in rows:
        print(f"{name:<30}{c:>5}{r['rps']:>11,.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['errors']:>8}")
    for batch, (ips, us) in compute.items():
        print(f"{'in-process ORT, batch ' + str(batch):<30}{'':>5}{ips:>11,.0f}  instances/s, {us:.1f} µs per call")

    def at(tag: str) -> dict[str, float]:
        return next(r for n, c, r in rows if n == tag and c == top)

    bare_name, _, bare = max(((n, c, r) for n, c, r in rows if n.startswith("(a)") and c == top),
                             key=lambda t: t[2]["rps"])
    print(f"\nfastest bare handler at c={top}: {bare_name.removeprefix('(a) ')} ({bare['rps']:,.0f} req/s, "
          f"p99 {bare['p99_ms']:.2f} ms)")
    for tag in ("(b) V2 JSON", "(c) V2 binary"):
        r = at(tag)
        print(f"{tag} / fastest bare: req/s {r['rps'] / bare['rps']:.2f}× (goal ≥ 0.6), "
              f"p99 {r['p99_ms'] / max(bare['p99_ms'], 1e-9):.2f}× (goal ≤ 2)")
    print(f"(b) batching on / (e) off: {at('(b) V2 JSON')['rps'] / at('(e) V2 JSON, batching off')['rps']:.2f}× req/s")
    on, off = at("(b) V2 JSON"), at("(g) V2 JSON, monitoring off")
    print(f"(b) monitoring on (defaults: metrics, prediction log, drift evaluator) / (g) off: "
          f"{on['rps'] / off['rps']:.2f}× req/s, p99 {on['p99_ms']:.2f} vs {off['p99_ms']:.2f} ms")
    print(f"monitoring cost: {(1 - on['rps'] / off['rps']) * 100:.1f}% of req/s at c={top} (goal ≤ 10%)")
    print(f"(f) 2 workers / (b) 1 worker: {at('(f) V2 JSON, 2 workers')['rps'] / at('(b) V2 JSON')['rps']:.2f}× "
          "(2 cores shared with wrk: a functional figure)")
    print(f"ready {rss.get('ready_s', 0):.2f} s after start (goal ≤ 1); largest server process RSS: "
          + ", ".join(f"{k} {v:.0f} MB" for k, v in rss.items() if k != "ready_s") + " (goal < 150 each)")
    errors = sum(r["errors"] for n, c, r in rows if not n.startswith("(a)"))
    print(f"errors in our rows: {errors} (goal 0)")


def _family(pid: int) -> list[int]:
    """The process and its descendants (granian runs its workers as child processes)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
    return out


def _rss_mb(pid: int) -> float:
    try:
        return int(Path(f"/proc/{pid}/status").read_text().split("VmRSS:")[1].split()[0]) / 1024
    except (OSError, IndexError):
        return 0.0


def in_process(tmp: Path, env: dict[str, str], seconds: int) -> dict[int, tuple[float, float]]:
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
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return {int(k): tuple(v) for k, v in json.loads(res.stdout.splitlines()[-1]).items()}  # type: ignore[misc]


if __name__ == "__main__":
    main()
