"""Slow and abusive clients against a real `shipyard serve` process (loopback, bounded): hundreds
of connections that send their headers and one byte of the body, or half their headers, or sit
idle after one request, must not stall anyone else. Each client holds at most its share of a
worker (`--per-client-limit`, counted per address: behind a trusted proxy, by X-Forwarded-For);
the rest is refused at once (429, the body unread, the connection closed); a body that does not
come is answered 408 after `--body-timeout`, a header that does not come is closed after
`--header-timeout`. Source addresses 127.0.0.x are distinct clients (Linux routes 127/8 to lo)."""

from __future__ import annotations

import asyncio
import json
import select
import socket
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest

from harness.bundles import make_bundle
from shipyard.errors import UsageError
from shipyard.registry import Registry
from shipyard.serve.config import ServeConfig
from shipyard.serve.guard import Busy, Guard, RequestTimeout, TooManyRequests
from shipyard.serve.wire import AsgiRequest, RsgiRequest
from shipyard.settings import Settings

from ..serving import Server, serve, server_env
from ..waiting import wait_for

BODY = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 784],
                               "data": np.zeros(784).tolist()}]}).encode()
SHARE = 8  # --per-client-limit of the server under attack
TIMEOUT_S = 10  # its --body-timeout and --header-timeout: the attack holds that long at most
PROXY = "127.0.0.3"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("slow")
    home = tmp / "home"
    Registry(settings=Settings(home=home)).register(make_bundle(tmp / "b1", seed=1), "tiny", alias="production")
    with serve(home, "tiny", "--no-evaluate", "--per-client-limit", str(SHARE), "--body-timeout", str(TIMEOUT_S),
               "--header-timeout", str(TIMEOUT_S), "--trusted-proxy", PROXY, env=server_env(home)) as srv:
        yield srv


def _port(srv: Server) -> int:
    return int(srv.base.rsplit(":", 1)[1])


def _request(path: str = "/v2/models/tiny/infer", body: bytes = BODY, *, headers: bytes = b"",
             close: bool = False) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n".encode() + headers
            + (b"Connection: close\r\n" if close else b"") + b"\r\n" + body)


def _connect(srv: Server, source: str) -> socket.socket:
    s = socket.socket()
    s.settimeout(60)  # a bound on a hang, not a speed requirement
    s.bind((source, 0))
    s.connect(("127.0.0.1", _port(srv)))
    return s


def _stall(srv: Server, source: str, xff: str | None = None) -> socket.socket:
    """A connection that sends its headers and 1 byte of a 5,000-byte body, then nothing."""
    s = _connect(srv, source)
    headers = f"X-Forwarded-For: {xff}\r\n".encode() if xff else b""
    s.sendall(_request(body=b"x" * 5000, headers=headers)[:-4999])
    return s


def _until_closed(s: socket.socket) -> bytes:
    """All the server sends until it closes the connection."""
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    return data


def _ask(srv: Server, source: str, request: bytes | None = None) -> bytes:
    """Send `request` (default: an inference that asks to close) and read the answer(s) to the end."""
    s = _connect(srv, source)
    s.sendall(request or _request(close=True))
    return _until_closed(s)


