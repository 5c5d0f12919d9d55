"""Who may do what in `shipyard ui`. Reading needs nothing (or the token, with `--auth`); every
action needs a session: the token (`SHIPYARD_TOKEN`) entered once on /login, kept as a random
session id in an HttpOnly, SameSite=Strict cookie. A state-changing request must also come from
this site: a browser's `Sec-Fetch-Site`/`Origin` must say so, and the form must carry the
session's own CSRF value. A Host header naming another site is refused (DNS rebinding: a page
elsewhere that resolves its own name to 127.0.0.1 must not reach these routes)."""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import time
from dataclasses import dataclass, field

COOKIE = "shipyard_session"
SESSION_S = 12 * 3600
_MAX_SESSIONS = 1024


class Refused(Exception):
    """A request this app will not serve, with the status and the reason to show."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Session:
    id: str
    csrf: str
    expires: float


@dataclass
class Gate:
    """The token, the sessions it opened, and the hosts this app answers to."""

    token: str
    read_needs_login: bool = False
    hosts: set[str] = field(default_factory=set)
    sessions: dict[str, Session] = field(default_factory=dict)

    def login(self, token: str) -> Session:
        if not token or not hmac.compare_digest(token.encode(), self.token.encode()):
            raise Refused(401, "wrong token")
        now = time.time()
        self.sessions = {k: s for k, s in self.sessions.items() if s.expires > now}
        if len(self.sessions) >= _MAX_SESSIONS:  # oldest out: a login loop cannot grow memory
            del self.sessions[min(self.sessions, key=lambda k: self.sessions[k].expires)]
        s = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(24), now + SESSION_S)
        self.sessions[s.id] = s
        return s

    def session(self, cookie: str | None) -> Session | None:
        s = self.sessions.get(cookie or "")
        if s is None or s.expires < time.time():
            return None
        return s

    def logout(self, cookie: str | None) -> None:
        self.sessions.pop(cookie or "", None)

    def check_host(self, host: str | None) -> None:
        """Refuse a Host that is not this server's (a name other than loopback or the bound address)."""
        name = (host or "").rsplit(":", 1)[0].strip("[]").lower() if host else ""
        if not name:
            raise Refused(400, "no Host header")
        if name in self.hosts or name == "localhost":
            return
        try:
            ip = ipaddress.ip_address(name)
        except ValueError:
            raise Refused(421, f"this server does not answer for host {name!r} (start it with --host {name} "
                               "to serve that name)") from None
        if not (ip.is_loopback or str(ip) in self.hosts or "0.0.0.0" in self.hosts or "::" in self.hosts):
            raise Refused(421, f"this server does not answer for address {name}")


def same_site(headers: dict[str, str], host: str) -> None:
    """A state-changing request from another site is refused, whatever its cookie: browsers send
    `Sec-Fetch-Site` (cross-site, same-site: refused) and `Origin` (must be this host)."""
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        raise Refused(403, f"cross-site request refused (Sec-Fetch-Site: {fetch_site})")
    origin = headers.get("origin")
    if origin is not None:
        bare = origin.split("://", 1)[-1]
        if origin == "null" or bare != host:
            raise Refused(403, f"cross-site request refused (Origin: {origin})")


def check_form(session: Session | None, form: dict[str, str]) -> Session:
    if session is None:
        raise Refused(401, "log in with the token first (/login): actions need it")
    if not hmac.compare_digest(form.get("csrf", "").encode(), session.csrf.encode()):
        raise Refused(403, "this form is stale or came from elsewhere (CSRF value does not match); reload the page")
    return session
