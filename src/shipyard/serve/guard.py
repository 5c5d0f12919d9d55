"""Who may ask what, and how much: the bearer token and the access levels, the Host check that
stops DNS rebinding, the refusal of cross-site writes, and the request body's limit (compressed
bodies included). The transport (`serve/http.py`) asks the guard before a handler runs."""

from __future__ import annotations

import hmac
import re
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

from shipyard.errors import BadRequest, PayloadTooLarge, ShipyardError
from shipyard.serve.config import ServeConfig

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]


class Unauthorized(ShipyardError):
    http_status = 401


class Forbidden(ShipyardError):
    http_status = 403


class UnsupportedMediaType(ShipyardError):
    http_status = 415


class MisdirectedRequest(ShipyardError):
    http_status = 421


# zlib's window bits: gzip's header and trailer (16 + 15); deflate as HTTP means it, zlib-wrapped (15)
_ENCODINGS = {b"gzip": 31, b"x-gzip": 31, b"deflate": 15}
_LOOPBACK_HOSTS = frozenset({b"localhost", b"[::1]", b"::1"})
_LOOPBACK_V4 = re.compile(rb"127\.\d{1,3}\.\d{1,3}\.\d{1,3}")
_JSON_TYPES = frozenset({b"application/json", b""})


def _host_name(value: bytes) -> bytes:
    """The name in a Host header, without its port (IPv6 literals keep their brackets)."""
    value = value.strip().lower()
    if value.startswith(b"["):
        return value[:value.find(b"]") + 1]
    return value.partition(b":")[0]


class Guard:
    """The access rules of one server, from its `ServeConfig`."""

    def __init__(self, config: ServeConfig) -> None:
        self.max_body = config.max_body
        self.management = config.management
        self.auth_inference = config.auth_inference
        self.allowed_origins = frozenset(o.encode() for o in config.allowed_origins)
        # bound to loopback, answer only loopback names and the configured ones (DNS rebinding)
        self.hosts = (frozenset(h.lower().encode() for h in config.allowed_hosts) | _LOOPBACK_HOSTS
                      if config.loopback else None)
        self._bearer = f"bearer {config.token}".encode() if config.token else None

    def authorize(self, scope: Scope, access: str) -> None:
        if access == "management":
            if not self.management:
                raise Forbidden("management routes are off: set SHIPYARD_TOKEN to use them on a non-loopback "
                                "address")
            self.check_token(scope)
        elif self.auth_inference:
            self.check_token(scope)

    def check_token(self, scope: Scope) -> None:
        if self._bearer is None:
            return
        if not self.has_token(scope):
            raise Unauthorized("missing or wrong bearer token")

    def has_token(self, scope: Scope) -> bool:
        """A valid `Authorization: Bearer TOKEN` (the scheme is case-insensitive, RFC 9110)."""
        if self._bearer is None:
            return False
        auth = next((v for k, v in scope["headers"] if k == b"authorization"), b"").strip()
        scheme, _, credentials = auth.partition(b" ")
        return hmac.compare_digest(scheme.lower() + b" " + credentials.strip(), self._bearer)

    def check_host(self, scope: Scope) -> None:
        """A server bound to loopback answers only requests addressed to a loopback name (or a
        configured one): a page whose DNS name was rebound to 127.0.0.1 gets nothing."""
        assert self.hosts is not None
        host = next((v for k, v in scope["headers"] if k == b"host"), None)
        if host is None:
            return  # HTTP/1.0 without Host: no browser sends that
        name = _host_name(host)
        if name not in self.hosts and not _LOOPBACK_V4.fullmatch(name):
            raise MisdirectedRequest(f"this server answers loopback names only, not Host "
                                     f"{host.decode('latin-1')!r} (add it with --allowed-host)")

    def check_write(self, scope: Scope) -> None:
        """Routes that change state refuse what a web page can send without a CORS preflight: a
        cross-site Origin (unless allowed) and a body that is not JSON (e.g. text/plain)."""
        origin = ctype = None
        for k, v in scope["headers"]:
            if k == b"origin":
                origin = v
            elif k == b"content-type":
                ctype = v
        if origin is not None and origin.lower().rstrip(b"/") not in self.allowed_origins:
            raise Forbidden(f"cross-site request from Origin {origin.decode('latin-1')!r} refused: this route "
                            "changes state (allow an origin with --allowed-origin)")
        if ctype is not None and ctype.partition(b";")[0].strip().lower() not in _JSON_TYPES:
            raise UnsupportedMediaType(f"this route takes application/json, not {ctype.decode('latin-1')!r}")

    async def body(self, scope: Scope, receive: Receive) -> bytes:
        """The request body, at most `max_body` bytes, decoded when it came compressed (gzip or
        deflate, as tritonclient's `request_compression_algorithm` sends; the limit holds for
        the decoded bytes too, so a decompression bomb is a 413)."""
        encoding = None
        for k, v in scope["headers"]:
            if k == b"content-length" and v.isdigit() and int(v) > self.max_body:
                raise PayloadTooLarge(f"request body of {int(v):,} bytes is over the {self.max_body:,}-byte limit")
            if k == b"content-encoding":
                encoding = v.strip().lower()
        body = await self._raw_body(receive)
        if encoding is None or encoding == b"identity":
            return body
        if encoding not in _ENCODINGS:
            raise UnsupportedMediaType(f"Content-Encoding {encoding.decode('latin-1')!r} is not supported "
                                       "(gzip, deflate or identity)")
        inflate = zlib.decompressobj(_ENCODINGS[encoding])
        try:
            out = inflate.decompress(body, self.max_body + 1)
        except zlib.error as e:
            raise BadRequest(f"the {encoding.decode()} body does not decompress: {e}") from None
        if len(out) > self.max_body or inflate.unconsumed_tail:
            raise PayloadTooLarge(f"the decompressed request body is over the {self.max_body:,}-byte limit")
        return out

    async def _raw_body(self, receive: Receive) -> bytes:
        message = await receive()
        if not message.get("more_body"):  # the usual case: the whole body in one message
            body: bytes = message.get("body", b"")
            if len(body) > self.max_body:
                raise PayloadTooLarge(f"request body is over the {self.max_body:,}-byte limit")
            return body
        chunks: list[bytes] = [message.get("body", b"")]
        size = len(chunks[0])
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise PayloadTooLarge(f"request body is over the {self.max_body:,}-byte limit")
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)
