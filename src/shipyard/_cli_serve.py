"""`shipyard serve`: run the inference server (V2 and v1 REST) over the registry."""

from __future__ import annotations

import ipaddress
import os
import shutil
import sys
from typing import Annotated

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
) -> None:
    """Serve registered models over the V2 Open Inference Protocol (REST) and v1 :predict.

    Management routes (repository load/unload) need `Authorization: Bearer $SHIPYARD_TOKEN` when
    SHIPYARD_TOKEN is set; without a token they are served on loopback addresses only."""
    from shipyard.cli import settings

    with reporting(False):
        if http not in ("granian", "uvicorn"):
            raise UsageError(f"--http {http!r}: choose granian or uvicorn")
        if workers < 1 or threads < 1 or port < 0 or max_body_mb <= 0:
            raise UsageError("--workers and --threads must be ≥ 1, --port ≥ 0, --max-body-mb > 0")
        token = os.environ.get("SHIPYARD_TOKEN") or None
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if auth_inference and not token:
            raise UsageError("--auth-inference needs SHIPYARD_TOKEN to be set")
        s = settings()
        os.environ.update({
            "SHIPYARD_HOME": str(s.home.resolve()), "SHIPYARD_SERVE_MODELS": ",".join(models or []),
            "SHIPYARD_SERVE_THREADS": str(threads), "SHIPYARD_SERVE_MAX_BODY": str(int(max_body_mb * (1 << 20))),
            "SHIPYARD_SERVE_AUTH_INFERENCE": "1" if auth_inference else "0",
            "SHIPYARD_SERVE_MANAGEMENT": "1" if (token or loopback) else "0",
        })
        if s.database_url:
            os.environ["SHIPYARD_DATABASE_URL"] = s.database_url
        if not token and not loopback:
            err.print("management routes are off: no SHIPYARD_TOKEN and not a loopback address")
        err.print(f"serving on http://{host}:{port} with {http}, {workers} worker(s), "
                  f"{threads} ORT thread(s) per model")
        target = "shipyard.serve.app:app_from_env"
        if http == "granian":
            exe = shutil.which("granian", path=os.pathsep.join([os.path.dirname(sys.executable),
                                                                os.environ.get("PATH", "")]))
            if exe is None:
                raise UsageError("granian is not installed: pip install granian, or use --http uvicorn")
            os.execv(exe, [exe, "--interface", "asgi", "--factory", "--host", host, "--port", str(port),
                           "--workers", str(workers), "--log-level", "warning", "--no-ws", target])
        import uvicorn

        uvicorn.run(target, factory=True, host=host, port=port, workers=workers, log_level="warning",
                    access_log=False, lifespan="on")
