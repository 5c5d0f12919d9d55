"""`ServeConfig`: every knob of the server in one typed object — its default, its check, and its
trip to the worker processes.

The CLI builds one from its options, `create_app(config)` takes one, and the supervisor hands it
to the HTTP server's workers as `SHIPYARD_SERVE_*` variables (`to_env`/`from_env`). A default is
written here and nowhere else; every knob is checked here, all together, and a bad value is a
`UsageError` naming the value (exit code 2)."""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import socket
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shipyard.errors import UsageError
from shipyard.monitor.config import LogConfig, MonitorConfig
from shipyard.serve.batching import BatchConfig

ENV_PREFIX = "SHIPYARD_SERVE_"
#: secrets travel in variables of their own, never in `SHIPYARD_SERVE_*` (nor in a repr)
TOKEN_ENV = "SHIPYARD_TOKEN"
FEEDBACK_SECRET_ENV = "SHIPYARD_FEEDBACK_SECRET"
SECRETS = {"token": TOKEN_ENV, "feedback_secret": FEEDBACK_SECRET_ENV}
HTTP_SERVERS = ("granian", "uvicorn")
_BATCH = BatchConfig()
_LOG = LogConfig()
_MONITOR = MonitorConfig()


@dataclass(frozen=True)
class ServeConfig:
    """What `shipyard serve` and `create_app` take. Times are seconds unless the name says ms."""

    models: tuple[str, ...] = ()  # NAME, NAME@ALIAS or NAME@VERSION; empty: every production alias
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    http: str = "granian"
    threads: int = 1  # ONNX Runtime threads per model
    max_body_mb: float = 8.0
    auth_inference: bool = False  # the bearer token for inference and feedback too
    # batching (serve/batching.py)
    max_batch_size: int = _BATCH.max_batch_size
    max_delay_ms: float = _BATCH.max_delay_ms
    max_queue: int = _BATCH.max_queue
    timeout_ms: float = _BATCH.timeout_ms
    concurrency: int = _BATCH.concurrency
    latency_target_ms: float | None = _BATCH.latency_target_ms
    unbatched_if_variant: bool = _BATCH.unbatched_if_variant  # serve batch-variant versions unbatched, not refuse
    # following the registry (serve/follow.py)
    poll_s: float = 2.0
    notify: bool = True
    # shutting down (serve/supervisor.py)
    drain_timeout_s: float = 30.0
    drain_grace_s: float = 2.0
    drain_file: str | None = None  # set by the supervisor: its existence tells every worker to drain
    # monitoring
    metrics: bool = True
    log: bool = _LOG.enabled
    log_sample: float = _LOG.sample
    log_ring: int = _LOG.ring
    log_retention_days: float = _LOG.retention_days
    log_max_bytes: int = _LOG.max_bytes  # the log's size budget; 0: 10% of the free disk, 64 MiB..20 GiB
    feedback_horizon_h: float = 168.0
    evaluate: bool = True
    window: int = _MONITOR.window
    window_max_age_s: float = _MONITOR.max_age_s
    alerts: str | None = None  # a TOML file of alert rules; None: the default rules
    # who may ask what (README: Security model)
    allowed_origins: tuple[str, ...] = ()  # browser origins that may call routes that change state
    allowed_hosts: tuple[str, ...] = ()  # Host names a loopback-bound server answers besides loopback ones
    # slow and abusive clients (README: Security model)
    body_timeout_s: float = 10.0  # the whole request body must arrive within this, else 408
    header_timeout_s: float = 10.0  # request line and headers, and a keep-alive's idle time (granian)
    max_connections: int = 4096  # open connections per worker, idle keep-alives included (granian backpressure)
    per_client_limit: int = 128  # requests in flight per client address and worker, else 429 (0: no limit)
    trusted_proxies: tuple[str, ...] = ()  # addresses or CIDRs whose X-Forwarded-For names the client
    token: str | None = field(default=None, repr=False)  # bearer token: management, and inference when asked
    feedback_secret: str | None = field(default=None, repr=False)  # set: labels must carry the answer's proof

    # -- derived ------------------------------------------------------------------------------
    @property
    def max_body(self) -> int:
        return int(self.max_body_mb * (1 << 20))

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def management(self) -> bool:
        """Management routes need the token, or a server only this host can reach."""
        return self.token is not None or self.loopback

    @property
    def batching(self) -> BatchConfig:
        return BatchConfig(self.max_batch_size, self.max_delay_ms, self.max_queue, self.timeout_ms,
                           self.concurrency, self.latency_target_ms, self.unbatched_if_variant)

    @property
    def log_config(self) -> LogConfig:
        return LogConfig(enabled=self.log, sample=self.log_sample, ring=self.log_ring,
                         retention_days=self.log_retention_days, max_bytes=self.log_max_bytes,
                         horizon_s=self.feedback_horizon_s)

    @property
    def monitor(self) -> MonitorConfig:
        # a window smaller than the default least window is tested only when full
        return MonitorConfig(window=self.window, max_age_s=self.window_max_age_s,
                             min_window=min(_MONITOR.min_window, self.window))

    @property
    def feedback_horizon_s(self) -> float:
        return self.feedback_horizon_h * 3600

    # -- checking -----------------------------------------------------------------------------
    def checked(self) -> ServeConfig:
        """This config if every knob is valid; else one `UsageError` listing every problem."""
        problems: list[str] = []

        def need(ok: bool, message: str) -> None:
            if not ok:
                problems.append(message)

        need(self.http in HTTP_SERVERS, f"http must be granian or uvicorn, got {self.http!r}")
        need(0 <= self.port <= 65535, f"port must be in 0..65535, got {self.port}")
        if (bad_host := _host_problem(self.host)) is not None:
            problems.append(bad_host)
        need(self.workers >= 1, f"workers must be ≥ 1, got {self.workers}")
        need(self.threads >= 1, f"threads must be ≥ 1, got {self.threads}")
        need(math.isfinite(self.max_body_mb) and self.max_body_mb > 0,
             f"max_body_mb must be > 0, got {self.max_body_mb:g}")
        for knob in ("poll_s", "drain_timeout_s", "drain_grace_s"):
            value = getattr(self, knob)
            need(math.isfinite(value) and value >= 0, f"{knob} must be ≥ 0, got {value:g}")
        need(0 <= self.log_sample <= 1, f"log_sample must be in 0..1, got {self.log_sample:g}")
        need(self.log_ring >= 0, f"log_ring must be ≥ 0, got {self.log_ring}")
        need(self.log_max_bytes >= 0, f"log_max_bytes must be ≥ 0 (0: derived from the disk), got {self.log_max_bytes}")
        need(self.log_retention_days > 0, f"log_retention_days must be > 0, got {self.log_retention_days:g}")
        need(self.feedback_horizon_h > 0, f"feedback_horizon_h must be > 0, got {self.feedback_horizon_h:g}")
        # a label is checked against the log's request ids: they must outlive the horizon
        need(self.feedback_horizon_h <= self.log_retention_days * 24,
             f"feedback_horizon_h ({self.feedback_horizon_h:g}) must not outlast the prediction log's retention "
             f"(log_retention_days {self.log_retention_days:g} = {self.log_retention_days * 24:g} h)")
        need(self.window_max_age_s > 0, f"window_max_age_s must be > 0, got {self.window_max_age_s:g}")
        need(not self.auth_inference or self.token is not None,
             f"auth_inference needs {TOKEN_ENV} to be set")
        for origin in self.allowed_origins:
            need(origin == origin.lower().rstrip("/") and "://" in origin,
                 f"allowed_origins: {origin!r} is not an origin like https://example.com (scheme://host[:port])")
        need(math.isfinite(self.body_timeout_s) and self.body_timeout_s > 0,
             f"body_timeout_s must be > 0, got {self.body_timeout_s:g}")
        need(0.001 <= self.header_timeout_s <= 60,  # granian takes 1..60000 ms
             f"header_timeout_s must be in 0.001..60, got {self.header_timeout_s:g}")
        need(self.max_connections >= 1, f"max_connections must be ≥ 1, got {self.max_connections}")
        need(self.per_client_limit >= 0, f"per_client_limit must be ≥ 0 (0: no limit), got {self.per_client_limit}")
        for proxy in self.trusted_proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                problems.append(f"trusted_proxies: {proxy!r} is not an IP address or CIDR network")
        for env, value in ((TOKEN_ENV, self.token), (FEEDBACK_SECRET_ENV, self.feedback_secret)):
            # the placeholder `export k8s` writes: a server must not start with a well-known secret
            need(value is None or "CHANGE-ME" not in value, f"{env} is still the placeholder CHANGE-ME: set it")
        if self.feedback_secret is not None:
            need(len(self.feedback_secret) >= 16, f"{FEEDBACK_SECRET_ENV} must be at least 16 characters")
        for check in (self.batching.checked, self.monitor.check):
            try:
                check()
            except UsageError as e:
                problems.append(str(e))
        if problems:
            raise UsageError("; ".join(problems))
        return self

    # -- the trip to the workers --------------------------------------------------------------
    def to_env(self) -> dict[str, str]:
        """The variables a worker process rebuilds this config from (the token under its own name)."""
        env: dict[str, str] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in SECRETS:
                if value is not None:
                    env[SECRETS[f.name]] = value
                continue
            env[ENV_PREFIX + f.name.upper()] = _encode(value)
        return env

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServeConfig:
        """The config `to_env` wrote (a missing variable takes its default), checked."""
        env = os.environ if env is None else env
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            key = SECRETS.get(f.name) or ENV_PREFIX + f.name.upper()
            if key in env:
                try:
                    values[f.name] = _decode(env[key], hints[f.name])
                except ValueError:
                    raise UsageError(f"{key}={env[key]!r} is not a valid {f.name}") from None
        return cls(**values).checked()



def _encode(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, Path):
        return str(value.resolve())
    return str(value)


def _decode(text: str, hint: Any) -> Any:
    optional = isinstance(hint, types.UnionType) and type(None) in hint.__args__
    if optional:
        if text == "":
            return None
        hint = next(a for a in hint.__args__ if a is not type(None))
    if hint is bool:
        if text not in ("0", "1"):
            raise ValueError(text)
        return text == "1"
    if typing.get_origin(hint) is tuple:
        return tuple(s for s in text.split(",") if s)
    return hint(text)


def _host_problem(host: str) -> str | None:
    """Why `host` is no address to listen on (None if it is): an IP address written in full, or
    a name that resolves. Shorthands like 127.1 are refused: the HTTP server cannot bind them."""
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    if host.replace(".", "").isdigit():
        return f"host {host!r} is not a full IP address (write e.g. 127.0.0.1)"
    try:
        socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        return f"host {host!r} is neither an IP address nor a name that resolves"
    return None
