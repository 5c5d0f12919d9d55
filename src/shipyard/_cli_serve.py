"""`shipyard serve`: run the inference server (V2 and v1 REST) over the registry."""

from __future__ import annotations

import ipaddress
import os
import shutil
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from shipyard._output import err, reporting
from shipyard.errors import UsageError


def serve(
    models: Annotated[list[str] | None, typer.Argument(help="NAME (its production alias), NAME@ALIAS or NAME@VERSION; none: every model with a production alias.")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
    threads: Annotated[int, typer.Option(help="ONNX Runtime threads per model.")] = 1,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body, MiB (413 above).")] = 8.0,
    auth_inference: Annotated[bool, typer.Option("--auth-inference", help="Require the bearer token for inference too.")] = False,
    http: Annotated[str, typer.Option(help="HTTP server: granian (fastest, see benchmarks/serve_bench.py) or uvicorn.")] = "granian",
    max_batch_size: Annotated[int, typer.Option(help="Instances per model call; 1 turns batching off.")] = 64,
    max_delay_ms: Annotated[float, typer.Option(help="How long a batch may wait for company (0: batch what is waiting, no added latency).")] = 0.0,
    max_queue: Annotated[int, typer.Option(help="Instances waiting per model version; beyond it 503 + Retry-After.")] = 1024,
    timeout_ms: Annotated[float, typer.Option(help="Per-request deadline in the queue; past it 504 and the work is dropped.")] = 10_000.0,
    concurrency: Annotated[int, typer.Option(help="Requests each worker admits at once (the HTTP server's backpressure).")] = 1024,
    latency_target_ms: Annotated[float | None, typer.Option(help="Adapt the batch delay online to hold p99 under this many ms at the highest throughput it can (--max-delay-ms caps the delay).")] = None,
    poll_s: Annotated[float, typer.Option(help="How often to look for alias moves and traffic changes in the registry, seconds (0: only on notifications and POST /v2/repository/refresh).")] = 2.0,
    notify: Annotated[bool, typer.Option("--notify/--no-notify", help="On PostgreSQL, follow registry changes at once through LISTEN/NOTIFY (polling stays as the fallback).")] = True,
    drain_timeout: Annotated[float, typer.Option(help="On SIGTERM, how long queued and in-flight requests may take to finish, seconds.")] = 30.0,
    metrics: Annotated[bool, typer.Option("--metrics/--no-metrics", help="Prometheus metrics at /metrics.")] = True,
    log: Annotated[bool, typer.Option("--log/--no-log", help="Keep the prediction log (needed for feedback, drift and retraining).")] = True,
    log_sample: Annotated[float, typer.Option(help="Share of requests whose full input is kept until retention (0..1).")] = 0.1,
    log_ring: Annotated[int, typer.Option(help="Full inputs of the most recent requests kept per model, besides the sample.")] = 50_000,
    log_retention_days: Annotated[float, typer.Option(help="Prediction log rows older than this are removed.")] = 30.0,
    feedback_horizon_h: Annotated[float, typer.Option(help="Labels for predictions older than this are refused as late.")] = 168.0,
    drain_grace: Annotated[float, typer.Option(help="On SIGTERM, how long to keep serving with readiness 503 so load balancers stop sending, seconds (Ctrl-C skips it).")] = 2.0,
    evaluate: Annotated[bool, typer.Option("--evaluate/--no-evaluate", help="Run the drift evaluator in the server (one worker per model computes, by lease); off: run `shipyard monitor run` elsewhere.")] = True,
    window: Annotated[int, typer.Option(help="Predictions per drift window.")] = 250,
    window_max_age_s: Annotated[float, typer.Option(help="A window not full after this many seconds is tested with what it has (at least 50).")] = 300.0,
    alerts: Annotated[Path | None, typer.Option(help="Alert rules (TOML; see `shipyard monitor rules --example`). Default: drift in 2 windows, estimated accuracy 10 points under validation, server errors over 5%.")] = None,
) -> None:
    """Serve registered models over the V2 Open Inference Protocol (REST) and v1 :predict.

    Management routes (repository load/unload) need `Authorization: Bearer $SHIPYARD_TOKEN` when
    SHIPYARD_TOKEN is set; without a token they are served on loopback addresses only."""
    from shipyard.cli import settings

    with reporting(False):
        s = settings()
        # every process of this server (the workers, and the evaluator here) writes its metrics to
        # one folder; /metrics on any worker merges them all. prometheus-client reads the variable
        # when first imported, so it is set before anything imports it.
        metrics_dir = s.home.resolve() / "run" / f"metrics-{os.getpid()}"
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        try:
            if http not in ("granian", "uvicorn"):
                raise UsageError(f"--http {http!r}: choose granian or uvicorn")
            if workers < 1 or threads < 1 or port < 0 or max_body_mb <= 0:
                raise UsageError("--workers and --threads must be ≥ 1, --port ≥ 0, --max-body-mb > 0")
            from shipyard.serve.batching import BatchConfig

            batching = BatchConfig(max_batch_size, max_delay_ms, max_queue, timeout_ms, concurrency,
                                   latency_target_ms).checked()
            if poll_s < 0 or drain_timeout < 0 or drain_grace < 0:
                raise UsageError("--poll-s, --drain-timeout and --drain-grace must be ≥ 0")
            if not 0 <= log_sample <= 1 or log_ring < 0 or log_retention_days <= 0 or feedback_horizon_h <= 0:
                raise UsageError("--log-sample must be in 0..1, --log-ring ≥ 0, --log-retention-days and "
                                 "--feedback-horizon-h > 0")
            if window < 50 or window_max_age_s <= 0:
                raise UsageError("--window must be ≥ 50 and --window-max-age-s > 0")
            from shipyard.monitor.alerts import DEFAULT_RULES
            from shipyard.monitor.alerts import load as load_alerts

            # a bad file stops here with a message naming the key
            alert_rules = load_alerts(alerts) if alerts is not None else DEFAULT_RULES
            token = os.environ.get("SHIPYARD_TOKEN") or None
            try:
                loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
            except ValueError:
                loopback = False
            if auth_inference and not token:
                raise UsageError("--auth-inference needs SHIPYARD_TOKEN to be set")
            os.environ.update({
                "SHIPYARD_HOME": str(s.home.resolve()), "SHIPYARD_SERVE_MODELS": ",".join(models or []),
                "SHIPYARD_SERVE_THREADS": str(threads), "SHIPYARD_SERVE_MAX_BODY": str(int(max_body_mb * (1 << 20))),
                "SHIPYARD_SERVE_AUTH_INFERENCE": "1" if auth_inference else "0",
                "SHIPYARD_SERVE_MANAGEMENT": "1" if (token or loopback) else "0",
                "SHIPYARD_SERVE_MAX_BATCH_SIZE": str(batching.max_batch_size),
                "SHIPYARD_SERVE_MAX_DELAY_MS": str(batching.max_delay_ms),
                "SHIPYARD_SERVE_MAX_QUEUE": str(batching.max_queue),
                "SHIPYARD_SERVE_TIMEOUT_MS": str(batching.timeout_ms),
                "SHIPYARD_SERVE_CONCURRENCY": str(batching.concurrency),
                "SHIPYARD_SERVE_LATENCY_TARGET_MS": "" if latency_target_ms is None else str(latency_target_ms),
                "SHIPYARD_SERVE_POLL_S": str(poll_s), "SHIPYARD_SERVE_DRAIN_TIMEOUT_S": str(drain_timeout),
            "SHIPYARD_SERVE_NOTIFY": "1" if notify else "0",
                "SHIPYARD_SERVE_LOG": "1" if log else "0", "SHIPYARD_SERVE_METRICS": "1" if metrics else "0", "SHIPYARD_SERVE_LOG_SAMPLE": str(log_sample),
                "SHIPYARD_SERVE_LOG_RING": str(log_ring), "SHIPYARD_SERVE_LOG_RETENTION_DAYS": str(log_retention_days),
                "SHIPYARD_SERVE_FEEDBACK_HORIZON_H": str(feedback_horizon_h),
                # drift is evaluated here, in the supervisor, not in the workers: a worker stays small
                # (no scipy) and its CPU goes to requests
                "SHIPYARD_SERVE_EVALUATE": "0", "SHIPYARD_SERVE_WINDOW": str(window),
                "SHIPYARD_SERVE_WINDOW_MAX_AGE_S": str(window_max_age_s),
                "SHIPYARD_SERVE_ALERTS": str(alerts.resolve()) if alerts else "",
            })
            if s.database_url:
                os.environ["SHIPYARD_DATABASE_URL"] = s.database_url
            if not token and not loopback:
                err.print("management routes are off: no SHIPYARD_TOKEN and not a loopback address")
            err.print(f"serving on http://{host}:{port} with {http}, {workers} worker(s), "
                      f"{threads} ORT thread(s) per model; batching "
                      + (f"up to {batching.max_batch_size} instances, {batching.max_delay_ms:g} ms delay"
                         if batching.enabled else "off")
                      + f", queue {batching.max_queue}, timeout {batching.timeout_ms:g} ms"
                      + (f", latency target {latency_target_ms:g} ms" if latency_target_ms else ""))
            target = "shipyard.serve.app:app_from_env"
            if http == "granian":
                exe = shutil.which("granian", path=os.pathsep.join([os.path.dirname(sys.executable),
                                                                    os.environ.get("PATH", "")]))
                if exe is None:
                    raise UsageError("granian is not installed: pip install granian, or use --http uvicorn")
                cmd = [exe, "--interface", "asgi", "--factory", "--host", host, "--port", str(port),
                       "--workers", str(workers), "--log-level", "warning", "--no-ws",
                       "--backpressure", str(concurrency), "--workers-kill-timeout", f"{drain_timeout + 5:g}", target]
            else:
                cmd = [sys.executable, "-m", "uvicorn", "--factory", target, "--host", host, "--port", str(port),
                       "--workers", str(workers), "--log-level", "warning", "--no-access-log", "--lifespan", "on",
                       "--limit-concurrency", str(concurrency), "--timeout-graceful-shutdown", str(int(drain_timeout) + 1)]
            from shipyard.serve.supervisor import drain_file_for, supervise

            drain_file = drain_file_for(s.home.resolve(), os.getpid())
            os.environ["SHIPYARD_SERVE_DRAIN_FILE"] = str(drain_file)
            evaluator = None
            try:
                if evaluate and log:
                    import logging

                    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
                    evaluator = _evaluator(s, models or [], window, window_max_age_s, alert_rules)
                    evaluator.start()
                rc = supervise(cmd, dict(os.environ), drain_file, grace_s=drain_grace, drain_timeout_s=drain_timeout)
            finally:
                if evaluator is not None:
                    evaluator.stop()
        finally:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    raise typer.Exit(rc)


def _evaluator(settings: Any, specs: list[str], window: int, max_age_s: float, alerts: Any) -> Any:
    """The drift evaluator for what this server serves, run in the supervisor process (the lease
    still decides which server, when several share the registry, computes)."""
    import time

    from shipyard.monitor.evaluator import Evaluator, MonitorConfig
    from shipyard.registry import Registry

    reg = Registry(settings=settings)
    named = sorted({spec.split("@", 1)[0] for spec in specs})
    cache: dict[str, Any] = {"at": 0.0, "names": named}

    def names() -> list[str]:
        if named:
            return named
        if time.monotonic() - cache["at"] > 10:  # no names: every model with a production alias
            cache["names"] = [m.name for m in reg.list() if "production" in m.aliases]
            cache["at"] = time.monotonic()
        return list(cache["names"])

    return Evaluator(reg, names, MonitorConfig(window=window, max_age_s=max_age_s), alerts=alerts)
