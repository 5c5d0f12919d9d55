"""A scale-out test topology built from real parts on one machine: N `shipyard serve` replicas,
each in its own network namespace (iproute2: `ip netns` + a veth pair on a bridge) as a separate
test host with its own SHIPYARD_HOME, behind HAProxy (Debian package) with active health checks on
`/v2/health/ready`, all on one PostgreSQL and one shared artifact folder. Used by the scale-out
tests and `benchmarks/scale_bench.py`; needs root (network namespaces)."""

from __future__ import annotations

import csv
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from shipyard.settings import Settings

from .pg import Postgres, free_port

PORT = 8000  # every replica listens on the same port in its own namespace, like real hosts


def _ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, capture_output=True)


@dataclass
class Replica:
    name: str
    ns: str
    addr: str
    home: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://{self.addr}:{PORT}"

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.base}/v2/health/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False


@dataclass
class Topology:
    root: Path
    n: int = 3
    serve_args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    replicas: list[Replica] = field(default_factory=list)

    def __post_init__(self) -> None:
        if os.geteuid() != 0:
            raise RuntimeError("the scale-out topology needs root for network namespaces (ip netns)")
        if not shutil.which("haproxy"):
            raise RuntimeError("HAProxy is not installed: run `make system-deps`")
        tag = f"{os.getpid() % 10000}"
        self.subnet = 10 + os.getpid() % 200
        self.host_addr = f"10.77.{self.subnet}.1"
        self.bridge = f"sy{tag}br"
        self.tag = tag
        self.lb_port = free_port()
        self.artifacts = self.root / "shared-artifacts"
        self.pg: Postgres | None = None
        self.haproxy: subprocess.Popen[bytes] | None = None

    # -- building -------------------------------------------------------------------------------
    def up(self) -> Topology:
        self.root.mkdir(parents=True, exist_ok=True)
        _ip("link", "add", "name", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.host_addr}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i in range(1, self.n + 1):
            ns, veth, addr = f"sy{self.tag}r{i}", f"sy{self.tag}v{i}", f"10.77.{self.subnet}.{10 + i}"
            _ip("netns", "add", ns)
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("link", "set", veth, "master", self.bridge, "up")
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "route", "add", "default", "via", self.host_addr)
            self.replicas.append(Replica(f"r{i}", ns, addr, self.root / f"host-r{i}"))
        self.pg = Postgres(listen=("127.0.0.1", self.host_addr), trust=(f"10.77.{self.subnet}.0/24",))
        self.db_url = self.pg.create_db("shipyard")
        self.replica_db_url = self.db_url.replace("@127.0.0.1:", f"@{self.host_addr}:")
        self._start_haproxy()
        return self

    def down(self) -> None:
        for r in self.replicas:
            self.kill(r)
        if self.haproxy is not None:
            self.haproxy.terminate()
            self.haproxy.wait(timeout=10)
        if self.pg is not None:
            self.pg.close()
        for r in self.replicas:
            _ip("netns", "del", r.ns, check=False)
        _ip("link", "del", self.bridge, check=False)

    @property
    def lb(self) -> str:
        return f"http://127.0.0.1:{self.lb_port}"

    def settings_env(self, home: Path) -> dict[str, str]:
        """The environment of a shipyard process on a test host (or on the operator's machine)."""
        return {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")} | {
            "SHIPYARD_HOME": str(home), "SHIPYARD_DATABASE_URL": self.replica_db_url,
            "SHIPYARD_ARTIFACTS": f"file://{self.artifacts}", "PYTHONUNBUFFERED": "1", **self.env}

    def operator_settings(self) -> Settings:
        """The operator's machine: its own home, the shared database and artifacts."""
        return Settings(home=self.root / "operator", database_url=self.db_url, artifacts=f"file://{self.artifacts}")

    # -- replicas ---------------------------------------------------------------------------------
    def start(self, r: Replica, *extra: str) -> None:
        r.home.mkdir(parents=True, exist_ok=True)
        log = open(r.home / "serve.log", "ab")  # noqa: SIM115 (the process owns it)
        r.proc = subprocess.Popen(
            ["ip", "netns", "exec", r.ns, sys.executable, "-m", "shipyard", "serve", *self.serve_args, *extra,
             "--host", "0.0.0.0", "--port", str(PORT)],
            env=self.settings_env(r.home), stdout=log, stderr=log, start_new_session=True)
        log.close()

    def wait_ready(self, r: Replica, timeout: float = 120) -> float:
        deadline = time.monotonic() + timeout
        while not r.ready():
            assert r.proc is not None and r.proc.poll() is None, self.log(r)
            assert time.monotonic() < deadline, f"{r.name} did not become ready:\n{self.log(r)}"
            time.sleep(0.1)
        return time.monotonic()

    def start_all(self) -> None:
        for r in self.replicas:
            self.start(r)
        for r in self.replicas:
            self.wait_ready(r)
        self.wait_balanced()

    def kill(self, r: Replica, sig: int = signal.SIGKILL) -> None:
        """Take the whole host down (its process group: supervisor and workers)."""
        if r.proc is not None and r.proc.poll() is None:
            os.killpg(r.proc.pid, sig)
            r.proc.wait(timeout=60)
        r.proc = None

    def log(self, r: Replica) -> str:
        p = r.home / "serve.log"
        return p.read_text(errors="replace")[-4000:] if p.exists() else "(no log)"

    # -- the balancer -----------------------------------------------------------------------------
    def _start_haproxy(self) -> None:
        servers = "\n".join(f"    server {r.name} {r.addr}:{PORT} check" for r in self.replicas)
        cfg = f"""
global
    maxconn 4000
    tune.bufsize 65536
    stats socket {self.root}/haproxy.sock mode 600 level admin

defaults
    mode http
    timeout connect 1s
    timeout client 30s
    timeout server 15s
    timeout check 1s
    # an inference POST that meets a dead or refusing replica is retried once, on another one
    retries 1
    option redispatch 1
    retry-on all-retryable-errors
    option http-buffer-request

frontend inference
    bind 127.0.0.1:{self.lb_port}
    unique-id-format %{{+X}}o%ci%cp%fp%Ts%ms%rt%pid
    # one id per client request, kept across a retry, so the prediction log can deduplicate
    http-request set-header X-Request-ID %[unique-id] unless {{ req.hdr(x-request-id) -m found }}
    default_backend replicas

backend replicas
    balance roundrobin
    option httpchk GET /v2/health/ready
    http-check expect status 200
    default-server inter 300ms fastinter 200ms downinter 300ms fall 2 rise 2
    http-response set-header X-Served-By %s
{servers}
"""
        (self.root / "haproxy.cfg").write_text(cfg)
        subprocess.run(["haproxy", "-c", "-q", "-f", str(self.root / "haproxy.cfg")], check=True)
        log = open(self.root / "haproxy.log", "ab")  # noqa: SIM115 (the process owns it)
        self.haproxy = subprocess.Popen(["haproxy", "-db", "-f", str(self.root / "haproxy.cfg")],
                                        stdout=log, stderr=log)
        log.close()

    def _admin(self, command: str) -> str:
        """One command on HAProxy's stats socket (runtime API)."""
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(self.root / "haproxy.sock"))
            s.sendall(command.encode() + b"\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return data.decode()

    def balance_over(self, k: int) -> None:
        """Send traffic to the first `k` replicas only (the others are put in maintenance)."""
        for i, r in enumerate(self.replicas):
            self._admin(f"{'enable' if i < k else 'disable'} server replicas/{r.name}")
        deadline = time.monotonic() + 30
        while sum(st.startswith("UP") for st in self.lb_status().values()) != k:
            assert time.monotonic() < deadline, self.lb_status()
            time.sleep(0.1)

    def lb_stats(self) -> dict[str, dict[str, str]]:
        """HAProxy's statistics of the replicas' backend: server name (and BACKEND) → its row."""
        rows = csv.DictReader(io.StringIO(self._admin("show stat").lstrip("# ")))
        return {row["svname"]: row for row in rows if row["pxname"] == "replicas"}

    def lb_status(self) -> dict[str, str]:
        """Server name → HAProxy's view of it (UP, DOWN, MAINT, …)."""
        return {name: row["status"] for name, row in self.lb_stats().items() if name != "BACKEND"}

    def wait_balanced(self, timeout: float = 30) -> None:
        """Until HAProxy sees every running replica UP."""
        deadline = time.monotonic() + timeout
        want = {r.name for r in self.replicas if r.proc is not None}
        while {n for n, st in self.lb_status().items() if st.startswith("UP")} != want:
            assert time.monotonic() < deadline, f"HAProxy: {self.lb_status()}"
            time.sleep(0.1)


@dataclass
class Outcome:
    t: float
    status: int  # 0: the client saw no HTTP answer at all
    version: str | None
    served_by: str | None
    request_id: str | None
    error: str | None = None


class Load:
    """Continuous inference through the balancer from `threads` clients, every outcome kept."""

    def __init__(self, url: str, model: str, rows: list[list[float]], threads: int = 3,
                 headers: dict[str, str] | None = None) -> None:
        import threading

        self.url, self.model, self.rows, self.headers = url, model, rows, headers or {}
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def _run(self, k: int) -> None:
        with httpx.Client(timeout=20) as client:
            i = k
            while not self._stop.is_set():
                x = self.rows[i % len(self.rows)]
                i += len(self._threads)
                body = {"inputs": [{"name": "input", "shape": [1, len(x)], "datatype": "FP32", "data": x}]}
                t = time.monotonic()
                try:
                    r = client.post(f"{self.url}/v2/models/{self.model}/infer", json=body, headers=self.headers)
                    ok = r.status_code == 200
                    self.outcomes.append(Outcome(t, r.status_code, r.json().get("model_version") if ok else None,
                                                 r.headers.get("x-served-by"), r.headers.get("x-request-id"),
                                                 None if ok else r.text[:300]))
                except httpx.HTTPError as e:
                    self.outcomes.append(Outcome(t, 0, None, None, None, f"{type(e).__name__}: {e}"))

    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status != 200]

    def wait_for(self, n: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        start = len(self.outcomes)
        while len(self.outcomes) < start + n:
            assert time.monotonic() < deadline, f"only {len(self.outcomes) - start} of {n} requests in {timeout} s"
            time.sleep(0.05)
