"""Who may ask what, and how much: the bearer token and the access levels, the Host check that
stops DNS rebinding, the refusal of cross-site writes, the request body's limit (compressed
bodies included) and deadline, and the share of a worker one client may hold (so slow or
abusive clients cannot stall everyone). The transport (`serve/http.py`) asks the guard before a
handler runs."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import re
import time
import zlib
from typing import Any

from shipyard.errors import BadRequest, Overloaded, PayloadTooLarge, ShipyardError
from shipyard.monitor import metrics
from shipyard.serve.config import ServeConfig
from shipyard.serve.wire import Request


class Unauthorized(ShipyardError):
    http_status = 401


class Forbidden(ShipyardError):
    http_status = 403


class UnsupportedMediaType(ShipyardError):
    http_status = 415


class MisdirectedRequest(ShipyardError):
    http_status = 421


class RequestTimeout(ShipyardError):
    http_status = 408


class TooManyRequests(Overloaded):
    http_status = 429


class Busy(Overloaded):
    """The worker has its `concurrency` in flight (503, Retry-After)."""


#: refusals sent before the body was read (or while it was still coming): the connection is closed
CLOSES = (RequestTimeout, TooManyRequests, Busy)


# zlib's window bits: gzip's header and trailer (16 + 15); deflate as HTTP means it, zlib-wrapped (15)
_ENCODINGS = {"gzip": 31, "x-gzip": 31, "deflate": 15}
_LOOPBACK_HOSTS = frozenset({"localhost", "[::1]", "::1"})
_LOOPBACK_V4 = re.compile(r"127\.\d{1,3}\.\d{1,3}\.\d{1,3}")
_JSON_TYPES = frozenset({"application/json", ""})
_HOSTS_SEEN = 256  # Host values already found allowed (clients write it; the memo stays bounded)


def _host_name(value: str) -> str:
    """The name in a Host header, without its port (IPv6 literals keep their brackets)."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[:value.find("]") + 1]
    return value.partition(":")[0]


