"""What every page of the UI shares: the templates (Jinja2, autoescaped: a run name, a reason or
an alert message is text, never markup), their filters, the request's session, and the HTML
answers — a page, a redirect after an action, an error page with its status."""

from __future__ import annotations

import math
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse

from shipyard import charts
from shipyard.monitor import report
from shipyard.ui.auth import COOKIE, Refused, Session, check_form, same_site

if TYPE_CHECKING:
    from shipyard.registry import Registry
    from shipyard.ui.auth import Gate

MAX_FORM_BYTES = 64 * 1024


def _ts(t: float | datetime | None) -> str:
    if t is None:
        return "–"
    if isinstance(t, datetime):
        t = t.timestamp()
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _pct(x: float | None) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.2%}"


def _num(x: float | None, digits: int = 4) -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}g}"


def _size(n: int | None) -> str:
    if n is None:
        return "–"
    if n < 1024:
        return f"{n} B"
    exp = min(int(math.log(n, 1024)), 3)
    return f"{n / 1024 ** exp:.1f} {('B', 'KiB', 'MiB', 'GiB')[exp]}"


def _duration(s: float | None) -> str:
    if s is None:
        return "–"
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def _short(run_id: str | None) -> str:
    return (run_id or "")[:12]


ENV = Environment(loader=PackageLoader("shipyard.ui", "templates"), autoescape=select_autoescape(default=True),
                  trim_blocks=True, lstrip_blocks=True)
ENV.filters.update(ts=_ts, pct=_pct, num=_num, size=_size, duration=_duration, short=_short)
ENV.globals.update(chart_assets=charts.asset_links("/assets"), page_style=charts.PAGE_STYLE + report.STYLE)


class Ctx:
    """Per request: the app's registry and gate, the session (if logged in)."""

    def __init__(self, request: Request) -> None:
        self.request = request
        self.registry: Registry = request.app.state.registry
        self.gate: Gate = request.app.state.gate
        self.session: Session | None = self.gate.session(request.cookies.get(COOKIE))

    def page(self, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        q = self.request.query_params
        html = ENV.get_template(template).render(
            session=self.session, csrf=self.session.csrf if self.session else "", path=self.request.url.path,
            here=str(self.request.url.path) + (f"?{self.request.url.query}" if self.request.url.query else ""),
            ok=q.get("ok"), **values)
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    async def form(self) -> dict[str, str]:
        """The POSTed form of an action, after the same-site, session and CSRF checks."""
        form = await read_form(self.request)
        check_form(self.session, form)
        return form


async def read_form(request: Request) -> dict[str, str]:
    """A POSTed form from this site (`same_site`): urlencoded, UTF-8, at most 64 KiB; the last
    value of a repeated field."""
    same_site(dict(request.headers), request.headers.get("host", ""))
    ctype = request.headers.get("content-type", "").split(";")[0].strip()
    if ctype != "application/x-www-form-urlencoded":
        raise Refused(415, f"actions take a form (application/x-www-form-urlencoded), not {ctype or 'nothing'}")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise Refused(413, f"form over {MAX_FORM_BYTES // 1024} KiB")
    try:
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True)
    except UnicodeDecodeError:
        raise Refused(400, "the form is not UTF-8") from None
    return {k: v[-1] for k, v in parsed.items()}


def done(to: str, message: str) -> RedirectResponse:
    """After an action: back to the page, with what was done (POST-redirect-GET)."""
    sep = "&" if "?" in to else "?"
    return RedirectResponse(f"{to}{sep}{urlencode({'ok': message})}", status_code=303)


def error_page(request: Request, status: int, message: str) -> HTMLResponse:
    ctx = Ctx(request)
    return ctx.page("error.html", status=status, status_code=status, message=message)


#: no framing (clickjacking an action button), no sniffing, nothing from other hosts
SECURITY_HEADERS = {
    "x-frame-options": "DENY", "x-content-type-options": "nosniff", "referrer-policy": "same-origin",
    "content-security-policy": "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                               "script-src 'self' 'unsafe-inline'; frame-ancestors 'none'; form-action 'self'",
}


def query_int(request: Request, key: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(key)
    if raw is None or raw == "":
        return default
    try:
        v = int(raw)
    except ValueError:
        raise Refused(400, f"{key} must be a whole number, got {raw!r}") from None
    if not lo <= v <= hi:
        raise Refused(400, f"{key} must be in {lo}..{hi}, got {v}")
    return v
