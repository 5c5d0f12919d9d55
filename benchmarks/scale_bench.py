"""How fast an alias move reaches every replica: move-to-served latency over 20 moves, PostgreSQL
LISTEN/NOTIFY against polling.

    python benchmarks/scale_bench.py [--moves 20] [--replicas 2] [--poll-s 2]

Starts a throwaway PostgreSQL (Debian's `postgresql`), registers two versions of a small model,
runs `--replicas` `shipyard serve` processes on it, then moves `production` back and forth; after
each move it asks every replica (v1 :predict, fresh connections) until all answer with the new
version, and records the time from the move's commit to the last replica switching. Two settings
in the same run: notifications on (`--poll-s 0`: nothing but NOTIFY) and polling only
(`--no-notify --poll-s 2`). Goal (issue 7): under 2 s. On 2 cores this is a functional figure.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from glob import glob
from pathlib import Path

import httpx
import numpy as np

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_postgres(root: Path) -> tuple[str, list[str], Path]:
    bindir = Path(sorted(glob("/usr/lib/postgresql/*/bin/initdb"))[-1]).parent
    as_user: list[str] = []
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    data = root / "data"
    subprocess.run([*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "shipyard", "--auth=trust"],
                   check=True, capture_output=True)
    subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-o",
                    f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "-w", "start"],
                   check=True, capture_output=True)
    return f"postgresql+psycopg://shipyard@127.0.0.1:{port}/postgres", [*as_user, str(bindir / "pg_ctl"),
                                                                         "-D", str(data)], data


def version_of(base: str) -> str:
    r = httpx.post(f"{base}/v1/models/digits:predict", json={"instances": [[0.5] * 784]}, timeout=5)
    return str(r.json()["model_version"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moves", type=int, default=20)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--poll-s", type=float, default=2.0)
    args = ap.parse_args()

    from tests.bundles import make_bundle

    from shipyard.registry import Registry
    from shipyard.settings import Settings

    root = Path(tempfile.mkdtemp(prefix="scale-bench-"))
    url, pg_ctl, _ = start_postgres(root)
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
        subprocess.run([*pg_ctl, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