def _answer(s: socket.socket) -> bytes:
    """One whole answer on a connection that stays open (its Content-Length says where it ends)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                  if line.startswith(b"content-length:"))
    while len(body) < length:
        body += s.recv(65536)
    return data


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def _readable(socks: list[socket.socket]) -> list[socket.socket]:
    """The sockets with something to read (an answer, or the close): poll, not select (fds > 1024)."""
    poller = select.poll()
    by_fd = {s.fileno(): s for s in socks}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    return [by_fd[fd] for fd, _ in poller.poll(0)]


def _refused_at_once(socks: list[socket.socket], held: int) -> list[bytes]:
    """Wait until all but `held` of `socks` were answered; those answers (the sockets are closed)."""
    wait_for(lambda: len(_readable(socks)) >= len(socks) - held,
             f"{len(socks) - held} of {len(socks)} stalled clients to be refused", timeout=60)
    answered = _readable(socks)
    for s in answered:
        socks.remove(s)
    return [_until_closed(s) for s in answered]


def test_a_flood_of_slow_clients_does_not_stall_the_others(server: Server) -> None:
    srv = server
    stalled = [_stall(srv, "127.0.0.1") for _ in range(300)]
    slow_headers = []
    for _ in range(200):
        s = _connect(srv, "127.0.0.4")
        s.sendall(b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: 127.0")
        slow_headers.append(s)
    idle = []
    for _ in range(200):
        s = _connect(srv, "127.0.0.5")
        s.sendall(_request())
        assert _status(_answer(s)) == 200  # then the connection idles
        idle.append(s)

    # past its share, the staller is refused at once, before its body is read, and disconnected
    refused = _refused_at_once(stalled, held=SHARE)
    assert len(stalled) == SHARE and {_status(a) for a in refused} == {429}, {_status(a) for a in refused}
    assert all(b"retry-after: 1" in a.lower() and b"per-client-limit" in a for a in refused)

    # everyone else is answered meanwhile: directly, through the trusted proxy, and pipelined
    assert _status(_ask(srv, "127.0.0.2")) == 200
    assert _status(_ask(srv, PROXY, _request(headers=b"X-Forwarded-For: 10.0.0.8\r\n", close=True))) == 200
    pipelined = _ask(srv, "127.0.0.2", _request() + _request("/v2/repository/index", b"")
                     + _request(close=True))
    assert pipelined.count(b"HTTP/1.1 200 OK") == 3 and pipelined.count(b'"model_name":"tiny"') == 2, pipelined
    # ... while the attack still holds: none of its connections has been answered or closed yet
    # (they are, after TIMEOUT_S: a generous bound for four answers on loopback)
    assert _readable(stalled + slow_headers + idle) == []

    # then each attack ends as it should: a 408 for the bodies, the connection closed for the others
    timed_out = [_until_closed(s) for s in stalled]
    assert {_status(a) for a in timed_out} == {408}
    assert all(b"--body-timeout" in a and b"connection: close" in a.lower() for a in timed_out)
    assert {_until_closed(s)[:12] for s in slow_headers + idle} <= {b"", b"HTTP/1.1 408"}

    # and the server serves as before, the stalling address included
    assert httpx.post(f"{srv.base}/v2/models/tiny/infer", content=BODY, timeout=60).status_code == 200
    exposition = httpx.get(f"{srv.base}/metrics", timeout=60).text
    counted = {reason: float(line.rsplit(" ", 1)[1]) for line in exposition.splitlines()
               if line.startswith("shipyard_refused_requests_total{")
               for reason in [line.split('"')[1]]}
    assert counted["client_limit"] >= 300 - SHARE and counted["body_timeout"] >= SHARE, counted


def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_share(server: Server) -> None:
    srv = server
    # the proxy appends the address it saw; what the client wrote itself (on the left) does not count
    through_proxy = [_stall(srv, PROXY, xff=f"10.0.{i}.1, 10.0.0.66") for i in range(30)]
    refused = _refused_at_once(through_proxy, held=SHARE)
    assert len(refused) == 30 - SHARE and {_status(a) for a in refused} == {429}
    assert b"10.0.0.66" in refused[0]
    # another client of the same proxy is answered
    assert _status(_ask(srv, PROXY, _request(headers=b"X-Forwarded-For: 10.0.0.7\r\n", close=True))) == 200
    # a client that is not a trusted proxy cannot pose as many by writing X-Forwarded-For
    spoofing = [_stall(srv, "127.0.0.6", xff=f"10.1.0.{i}") for i in range(30)]
    refused = _refused_at_once(spoofing, held=SHARE)
    assert len(refused) == 30 - SHARE and b"127.0.0.6" in refused[0]
    for s in through_proxy + spoofing:
        s.close()  # their requests end (the body is cut short), and their share is free again
    wait_for(lambda: _status(_ask(srv, "127.0.0.6")) == 200, "the spoofer's share to be free again", timeout=60)


def test_uvicorn_holds_the_same_line(tmp_path: Path) -> None:
    """uvicorn would take X-Forwarded-For from any loopback peer by itself: it must not."""
    home = tmp_path / "home"
    Registry(settings=Settings(home=home)).register(make_bundle(tmp_path / "b1", seed=1), "tiny", alias="production")
    with serve(home, "tiny", "--http", "uvicorn", "--no-evaluate", "--per-client-limit", "2", "--body-timeout", "2",
               env=server_env(home)) as srv:
        spoofing = [_stall(srv, "127.0.0.1", xff=f"10.2.0.{i}") for i in range(10)]
        refused = _refused_at_once(spoofing, held=2)
        assert len(refused) == 8 and {_status(a) for a in refused} == {429}
        assert _status(_ask(srv, "127.0.0.2")) == 200
        assert {_status(_until_closed(s)) for s in spoofing} == {408}
        assert httpx.post(f"{srv.base}/v2/models/tiny/infer", content=BODY, timeout=60).status_code == 200


# -- the rules themselves, in process --------------------------------------------------------

async def _nothing() -> dict[str, Any]:
    return {"body": b"", "more_body": False}


def _scope(peer: str, *xff: str) -> AsgiRequest:
    return AsgiRequest({"method": "POST", "path": "/", "client": (peer, 5000),
                        "headers": [(b"x-forwarded-for", v.encode()) for v in xff]}, _nothing)


def _rsgi(client: str, *xff: str) -> RsgiRequest:
    """What granian's RSGI scope carries: the peer as one "address:port" string."""
    headers = [("x-forwarded-for", v) for v in xff]
    scope = SimpleNamespace(method="POST", path="/", query_string="", client=client,
                            headers=SimpleNamespace(get=dict(headers).get, items=lambda: headers))
    return RsgiRequest(scope, None)


