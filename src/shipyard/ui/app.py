"""`shipyard ui`'s web app (Starlette): the route table, the checks every request passes (the Host
it names, the login that `--auth` asks of readers), the login itself, the static files, and the
mapping of every error to a page with its status. It is its own process, apart from the servers:
it reads the project's database and artifact store (what every server sharing that database
wrote), so serving stays lean."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from shipyard import charts
from shipyard.errors import ShipyardError
from shipyard.registry import Registry
from shipyard.ui import actions, views_deploy, views_models, views_runs
from shipyard.ui.auth import COOKIE, SESSION_S, Gate, Refused
from shipyard.ui.web import SECURITY_HEADERS, Ctx, error_page

STATIC = {"ui.css": "text/css; charset=utf-8", "ui.js": "text/javascript; charset=utf-8"}


def _asset(request: Request) -> Response:
    name = request.path_params["file"]
    if name not in charts.ASSETS:
        raise Refused(404, f"no asset {name!r}")
    body, ctype = charts.asset(name)
    return Response(body, media_type=ctype, headers={"cache-control": "max-age=3600", **SECURITY_HEADERS})


def _static(request: Request) -> Response:
    from importlib import resources

    name = request.path_params["file"]
    if name not in STATIC:
        raise Refused(404, f"no static file {name!r}")
    body = (resources.files("shipyard.ui") / "static" / name).read_bytes()
    return Response(body, media_type=STATIC[name], headers={"cache-control": "max-age=3600", **SECURITY_HEADERS})


def _login_page(request: Request) -> Response:
    return Ctx(request).page("login.html", title="Log in", next=_local(request.query_params.get("next", "/")),
                             error=None)


def _local(path: str) -> str:
    """A `next` to go to after login: a path on this site, never `//host` or a URL."""
    return path if path.startswith("/") and not path.startswith("//") else "/"


async def _login(request: Request) -> Response:
    from shipyard.ui.web import read_form

    form = await read_form(request)
    gate: Gate = request.app.state.gate
    nxt = _local(form.get("next", "/"))
    try:
        session = gate.login(form.get("token", ""))
    except Refused:
        return Ctx(request).page("login.html", status=401, title="Log in", next=nxt, error="wrong token")
    resp = RedirectResponse(nxt, status_code=303)
    resp.set_cookie(COOKIE, session.id, max_age=SESSION_S, httponly=True, samesite="strict", path="/",
                    secure=request.url.scheme == "https")
    return resp


async def _logout(request: Request) -> Response:
    ctx = Ctx(request)
    await ctx.form()
    ctx.gate.logout(request.cookies.get(COOKIE))
    resp = RedirectResponse("/", status_code=303)
    resp.delete_cookie(COOKIE, path="/")
    return resp


def _health(request: Request) -> Response:
    """200 once the caches are warm (`warm`), 503 before: what a script or a proxy waits for."""
    if not request.app.state.ready.is_set():
        return Response("warming up\n", status_code=503, media_type="text/plain", headers={"retry-after": "1"})
    return Response("ok\n", media_type="text/plain")


def warm(app: Starlette) -> None:
    """At start, on a thread: compile the templates and join each model's last week of labels to
    the prediction log (the one scan of the log a deployment page needs; later pages look up only
    new labels), so the first person to open a page does not pay for it."""
    import logging
    import time

    from shipyard.monitor import report
    from shipyard.monitor.api import Monitor
    from shipyard.ui.web import ENV

    try:
        for name in ENV.list_templates():
            ENV.get_template(name)
        reg: Registry = app.state.registry
        for model in reg.model_names():
            report.collect(Monitor(reg), model, since=time.time() - 7 * 86400, maps=False)
    except Exception:  # noqa: BLE001 - a cold cache is slower, not wrong: serve anyway
        logging.getLogger("shipyard.ui").exception("warming the UI's caches failed")
    finally:
        app.state.ready.set()


OPEN_PATHS = ("/login", "/assets/", "/static/", "/healthz")


def _guard(handler: Callable[[Request], Any]) -> Callable[[Request], Awaitable[Response]]:
    """Every route: the Host check, `--auth`'s login for readers, and errors as pages."""
    import inspect

    is_async = inspect.iscoroutinefunction(handler)

    async def wrapped(request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        gate: Gate = request.app.state.gate
        try:
            gate.check_host(request.headers.get("host"))
            if gate.read_needs_login and not request.url.path.startswith(OPEN_PATHS) \
                    and gate.session(request.cookies.get(COOKIE)) is None:
                if request.method == "GET":
                    return RedirectResponse("/login?" + urlencode({"next": request.url.path}), status_code=303)
                raise Refused(401, "log in with the token first (/login)")
            if is_async:
                return await handler(request)
            return await run_in_threadpool(handler, request)
        except Refused as e:
            return error_page(request, e.status, str(e))
        except ShipyardError as e:
            return error_page(request, e.http_status, str(e))
    return wrapped


def create_app(registry: Registry, *, token: str, auth: bool = False, hosts: set[str] | None = None) -> Starlette:
    """The UI over `registry`'s database and store. `token` opens actions (and, with `auth`, reading)."""
    def r(path: str, handler: Callable[[Request], Any], methods: tuple[str, ...] = ("GET",)) -> Route:
        return Route(path, _guard(handler), methods=list(methods))

    post = ("POST",)
    routes = [
        r("/", views_models.overview),
        r("/runs", views_runs.runs_list),
        r("/runs/compare", views_runs.compare_runs),
        r("/runs/{run_id}", views_runs.run_page),
        r("/runs/{run_id}/edit", views_runs.edit_run, post),
        r("/models", views_models.models_list),
        r("/models/{name}", views_models.model_page),
        r("/models/{name}/compare", views_models.compare_versions),
        r("/models/{name}/alias", actions.move_alias, post),
        r("/models/{name}/traffic", actions.set_traffic, post),
        r("/models/{name}/rollback", actions.rollback, post),
        r("/models/{name}/rollout", actions.start_rollout, post),
        r("/models/{name}/rollout/abort", actions.abort_rollout, post),
        r("/models/{name}/rollout/resume", actions.resume_rollout, post),
        r("/deployments/{name}", views_deploy.deployment_page),
        r("/deployments/{name}/maps", views_deploy.maps_fragment),
        r("/alerts/{alert_id}/ack", actions.acknowledge, post),
        r("/login", _login_page),
        r("/login", _login, post),
        r("/logout", _logout, post),
        r("/assets/{file}", _asset),
        r("/static/{file}", _static),
        r("/healthz", _health),
    ]

    async def not_found(request: Request, exc: Exception) -> HTMLResponse:
        status = getattr(exc, "status_code", 404)
        return error_page(request, status, "no such page" if status == 404 else f"method {request.method} not allowed")

    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})
    app.state.registry = registry
    app.state.gate = Gate(token=token, read_needs_login=auth, hosts=set(hosts or ()))
    app.state.rollouts = actions.Rollouts(registry)
    app.state.ready = threading.Event()
    threading.Thread(target=warm, args=(app,), name="shipyard-ui-warm", daemon=True).start()
    return app
