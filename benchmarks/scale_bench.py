"""Scale-out, two figures.

1. How fast an alias move reaches every replica: move-to-served latency over 20 moves, PostgreSQL
   LISTEN/NOTIFY against polling. Starts a throwaway PostgreSQL (Debian's `postgresql`), registers
   two versions of a small model, runs `--replicas` `shipyard serve` processes on it, then moves
   `production` back and forth; after each move it asks every replica (v1 :predict, fresh
   connections) until all answer with the new version, and records the time from the move's
   commit to the last replica switching. Two settings in the same run: notifications on
   (`--poll-s 0`: nothing but NOTIFY) and polling only (`--no-notify --poll-s 2`). Goal (issue 7):
   under 2 s.
2. Requests/s through HAProxy with 1, 2 and 3 replicas, each in its own network namespace (the
   test suite's topology, harness/topology.py; needs root and `haproxy`), against the same replica
   hit directly without the balancer, measured in the same run with wrk (V2 JSON, one row).

    python benchmarks/scale_bench.py [--moves 20] [--replicas 2] [--poll-s 2] [--seconds 10]

On 2 cores every replica, HAProxy and wrk share the same two CPUs: the 1/2/3-replica figures are
functional (the balancer works and costs this much), not a scaling claim.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))  # the repository root: the shared harness/ (PostgreSQL, topology, bundles)


def version_of(base: str) -> str:
    r = httpx.post(f"{base}/v1/models/digits:predict", json={"instances": [[0.5] * 784]}, timeout=5)
    return str(r.json()["model_version"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moves", type=int, default=20)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--poll-s", type=float, default=2.0)
    ap.add_argument("--seconds", type=int, default=10, help="wrk seconds per balancer measurement")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--skip-moves", action="store_true")
    ap.add_argument("--skip-balancer", action="store_true")
    args = ap.parse_args()
    if not args.skip_moves:
        moves(args)
    if not args.skip_balancer:
        balancer(args)


def moves(args: argparse.Namespace) -> None:

    from harness.bundles import make_bundle
    from harness.pg import Postgres, free_port
    from shipyard.registry import Registry
    from shipyard.settings import Settings

    root = Path(tempfile.mkdtemp(prefix="scale-bench-"))
    pg = Postgres()
    url = pg.url()
    home = root / "home"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        reg = Registry(settings=Settings(home=home, database_url=url))
        reg.register(make_bundle(root / "a"), "digits", alias="production")
        reg.register(make_bundle(root / "b", seed=1), "digits")
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")}
        env.update(SHIPYARD_HOME=str(home), SHIPYARD_DATABASE_URL=url)
        results: dict[str, list[float]] = {}
        for label, flags in (("NOTIFY (--poll-s 0)", ["--poll-s", "0"]),
                             (f"polling (--no-notify --poll-s {args.poll_s:g})",
                              ["--no-notify", "--poll-s", str(args.poll_s)])):
            bases = []
            for _ in range(args.replicas):
                port = free_port()
                log = (root / f"serve-{port}.log").open("w")
                procs.append(subprocess.Popen([sys.executable, "-m", "shipyard", "serve", "digits", "--port",
                                               str(port), "--no-evaluate", *flags], env=env, stdout=log, stderr=log))
                bases.append(f"http://127.0.0.1:{port}")
            for base in bases:
                deadline = time.monotonic() + 60
                while True:
                    try:
                        if httpx.get(f"{base}/v2/health/ready", timeout=1).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    assert time.monotonic() < deadline, f"{base} did not start"
                    time.sleep(0.1)
            lat = []
            current = int(version_of(bases[0]))
            for _ in range(args.moves):
                target = 2 if current == 1 else 1
                reg.set_alias("digits", "production", target, reason="scale_bench")
                t0 = time.perf_counter()
                pending = set(bases)
                while pending:
                    pending = {b for b in pending if version_of(b) != str(target)}
                    if time.perf_counter() - t0 > 30:
                        raise SystemExit(f"{label}: replicas did not follow within 30 s")
                lat.append(time.perf_counter() - t0)
                current = target
                time.sleep(0.2)
            results[label] = lat
            for p in procs:
                p.send_signal(signal.SIGINT)
            for p in procs:
                p.wait(timeout=60)
            procs.clear()
        print(f"\nscale_bench: {args.replicas} replicas on one PostgreSQL, {args.moves} alias moves each, "
              "move-to-served (the last replica answering with the new version)\n")
        print(f"{'setting':<36}{'median s':>10}{'p95 s':>9}{'max s':>8}")
        for label, lat in results.items():
            a = np.array(lat)
            print(f"{label:<36}{np.median(a):>10.3f}{np.percentile(a, 95):>9.3f}{a.max():>8.3f}")
        notify = np.array(next(iter(results.values())))
        print(f"\nNOTIFY: max {notify.max():.3f} s (goal < 2 s); polling median / NOTIFY median: "
              f"{np.median(list(results.values())[1]) / max(np.median(notify), 1e-9):.0f}×")
    finally:
        for p in procs:
            p.kill()
        pg.close()
        shutil.rmtree(root, ignore_errors=True)


def balancer(args: argparse.Namespace) -> None:
    import orjson
    from serve_bench import wrk

    from harness.bundles import make_bundle
    from harness.topology import Topology
    from shipyard.registry import Registry

    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: `bash scripts/system-deps.sh bench`")
    root = Path(tempfile.mkdtemp(prefix="scale-bench-lb-"))
    topo = Topology(root, n=3, serve_args=("digits", "--workers", "1", "--no-evaluate", "--threads", "1"))
    try:
        topo.up()
        Registry(settings=topo.operator_settings()).register(make_bundle(root / "a"), "digits", alias="production")
        topo.start_all()
        x = np.random.default_rng(0).random(784, dtype=np.float32).round(3).tolist()
        body = orjson.dumps({"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": x}]})
        headers = {"Content-Type": "application/json"}
        path = "/v2/models/digits/infer"
        rows = [("replica r1 directly (no balancer)", wrk(f"{topo.replicas[0].base}{path}", body, headers,
                                                          args.concurrency, args.seconds, root))]
        for k in (1, 2, 3):
            topo.balance_over(k)
            rows.append((f"HAProxy → {k} replica{'s' if k > 1 else ''}",
                         wrk(f"{topo.lb}{path}", body, headers, args.concurrency, args.seconds, root)))
        base = rows[0][1]["rps"]
        print(f"\nscale_bench: V2 infer through HAProxy, wrk -c{args.concurrency} {args.seconds} s; replicas in "
              "network namespaces, one worker each, everything on the same 2 cores (a functional figure)\n")
        print(f"{'setup':<36}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'vs direct':>11}")
        for label, r in rows:
            print(f"{label:<36}{r['rps']:>9.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['errors']:>8}"
                  f"{r['rps'] / base:>10.2f}×")
    finally:
        topo.down()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