def test_the_client_is_the_peer_or_what_a_trusted_proxy_forwarded() -> None:
    guard = Guard(ServeConfig(trusted_proxies=("10.0.0.0/8", "192.0.2.1")))
    assert guard.client(_scope("198.51.100.9", "1.2.3.4")) == "198.51.100.9"  # not a proxy: its header is ignored
    assert guard.client(_scope("10.0.0.5", "1.2.3.4")) == "1.2.3.4"
    assert guard.client(_scope("10.0.0.5", "6.6.6.6, 1.2.3.4, 192.0.2.1")) == "1.2.3.4"  # two proxies
    assert guard.client(_scope("10.0.0.5", "6.6.6.6", "1.2.3.4:5678")) == "1.2.3.4"  # headers joined, port off
    assert guard.client(_scope("10.0.0.5")) == "10.0.0.5"  # no header: the proxy itself
    assert guard.client(_scope("10.0.0.5", "10.0.0.6")) == "10.0.0.6"  # only proxies: the farthest
    # an IPv6 client counts by its /64
    assert guard.client(_scope("2001:db8::1")) == guard.client(_scope("2001:db8::ffff")) == "2001:db8::/64"
    assert guard.client(_scope("10.0.0.5", "[2001:db8::1]:443")) == "2001:db8::/64"
    assert guard.client(_scope("::ffff:192.0.2.7")) == "192.0.2.7"
    assert guard.client(_scope("::ffff:10.0.0.5", "1.2.3.4")) == "1.2.3.4"  # a proxy on a dual-stack socket
    assert guard.client(_scope("10.0.0.5", "unknown")) == "unknown"  # what the proxy wrote, as it wrote it
    # the same through RSGI, whose scope writes the peer with its port (IPv6 in brackets)
    assert guard.client(_rsgi("198.51.100.9:5000", "1.2.3.4")) == "198.51.100.9"
    assert guard.client(_rsgi("10.0.0.5:5000", "6.6.6.6", "1.2.3.4:5678")) == "1.2.3.4"
    assert guard.client(_rsgi("[2001:db8::1]:5000")) == "2001:db8::/64"
    assert guard.client(_rsgi("[::ffff:10.0.0.5]:5000", "1.2.3.4")) == "1.2.3.4"


def test_shares_are_counted_and_freed() -> None:
    guard = Guard(ServeConfig(per_client_limit=2, concurrency=3))
    a, b = _scope("192.0.2.1"), _scope("192.0.2.2")
    held = [guard.admit(a, 1), guard.admit(a, 2)]
    with pytest.raises(TooManyRequests):
        guard.admit(a, 3)
    assert guard.admit(b, 3) == "192.0.2.2"
    with pytest.raises(Busy):
        guard.admit(b, 4)  # the worker's --concurrency
    for client in held:
        assert client is not None
        guard.release(client)
    assert guard.admit(a, 2) == "192.0.2.1"
    assert Guard(ServeConfig(per_client_limit=0)).admit(a, 1) is None


