"""Shared set-up for serve_bench.py and serve_profile.py: the canonical bundle, the request
bodies, wrk, starting and stopping servers, /proc readings.

The canonical model is the MNIST MLP trained for 1 epoch on the bundled sample (the speed does
not depend on the weights), optimized with `--variants fp32` and registered as
`digits@production` in a throw-away SHIPYARD_HOME. `shipyard optimize` writes the reference
profile (`reference.npz`) into the bundle, so the drift evaluator of `shipyard serve` is really
on; `canonical_bundle` checks that it is there.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
SHIPYARD = str(BIN / "shipyard")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_env(tmp: Path) -> dict[str, str]:
    """The environment every process of a run gets: its own SHIPYARD_HOME, benchmarks/ on the path
    (for the bare handlers and the MLServer runtime)."""
    return {**os.environ, "SHIPYARD_HOME": str(tmp / "home"), "PYTHONPATH": str(HERE)}


def canonical_bundle(tmp: Path, env: dict[str, str]) -> Path:
    """Train, optimize (fp32), register as digits@production; returns the bundle tarball. Fails
    unless the bundle has a reference profile (`reference.npz`: drift evaluation on)."""
    run = json.loads(subprocess.run([SHIPYARD, "train", "--epochs", "1", "-q", "--json"], env=env,
                                    capture_output=True, text=True, check=True).stdout.splitlines()[-1])
    bundle = tmp / "m.tar.gz"
    subprocess.run([SHIPYARD, "optimize", run["run_id"], "--variants", "fp32", "--bench-seconds", "0.1",
                    "-o", str(bundle)], env=env, capture_output=True, check=True)
    with tarfile.open(bundle) as tf:
        names = {Path(n).name for n in tf.getnames()}
    if "reference.npz" not in names:
        raise SystemExit(f"the optimized bundle has no reference.npz (drift evaluation would be off): {names}")
    subprocess.run([SHIPYARD, "models", "register", str(bundle), "--name", "digits", "--alias",
                    "production"], env=env, capture_output=True, check=True)
    return bundle


def extract_onnx(bundle: Path, dest: Path) -> Path:
    """The bundle's model.onnx, for servers other than ours (MLServer)."""
    with tarfile.open(bundle) as tf:
        member = next(m for m in tf.getmembers() if Path(m.name).name == "model.onnx")
        f = tf.extractfile(member)
        assert f is not None
        dest.write_bytes(f.read())
    return dest


class Bodies:
    """The same single instance (784 floats) in each request form: V2 JSON (about 7 KB), V2
    binary (JSON header + raw float32), v1 `instances`."""

    def __init__(self) -> None:
        x = np.random.default_rng(0).random((1, 784), dtype=np.float32)
        data = [round(float(v), 6) for v in x.ravel()]
        self.v2_json = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 784],
                                               "data": data}]}).encode()
        header = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 784],
                                         "parameters": {"binary_data_size": x.nbytes}}]}).encode()
        self.v2_binary = header + x.tobytes()
        self.binary_headers = {"Content-Type": "application/octet-stream",
                               "Inference-Header-Content-Length": str(len(header))}
        self.v1 = json.dumps({"instances": [data]}).encode()
        self.json_headers = {"Content-Type": "application/json"}


def pinned(cpu: int | None, cmd: list[str]) -> list[str]:
    """`taskset -c CPU cmd` (None: unpinned)."""
    if cpu is None:
        return cmd
    if not shutil.which("taskset"):
        raise SystemExit("--pin needs taskset (util-linux)")
    return ["taskset", "-c", str(cpu), *cmd]


def wrk(url: str, body: bytes, headers: dict[str, str], conns: int, seconds: float, tmp: Path, *,
        warmup: float = 2, cpu: int | None = None) -> dict[str, float]:
    """POST `body` to `url` with wrk, one thread, `conns` connections, after `warmup` seconds of
    the same load; req/s, p50 and p99 in ms, errors (non-2xx/3xx answers and socket errors)."""
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
    base = ["wrk", "-t1", f"-c{conns}", "-s", str(tmp / "post.lua"), url]
    if warmup > 0:
        subprocess.run(pinned(cpu, [*base[:3], f"-d{max(1, round(warmup))}s", *base[3:]]), capture_output=True)
    out = subprocess.run(pinned(cpu, [*base[:3], f"-d{max(1, round(seconds))}s", *base[3:]]),
                         capture_output=True, text=True).stdout
    m = re.search(r"JSON (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)", out)
    assert m, out
    reqs, dur_us, p50, p99, status_err, sock_err = map(int, m.groups())
    return {"rps": reqs / (dur_us / 1e6), "p50_ms": p50 / 1000, "p99_ms": p99 / 1000,
            "errors": status_err + sock_err, "requests": reqs}


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> float:
    """Seconds from now until `url` answers 200 (a bare handler: answers at all)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early ({proc.returncode}): {' '.join(map(str, proc.args))}")  # type: ignore[arg-type]
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return time.monotonic() - t0
        time.sleep(0.05)
    raise SystemExit(f"{url} not ready in {timeout} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGINT (SIGTERM would make shipyard wait out its drain grace), then SIGKILL after 15 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        for p in reversed(family(proc.pid)):
            with contextlib.suppress(OSError):
                os.kill(p, signal.SIGKILL)
        proc.wait()


def family(pid: int) -> list[int]:
    """The process and its descendants (granian and MLServer run workers as child processes)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop(0)
        out.append(p)
        with contextlib.suppress(OSError):
            for t in Path(f"/proc/{p}/task").iterdir():
                with contextlib.suppress(OSError):
                    todo += [int(c) for c in (t / "children").read_text().split()]
    return list(dict.fromkeys(out))


def rss_mb(pid: int) -> float:
    try:
        return int(Path(f"/proc/{pid}/status").read_text().split("VmRSS:")[1].split()[0]) / 1024
    except (OSError, IndexError):
        return 0.0


def cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""
