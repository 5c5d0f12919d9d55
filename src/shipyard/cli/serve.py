"""`shipyard serve`: run the inference server (V2 and v1 REST) over the registry. The options map
one to one onto `ServeConfig`, which holds every default and every check."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from shipyard.cli._common import err, reporting, settings
from shipyard.errors import UsageError
from shipyard.monitor.config import parse_size
from shipyard.serve.config import FEEDBACK_SECRET_ENV, TOKEN_ENV, ServeConfig
from shipyard.settings import Settings

if TYPE_CHECKING:
    from shipyard.monitor.alert_rules import AlertConfig
    from shipyard.monitor.evaluator import Evaluator

_D = ServeConfig()



# The prediction log's projection is one small matmul per flush: BLAS's own threads (numpy's
# OpenBLAS starts one per core) spin beside the event loop and cost a third of a worker's CPU at
# c=64 for no gain (measured: 128 → 94 µs of CPU per request in-process).
BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")

def serve(
    models: Annotated[list[str] | None, typer.Argument(help="NAME (its production alias), NAME@ALIAS or NAME@VERSION; none: every model with a production alias.")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = _D.host,
    port: Annotated[int, typer.Option(help="Port.")] = _D.port,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = _D.workers,
    threads: Annotated[int, typer.Option(help="ONNX Runtime threads per model.")] = _D.threads,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body, MiB (413 above).")] = _D.max_body_mb,
    auth_inference: Annotated[bool, typer.Option("--auth-inference", help="Require the bearer token for inference too.")] = _D.auth_inference,
    http: Annotated[str, typer.Option(help="HTTP server: granian (fastest, see benchmarks/serve_bench.py) or uvicorn.")] = _D.http,
    max_batch_size: Annotated[int, typer.Option(help="Instances per model call; 1 turns batching off.")] = _D.max_batch_size,
    max_delay_ms: Annotated[float, typer.Option(help="How long a batch may wait for company (0: batch what is waiting, no added latency).")] = _D.max_delay_ms,
    max_queue: Annotated[int, typer.Option(help="Instances waiting per model version; beyond it 503 + Retry-After.")] = _D.max_queue,
    timeout_ms: Annotated[float, typer.Option(help="Per-request deadline in the queue; past it 504 and the work is dropped.")] = _D.timeout_ms,
    concurrency: Annotated[int, typer.Option(help="Requests each worker handles at once; beyond it 503 + Retry-After, before the body is read (health stays open).")] = _D.concurrency,
    latency_target_ms: Annotated[float | None, typer.Option(help="Adapt the batch delay online to hold p99 under this many ms at the highest throughput it can (--max-delay-ms caps the delay).")] = _D.latency_target_ms,
    unbatched_if_variant: Annotated[bool, typer.Option("--unbatched-if-variant", help="Serve a model version whose answers depend on their batch-mates (e.g. int8-dynamic) unbatched; without it such a version is refused (at start-up, or when an alias moves to it).")] = _D.unbatched_if_variant,
    poll_s: Annotated[float, typer.Option(help="How often to look for alias moves and traffic changes in the registry, seconds (0: only on notifications and POST /v2/repository/refresh).")] = _D.poll_s,
    notify: Annotated[bool, typer.Option("--notify/--no-notify", help="On PostgreSQL, follow registry changes at once through LISTEN/NOTIFY (polling stays as the fallback).")] = _D.notify,
    drain_timeout: Annotated[float, typer.Option(help="On SIGTERM, how long queued and in-flight requests may take to finish, seconds.")] = _D.drain_timeout_s,
    metrics: Annotated[bool, typer.Option("--metrics/--no-metrics", help="Prometheus metrics at /metrics.")] = _D.metrics,
    log: Annotated[bool, typer.Option("--log/--no-log", help="Keep the prediction log (needed for feedback, drift and retraining).")] = _D.log,
    log_sample: Annotated[float, typer.Option(help="Share of requests whose full input is kept until retention (0..1).")] = _D.log_sample,
    log_ring: Annotated[int, typer.Option(help="Full inputs of the most recent requests kept per model, besides the sample.")] = _D.log_ring,
    log_retention_days: Annotated[float, typer.Option(help="Prediction log rows older than this are removed.")] = _D.log_retention_days,
    log_max_bytes: Annotated[str, typer.Option(help="Size budget of the prediction log in the database (e.g. 500M, 20G); over it, unlabelled and then the oldest sampled inputs go first, predictions past the feedback horizon next. 0: 10% of the free disk at start, 64 MiB to 20 GiB (20 GiB on PostgreSQL).")] = str(_D.log_max_bytes),
    feedback_horizon_h: Annotated[float, typer.Option(help="Labels for predictions older than this are refused as late.")] = _D.feedback_horizon_h,
    drain_grace: Annotated[float, typer.Option(help="On SIGTERM, how long to keep serving with readiness 503 so load balancers stop sending, seconds (Ctrl-C skips it).")] = _D.drain_grace_s,
    evaluate: Annotated[bool, typer.Option("--evaluate/--no-evaluate", help="Run the drift evaluator in the server (one worker per model computes, by lease); off: run `shipyard monitor run` elsewhere.")] = _D.evaluate,
    window: Annotated[int, typer.Option(help="Predictions per drift window.")] = _D.window,
    window_max_age_s: Annotated[float, typer.Option(help="A window not full after this many seconds is tested with what it has (at least 50 predictions, or the whole window when it is smaller).")] = _D.window_max_age_s,
    alerts: Annotated[Path | None, typer.Option(help="Alert rules (TOML; see `shipyard monitor rules --example`). Default: drift in 2 windows, estimated accuracy 10 points under validation, server errors over 5%.")] = None,
    allowed_origin: Annotated[list[str] | None, typer.Option(help="A browser origin (scheme://host[:port]) allowed to call the routes that change state (traffic, repository, feedback); repeatable. Default: none, so a web page cannot.")] = None,
    allowed_host: Annotated[list[str] | None, typer.Option(help="A Host name a loopback-bound server answers besides localhost and loopback addresses (DNS rebinding guard); repeatable.")] = None,
    body_timeout: Annotated[float, typer.Option(help="Seconds a client has to send a whole request body; past it 408 and the connection is closed.")] = _D.body_timeout_s,
    header_timeout: Annotated[float, typer.Option(help="Seconds a client has to send its request line and headers; also how long an idle keep-alive connection is kept (granian; at most 60).")] = _D.header_timeout_s,
    max_connections: Annotated[int, typer.Option(help="Open connections per worker, idle keep-alives included (granian's backpressure, uvicorn's --limit-concurrency); beyond it granian leaves new connections in the listen backlog, uvicorn answers 503.")] = _D.max_connections,
    per_client_limit: Annotated[int, typer.Option(help="Requests in flight per client address and worker; beyond it 429 + Retry-After, before the body is read (0: no limit). Behind a load balancer, set --trusted-proxy.")] = _D.per_client_limit,
    trusted_proxy: Annotated[list[str] | None, typer.Option(help="Address or CIDR of a proxy or load balancer whose X-Forwarded-For names the client (for --per-client-limit); repeatable. Default: none, so X-Forwarded-For is ignored.")] = None,
) -> None:
    """Serve registered models over the V2 Open Inference Protocol (REST) and v1 :predict.

    Management routes (repository, traffic) need `Authorization: Bearer $SHIPYARD_TOKEN` when
    SHIPYARD_TOKEN is set; without a token they are served on loopback addresses only.
    --auth-inference closes inference, feedback, metadata, metrics and the dashboard too (health
    stays open for balancers). Routes that change state refuse cross-site requests and non-JSON
    bodies. With SHIPYARD_FEEDBACK_SECRET set, each answer carries an X-Feedback-Token header and
    a label is taken only with the token of its answer."""
    with reporting(False):
        s = settings()
        config = ServeConfig(
            models=tuple(models or ()), host=host, port=port, workers=workers, http=http, threads=threads,
            max_body_mb=max_body_mb, auth_inference=auth_inference, max_batch_size=max_batch_size,
            max_delay_ms=max_delay_ms, max_queue=max_queue, timeout_ms=timeout_ms, concurrency=concurrency,
            latency_target_ms=latency_target_ms, poll_s=poll_s, notify=notify, drain_timeout_s=drain_timeout,
            unbatched_if_variant=unbatched_if_variant,
            drain_grace_s=drain_grace, metrics=metrics, log=log, log_sample=log_sample, log_ring=log_ring,
            log_retention_days=log_retention_days, log_max_bytes=parse_size(log_max_bytes),
            feedback_horizon_h=feedback_horizon_h, evaluate=evaluate,
            window=window, window_max_age_s=window_max_age_s,
            alerts=str(alerts.resolve()) if alerts is not None else None,
            allowed_origins=tuple(o.lower().rstrip("/") for o in allowed_origin or ()),
            allowed_hosts=tuple(h.lower() for h in allowed_host or ()),
            body_timeout_s=body_timeout, header_timeout_s=header_timeout, max_connections=max_connections,
            per_client_limit=per_client_limit, trusted_proxies=tuple(trusted_proxy or ()),
            token=os.environ.get(TOKEN_ENV) or None,
            feedback_secret=os.environ.get(FEEDBACK_SECRET_ENV) or None).checked()
        rc = run(config, s)
    raise typer.Exit(rc)


def run(config: ServeConfig, s: Settings) -> int:
    """Start the HTTP server's workers under the supervisor (and the drift evaluator here, in the
    supervisor, so a worker stays small: no scipy, and its CPU goes to requests)."""
    # every process of this server (the workers, and the evaluator here) writes its metrics to
    # one folder; /metrics on any worker merges them all. prometheus-client reads the variable
    # when first imported, so it is set before anything imports it.
    metrics_dir = s.home.resolve() / "run" / f"metrics-{os.getpid()}"
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    shutil.rmtree(metrics_dir, ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    try:
        from shipyard.monitor.alert_rules import DEFAULT_RULES
        from shipyard.monitor.alert_rules import load as load_alerts
        from shipyard.serve.supervisor import drain_file_for, supervise

        # a bad rules file stops here with a message naming the key
        alert_rules = load_alerts(config.alerts) if config.alerts is not None else DEFAULT_RULES

        drain_file = drain_file_for(s.home.resolve(), os.getpid())
        workers = dataclasses.replace(config, evaluate=False, drain_file=str(drain_file))
        env = {**os.environ, **workers.to_env(), "SHIPYARD_HOME": str(s.home.resolve())}
        for var in BLAS_THREADS:  # one BLAS thread per worker unless the operator says otherwise
            env.setdefault(var, "1")
        if s.database_url:
            env["SHIPYARD_DATABASE_URL"] = s.database_url
        if not config.management:
            err.print("management routes are off: no SHIPYARD_TOKEN and not a loopback address")
        b = config.batching
        err.print(f"serving on http://{config.host}:{config.port} with {config.http}, {config.workers} worker(s), "
                  f"{config.threads} ORT thread(s) per model; batching "
                  + (f"up to {b.max_batch_size} instances, {b.max_delay_ms:g} ms delay" if b.enabled else "off")
                  + f", queue {b.max_queue}, timeout {b.timeout_ms:g} ms"
                  + (f", latency target {b.latency_target_ms:g} ms" if b.latency_target_ms else ""))
        _open_files(config.max_connections)
        cmd = _command(config)
        evaluator = None
        try:
            if config.evaluate and config.log:
                import logging

                logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
                evaluator = _evaluator(s, config, alert_rules)
                evaluator.start()
            return supervise(cmd, env, drain_file, grace_s=config.drain_grace_s,
                             drain_timeout_s=config.drain_timeout_s, workers=config.workers)
        finally:
            if evaluator is not None:
                evaluator.stop()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _command(config: ServeConfig) -> list[str]:
    """The HTTP server's command line: its workers build the app with `app_from_env`."""
    target = "shipyard.serve.app:app_from_env"
    host, port, workers = config.host, str(config.port), str(config.workers)
    if config.http == "granian":
        exe = shutil.which("granian", path=os.pathsep.join([os.path.dirname(sys.executable),
                                                            os.environ.get("PATH", "")]))
        if exe is None:
            raise UsageError("granian is not installed: pip install granian, or use --http uvicorn")
        return [exe, "--interface", "rsgi", "--factory", "--host", host, "--port", port, "--workers", workers,
                "--log-level", "warning", "--no-ws",
                # per connection, idle keep-alives included (measured on granian 2.8): the connection cap
                "--backpressure", str(config.max_connections),
                "--http1-header-read-timeout", str(max(1, round(config.header_timeout_s * 1000))),
                "--respawn-failed-workers",  # a dead worker is replaced; the supervisor restarts the rest
                "--workers-kill-timeout", f"{config.drain_timeout_s + 5:g}", target]
    return [sys.executable, "-m", "uvicorn", "--factory", target, "--host", host, "--port", port,
            "--workers", workers, "--log-level", "warning", "--no-access-log", "--lifespan", "on",
            "--limit-concurrency", str(config.max_connections),
            "--no-proxy-headers",  # the client is ours to tell (--trusted-proxy), not uvicorn's from 127.0.0.1
            "--timeout-graceful-shutdown", str(int(config.drain_timeout_s) + 1)]