def test_a_body_that_does_not_come_is_a_408_and_the_handler_goes_on() -> None:
    guard = Guard(ServeConfig(body_timeout_s=0.2))
    async def never() -> dict[str, Any]:
        await asyncio.Event().wait()
        return {}

    async def chunk() -> dict[str, Any]:
        return {"body": b"{}", "more_body": False}

    async def handler() -> str:
        try:
            await guard.body(AsgiRequest({"method": "POST", "path": "/", "headers": []}, never))
        except RequestTimeout as e:
            await asyncio.sleep(0)  # not left cancelled: the answer can still be sent
            assert await guard.body(AsgiRequest({"method": "POST", "path": "/", "headers": []}, chunk)) == b"{}"
            return str(e)
        return "read"

    assert "0.2 s" in asyncio.run(asyncio.wait_for(handler(), 60))


def test_the_limits_reach_the_workers() -> None:
    c = ServeConfig(body_timeout_s=3.5, header_timeout_s=2.0, max_connections=10, per_client_limit=5,
                    trusted_proxies=("10.0.0.0/8", "2001:db8::/32", "192.0.2.1")).checked()
    assert ServeConfig.from_env(c.to_env()) == c


def test_bad_limits_are_one_usage_error() -> None:
    with pytest.raises(UsageError) as e:
        ServeConfig(body_timeout_s=0, header_timeout_s=61, max_connections=0, per_client_limit=-1,
                    trusted_proxies=("10.0.0.0/8", "proxy.example")).checked()
    for problem in ("body_timeout_s", "header_timeout_s", "max_connections", "per_client_limit", "'proxy.example'"):
        assert problem in str(e.value)


def _chunked(path: str, chunks: list[bytes]) -> bytes:
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode()
    return head + b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in chunks) + b"0\r\n\r\n"


def test_a_chunked_body_is_read_whole_and_cut_off_past_the_limit(server: Server) -> None:
    """No Content-Length (chunked): the body is counted as it comes (RSGI `async for`), so a
    small one is served and an endless one is refused with 413 once past --max-body (8 MB),
    not read to its end."""
    third = len(BODY) // 3
    answer = _ask(server, "127.0.0.6", _chunked("/v2/models/tiny/infer", [BODY[:third], BODY[third:2 * third],
                                                                       BODY[2 * third:]]))
    assert _status(answer) == 200 and b'"outputs"' in answer
    s = _connect(server, "127.0.0.6")
    s.sendall(b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (1 << 16, b" " * (1 << 16))
    sent = 0
    try:
        while sent < 64 << 20:  # 8 times the limit: a server reading to the end would take it all
            s.sendall(chunk)
            sent += 1 << 16
            if select.select([s], [], [], 0)[0]:
                break
    except OSError:  # the server answered and closed while we were still sending
        pass
    answer = _until_closed(s)
    assert _status(answer) == 413 and b"limit" in answer
    assert sent < 32 << 20  # refused well before the end
    assert _status(_ask(server, "127.0.0.6")) == 200  # and the server goes on


def test_granian_runs_the_app_over_rsgi_with_the_limits() -> None:
    """The fast interface (RSGI: serve_bench measures the difference) and the limits the guard
    cannot enforce itself (header timeout, connection cap) are on granian's command line."""
    from shipyard.cli.serve import _command

    cmd = _command(ServeConfig(header_timeout_s=2.5, max_connections=77).checked())
    assert cmd[cmd.index("--interface") + 1] == "rsgi"
    assert cmd[cmd.index("--http1-header-read-timeout") + 1] == "2500"
    assert cmd[cmd.index("--backpressure") + 1] == "77"


def test_a_client_that_leaves_mid_body_is_no_server_error(server: Server) -> None:
    """Headers and part of the body, then the connection closes: counted as 499 (the client's
    doing), never as a 500 that an alert on server errors would see."""
    for _ in range(3):
        s = _connect(server, "127.0.0.7")
        s.sendall(_request(body=b"x" * 5000)[:-4000])
        s.close()

    def counted() -> dict[str, float]:
        text = httpx.get(f"{server.base}/metrics", timeout=60).text
        return {line.split('status="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line.startswith("shipyard_requests_total{") and 'route="v2"' in line}

    wait_for(lambda: counted().get("499", 0) >= 3, "three aborted uploads counted as 499")
    assert "500" not in counted()