class Guard:
    """The access rules of one server, from its `ServeConfig`."""

    def __init__(self, config: ServeConfig) -> None:
        self.max_body = config.max_body
        self.management = config.management
        self.auth_inference = config.auth_inference
        self.allowed_origins = frozenset(config.allowed_origins)
        # bound to loopback, answer only loopback names and the configured ones (DNS rebinding)
        self.hosts = (frozenset(h.lower() for h in config.allowed_hosts) | _LOOPBACK_HOSTS
                      if config.loopback else None)
        self._hosts_ok: set[str] = set()
        self._bearer = f"bearer {config.token}".encode() if config.token else None
        self.body_timeout = config.body_timeout_s
        self.concurrency = config.concurrency
        self.per_client = config.per_client_limit
        self.proxies = tuple(ipaddress.ip_network(p, strict=False) for p in config.trusted_proxies)
        self._trusted_cache: dict[str, bool] = {}
        self._keys: dict[str, str] = {}  # address as written -> the client it counts as
        self._in_flight: dict[str, int] = {}  # client -> requests of it in flight in this worker
        self._reading: dict[asyncio.Task[Any], float] = {}  # handler -> the deadline of its body
        self._expired: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- how much: the worker's and each client's share -------------------------------------
    def admit(self, req: Request, inflight: int) -> str | None:
        """Let a request in, or refuse it at once, before its body is read (so a refused one
        holds nothing): 503 when the worker has `concurrency` requests in flight (`inflight`
        counts this one), 429 when its client already has `per_client_limit` of them. Returns
        the client to `release` when the request is done (None: not counted)."""
        if inflight > self.concurrency:
            metrics.REFUSED.labels("worker_limit").inc()
            raise Busy(f"this worker has {self.concurrency} requests in flight (--concurrency); retry later")
        if not self.per_client:
            return None
        client = self.client(req)
        n = self._in_flight.get(client, 0)
        if n >= self.per_client:
            metrics.REFUSED.labels("client_limit").inc()
            raise TooManyRequests(f"{n} requests from {client} are in flight in this worker, its limit "
                                  f"(--per-client-limit); retry later")
        self._in_flight[client] = n + 1
        return client

    def release(self, client: str) -> None:
        n = self._in_flight.pop(client) - 1
        if n:
            self._in_flight[client] = n

    def client(self, req: Request) -> str:
        """Who sent the request: the peer address, or, when the peer is a trusted proxy, the
        right-most address in X-Forwarded-For that is not a trusted proxy (each proxy appends
        the peer it saw, so what a client wrote itself stays on the left). Without the port a
        proxy may have written; an IPv6 client counts by its /64, which one host usually holds."""
        addr = req.peer
        if self.proxies and self._trusted(addr):
            hops = [h.strip() for k, v in req.headers.items() if k == "x-forwarded-for" for h in v.split(",")]
            for hop in reversed(hops):
                if hop:
                    addr = hop
                    if not self._trusted(hop):
                        break
        if ":" not in addr and "[" not in addr:
            return addr  # IPv4 as the server wrote it: the usual case, nothing to parse
        key = self._keys.get(addr)
        if key is None:
            try:
                ip = ipaddress.ip_address(_bare(addr))
                if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
                    key = str(ipaddress.ip_network(f"{ip}/64", strict=False))
                else:
                    key = str(ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else ip)
            except ValueError:
                key = addr[:64]
            if len(self._keys) >= 4096:
                self._keys.clear()
            self._keys[addr] = key
        return key

    def _trusted(self, addr: str) -> bool:
        known = self._trusted_cache.get(addr)
        if known is None:
            try:
                ip = ipaddress.ip_address(_bare(addr))
                if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                    ip = ip.ipv4_mapped  # an IPv4 proxy seen through a dual-stack socket
                known = any(ip in net for net in self.proxies)
            except ValueError:
                known = False
            if len(self._trusted_cache) >= 4096:
                self._trusted_cache.clear()
            self._trusted_cache[addr] = known
        return known

    def authorize(self, req: Request, access: str) -> None:
        if access == "management":
            if not self.management:
                raise Forbidden("management routes are off: set SHIPYARD_TOKEN to use them on a non-loopback "
                                "address")
            self.check_token(req)
        elif self.auth_inference:
            self.check_token(req)

    def check_token(self, req: Request) -> None:
        if self._bearer is None:
            return
        if not self.has_token(req):
            raise Unauthorized("missing or wrong bearer token")

    def has_token(self, req: Request) -> bool:
        """A valid `Authorization: Bearer TOKEN` (the scheme is case-insensitive, RFC 9110)."""
        if self._bearer is None:
            return False
        auth = (req.headers.get("authorization") or "").strip().encode("latin-1")
        scheme, _, credentials = auth.partition(b" ")
        return hmac.compare_digest(scheme.lower() + b" " + credentials.strip(), self._bearer)

    def check_host(self, req: Request) -> None:
        """A server bound to loopback answers only requests addressed to a loopback name (or a
        configured one): a page whose DNS name was rebound to 127.0.0.1 gets nothing."""
        assert self.hosts is not None
        host = req.headers.get("host")
        if host is None:
            if "host" in req.headers:  # there, but not ASCII (granian hands such values over as None)
                raise MisdirectedRequest("this server answers loopback names only, not a Host that is not ASCII")
            return  # HTTP/1.0 without Host: no browser sends that
        if host in self._hosts_ok:
            return
        name = _host_name(host)
        if name not in self.hosts and not _LOOPBACK_V4.fullmatch(name):
            raise MisdirectedRequest(f"this server answers loopback names only, not Host {host!r} (add it with "
                                     "--allowed-host)")
        if len(self._hosts_ok) >= _HOSTS_SEEN:
            self._hosts_ok.clear()
        self._hosts_ok.add(host)

    def check_write(self, req: Request) -> None:
        """Routes that change state refuse what a web page can send without a CORS preflight: a
        cross-site Origin (unless allowed) and a body that is not JSON (e.g. text/plain)."""
        headers = req.headers
        origin = headers.get("origin")
        ctype = headers.get("content-type")
        if origin is None and "origin" in headers:  # there but not ASCII: granian hands it over as None
            raise Forbidden("a request with an Origin that is not ASCII is refused: this route changes state")
        if ctype is None and "content-type" in headers:
            raise UnsupportedMediaType("this route takes application/json, not a Content-Type that is not ASCII")
        if origin is not None and origin.lower().rstrip("/") not in self.allowed_origins:
            raise Forbidden(f"cross-site request from Origin {origin!r} refused: this route changes state (allow "
                            "an origin with --allowed-origin)")
        if ctype is not None and ctype.partition(";")[0].strip().lower() not in _JSON_TYPES:
            raise UnsupportedMediaType(f"this route takes application/json, not {ctype!r}")

    async def body(self, req: Request) -> bytes:
        """The request body, at most `max_body` bytes, decoded when it came compressed (gzip or
        deflate, as tritonclient's `request_compression_algorithm` sends; the limit holds for
        the decoded bytes too, so a decompression bomb is a 413)."""
        headers = req.headers
        length = headers.get("content-length")
        if length is not None and length.isascii() and length.isdigit() and int(length) > self.max_body:
            raise PayloadTooLarge(f"request body of {int(length):,} bytes is over the {self.max_body:,}-byte limit")
        encoding = headers.get("content-encoding")
        body = await self._raw_body(req)
        if encoding is None:
            return body
        encoding = encoding.strip().lower()
        if encoding == "identity":
            return body
        if encoding not in _ENCODINGS:
            raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not supported (gzip, deflate or identity)")
        inflate = zlib.decompressobj(_ENCODINGS[encoding])
        try:
            out = inflate.decompress(body, self.max_body + 1)
        except zlib.error as e:
            raise BadRequest(f"the {encoding} body does not decompress: {e}") from None
        if len(out) > self.max_body or inflate.unconsumed_tail:
            raise PayloadTooLarge(f"the decompressed request body is over the {self.max_body:,}-byte limit")
        return out

    async def _raw_body(self, req: Request) -> bytes:
        """The body as it comes, within `body_timeout` seconds for all of it: past that, 408
        (a client that sends one byte a second must not hold its slot). One timer per worker
        sweeps the deadlines (`_sweep`), so a request pays a dict entry, not a timer of its own."""
        loop = self._loop  # asking the running loop costs more than the rest of this together
        task = asyncio.current_task(loop) if loop is not None else None
        if task is None:  # the first request, or a new loop (tests run several)
            loop = self._loop = asyncio.get_running_loop()
            self._reading, self._expired, self._sweeper = {}, set(), None
            task = asyncio.current_task(loop)
            if task is None:  # not run by an asyncio task (nothing to cancel): a timer of its own
                try:
                    return await asyncio.wait_for(req.body(self.max_body), self.body_timeout)
                except TimeoutError:
                    raise self._timed_out() from None
        self._reading[task] = time.monotonic() + self.body_timeout
        if self._sweeper is None:  # at most once a tick: a swept empty table stops the timer
            self._sweeper = asyncio.get_running_loop().call_later(min(1.0, self.body_timeout / 4), self._sweep)
        try:
            return await req.body(self.max_body)
        except asyncio.CancelledError:
            if task not in self._expired:
                raise
            task.uncancel()
            raise self._timed_out() from None
        finally:
            self._reading.pop(task, None)
            self._expired.discard(task)

    def _sweep(self) -> None:
        """Cancel the body reads past their deadline; `_raw_body` turns that into a 408."""
        now = time.monotonic()
        for task, deadline in self._reading.items():
            if deadline <= now and task not in self._expired:
                self._expired.add(task)
                task.cancel()
        self._sweeper = (asyncio.get_running_loop().call_later(min(1.0, self.body_timeout / 4), self._sweep)
                         if self._reading else None)

    def _timed_out(self) -> RequestTimeout:
        metrics.REFUSED.labels("body_timeout").inc()
        return RequestTimeout(f"the request body did not arrive within {self.body_timeout:g} s (--body-timeout)")


def _bare(addr: str) -> str:
    """An address without the port or brackets a proxy may have written ([::1]:80, 10.0.0.1:80)."""
    if addr.startswith("["):
        return addr[1:addr.find("]")]
    if addr.count(":") == 1:
        return addr.partition(":")[0]
    return addr