def _open_files(connections: int) -> None:
    """Raise this process's open-file limit (the workers inherit it) so each worker can hold
    `connections` sockets besides its files: a soft limit of 1024 is common, and a worker out of
    descriptors stops accepting."""
    try:
        import resource
    except ImportError:  # not on Unix
        return
    want = connections + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        if soft < want:
            err.print(f"the open-file limit ({soft}) is under --max-connections ({connections}) + 1024: "
                      "raise it (ulimit -n) or lower --max-connections")


def _evaluator(settings: Settings, config: ServeConfig, alerts: AlertConfig) -> Evaluator:
    """The drift evaluator for what this server serves, run in the supervisor process (the lease
    still decides which server, when several share the registry, computes)."""
    import time

    from shipyard.monitor.evaluator import Evaluator
    from shipyard.registry import Registry

    reg = Registry(settings=settings)
    named = sorted({spec.split("@", 1)[0] for spec in config.models})
    cache: dict[str, Any] = {"at": 0.0, "names": named}

    def names() -> list[str]:
        if named:
            return named
        if time.monotonic() - cache["at"] > 10:  # no names: every model with a production alias
            cache["names"] = reg.model_names(alias="production")
            cache["at"] = time.monotonic()
        return list(cache["names"])

    return Evaluator(reg, names, config.monitor, alerts=alerts)
