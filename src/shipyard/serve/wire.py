"""The two server interfaces a request can come through, behind one `Request`:

- RSGI, granian's own interface, which `shipyard serve` runs: the scope is a native object whose
  headers are looked up in Rust, the body comes whole with one await and the answer goes out
  with one call (no message dicts). Measured on granian 2.8 with a bare handler: 1.1-1.4× the
  requests per second of the same handler on ASGI;
- ASGI, for uvicorn (`--http uvicorn`), any ASGI server that embeds the app, and the in-process
  tests (httpx's ASGI transport).

`serve/http.py` sees only `Request` (method, path, query, the peer's address, headers by
lower-case name as text, the body) and answers (status, body, headers as text pairs)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from shipyard.errors import PayloadTooLarge, ShipyardError

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
TextHeaders = list[tuple[str, str]]


class Headers(Protocol):
    """Request headers by lower-case name (granian's RSGIHeaders has this shape)."""

    def get(self, key: str, default: Any = None) -> Any: ...

    def items(self) -> list[tuple[str, str]]: ...

    def __contains__(self, key: str) -> bool: ...  # granian: True for a header `get` cannot read (not ASCII)


class Request:
    """One HTTP request, whatever the interface. `params`: the route's path parameters (set by
    the router). `body(limit)` reads the whole body, refusing (413) one over `limit` bytes as
    soon as it is."""

    __slots__ = ("method", "path", "query", "headers", "params")

    def __init__(self, method: str, path: str, query: str, headers: Headers) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.params: dict[str, str] = {}

    @property
    def peer(self) -> str:
        """The address of the connection's other end (no port); '' when unknown."""
        raise NotImplementedError

    async def body(self, limit: int) -> bytes:
        raise NotImplementedError


class ClientGone(ShipyardError):
    """The client went away before its request was read: nobody gets the answer, and it is no
    server error (nginx's 499, so a log or an alert on 5xx does not count it)."""

    http_status = 499


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body is over the {limit:,}-byte limit")


# -- RSGI ---------------------------------------------------------------------------------------
class RsgiRequest(Request):
    __slots__ = ("scope", "proto")

    def __init__(self, scope: Any, proto: Any) -> None:
        Request.__init__(self, scope.method, scope.path, scope.query_string, scope.headers)
        self.scope = scope
        self.proto = proto

    @property
    def peer(self) -> str:
        client: str = self.scope.client or ""  # "1.2.3.4:5678" or "[::1]:5678"
        if client.startswith("["):
            return client[1:client.find("]")]
        return client.rpartition(":")[0]

    async def body(self, limit: int) -> bytes:
        try:
            if self.headers.get("content-length") is not None:  # the length is known (and was checked)
                body: bytes = await self.proto()
                if len(body) > limit:
                    raise _too_large(limit)
                return body
            chunks: list[bytes] = []  # chunked: counted as it comes, so a huge body is cut off early
            size = 0
            async for chunk in self.proto:
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit)
                chunks.append(chunk)
            return b"".join(chunks)
        except RuntimeError as e:  # granian's RSGIProtocolClosed/Error: the connection ended mid-body
            raise ClientGone(f"the client closed the connection before its body arrived ({e})") from None


# -- ASGI ---------------------------------------------------------------------------------------
class AsgiHeaders:
    """ASGI's header list (bytes pairs) as text (latin-1), looked up by lower-case name; a
    repeated header answers its first value through `get`, as `RSGIHeaders.get` does (the one
    that is read repeated, X-Forwarded-For, goes through `items`)."""

    __slots__ = ("pairs",)

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.pairs = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in raw]

    def get(self, key: str, default: Any = None) -> Any:
        for k, v in self.pairs:
            if k == key:
                return v
        return default

    def items(self) -> list[tuple[str, str]]:
        return self.pairs

    def __contains__(self, key: str) -> bool:
        return any(k == key for k, _ in self.pairs)


class AsgiRequest(Request):
    __slots__ = ("scope", "receive")

    def __init__(self, scope: dict[str, Any], receive: Receive) -> None:
        Request.__init__(self, scope["method"], scope["path"], scope.get("query_string", b"").decode("latin-1"),
                         AsgiHeaders(scope["headers"]))
        self.scope = scope
        self.receive = receive

    @property
    def peer(self) -> str:
        client = self.scope.get("client")
        return str(client[0]) if client else ""

    async def body(self, limit: int) -> bytes:
        message = await self.receive()
        if message.get("type") == "http.disconnect":
            raise ClientGone("the client closed the connection before its body arrived")
        if not message.get("more_body"):  # the usual case: the whole body in one message
            body: bytes = message.get("body", b"")
            if len(body) > limit:
                raise _too_large(limit)
            return body
        chunks: list[bytes] = [message.get("body", b"")]
        size = len(chunks[0])
        while True:
            message = await self.receive()
            if message.get("type") == "http.disconnect":
                raise ClientGone("the client closed the connection before its body arrived")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)


async def asgi_reply(send: Send, method: str, status: int, body: bytes, headers: TextHeaders) -> None:
    """An answer as ASGI's two messages; a HEAD answer keeps the length of the body it leaves out."""
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})
