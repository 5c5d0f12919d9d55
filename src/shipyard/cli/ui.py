"""`shipyard ui`: the web UI over the project's database and artifact store — runs, models,
deployments and monitoring, and the actions behind the token. Its own process (uvicorn), apart
from the servers."""

from __future__ import annotations

import os
import secrets
from typing import Annotated

import typer

from shipyard.cli._common import err, reporting, settings
from shipyard.serve.config import TOKEN_ENV


def ui(
    host: Annotated[str, typer.Option(help="Address to listen on (loopback by default: the UI is for this machine).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8800,
    auth: Annotated[bool, typer.Option("--auth", help="Ask for the token on every page, not only for actions.")] = False,
    allow_host: Annotated[list[str] | None, typer.Option("--allow-host", help="Another host name this UI answers to (behind a proxy); loopback always.")] = None,
) -> None:
    """Serve the web UI: /, /runs, /models, /deployments/NAME. Actions (alias moves, traffic,
    rollouts, rollback, alert acknowledgement) need the token in $SHIPYARD_TOKEN, entered once on
    /login; without one, a random token is made and printed for this run."""
    import uvicorn

    from shipyard.registry import Registry
    from shipyard.ui.app import create_app

    with reporting(False):
        if not 0 < port < 65536:
            from shipyard.errors import UsageError

            raise UsageError(f"--port must be 1..65535, got {port}")
        token = os.environ.get(TOKEN_ENV, "")
        if not token:
            token = secrets.token_urlsafe(18)
            err.print(f"no ${TOKEN_ENV}: the token for actions in this run is {token}")
        reg = Registry(settings=settings())
        hosts = {host, *(allow_host or [])}
        app = create_app(reg, token=token, auth=auth, hosts=hosts)
        err.print(f"shipyard ui on http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/ "
                  f"(database {reg.settings.db_url.split('@')[-1]})")
        uvicorn.run(app, host=host, port=port, log_level="warning", proxy_headers=False, server_header=False)
