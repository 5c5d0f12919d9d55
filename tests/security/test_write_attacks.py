"""Attacks on a real `shipyard serve` process (loopback, bounded): a web page posting to the
routes that change state, a DNS-rebound name, a stranger guessing request ids to label
predictions. Each must fail and leave the registry and the labels as they were."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from harness.bundles import make_bundle
from shipyard.monitor.feedback import labels
from shipyard.registry import Registry
from shipyard.settings import Settings

from ..serving import Server, serve, server_env

SECRET = "s" * 32
BODY = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 784],
                               "data": np.zeros(784).tolist()}]})


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Registry]]:
    tmp = tmp_path_factory.mktemp("attacks")
    home = tmp / "home"
    reg = Registry(settings=Settings(home=home))
    reg.register(make_bundle(tmp / "b1", seed=1), "tiny", alias="production")
    reg.register(make_bundle(tmp / "b2", seed=2), "tiny", alias="candidate")
    env = server_env(home, SHIPYARD_FEEDBACK_SECRET=SECRET)
    with serve(home, "tiny", "--poll-s", "0.2", "--no-evaluate", env=env) as srv:
        yield srv, reg


def test_a_web_page_cannot_move_traffic_unload_or_label(server: tuple[Server, Registry]) -> None:
    srv, reg = server
    page = {"origin": "http://evil.example", "content-type": "text/plain"}  # a simple request: no preflight
    assert httpx.post(f"{srv.base}/v2/repository/models/tiny/traffic", headers=page,
                      content=json.dumps({"weights": {"candidate": 100}})).status_code == 403
    assert httpx.post(f"{srv.base}/v2/repository/models/tiny/unload", headers=page).status_code == 403
    r = httpx.post(f"{srv.base}/v2/repository/models/tiny/traffic", headers={"content-type": "text/plain"},
                   content=json.dumps({"weights": {"candidate": 100}}))
    assert r.status_code == 415
    for header, status in ((b"Origin: http://ev\xc3\xa9l.example", b"403"), (b"Content-Type: text/\xc3\xa9", b"415")):
        assert _raw(srv, b"POST /v2/repository/models/tiny/unload HTTP/1.1\r\nHost: localhost\r\n" + header
                    + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").split(b" ", 2)[1] == status, header
    assert reg.traffic("tiny").weights == {"production": 100}
    assert httpx.post(f"{srv.base}/v2/models/tiny/infer", content=BODY).status_code == 200  # still served


def _raw(srv: Server, request: bytes) -> bytes:
    """`request` as written (headers httpx would refuse to send) and the whole answer."""
    host, port = srv.base.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=60) as s:
        s.sendall(request)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return answer


def test_a_rebound_dns_name_gets_nothing(server: tuple[Server, Registry]) -> None:
    srv, _ = server
    for path in ("/v2/models/tiny", "/metrics", "/dashboard"):
        r = httpx.get(f"{srv.base}{path}", headers={"host": "attacker.example"})
        assert r.status_code == 421, path
    assert httpx.get(f"{srv.base}/v2/models/tiny", headers={"host": "localhost"}).status_code == 200
    # a Host that is not ASCII (granian cannot hand it over as text) is refused, not taken for no Host
    answer = _raw(srv, b"GET /v2/models/tiny HTTP/1.1\r\nHost: ev\xc3\xa9l.example\r\nConnection: close\r\n\r\n")
    assert answer.split(b" ", 2)[1] == b"421", answer[:200]


def test_labels_need_the_answers_proof(server: tuple[Server, Registry]) -> None:
    srv, reg = server
    answers = [httpx.post(f"{srv.base}/v2/models/tiny/infer", content=BODY) for _ in range(5)]
    ids = [a.headers["x-request-id"] for a in answers]
    assert len(set(ids)) == 5 and all(len(i) == 32 for i in ids)
    stranger = httpx.post(f"{srv.base}/v2/models/tiny/feedback",
                          json={"feedback": [{"id": i, "label": "1"} for i in ids]})
    assert stranger.status_code == 200 and stranger.json()["forbidden"] == 5 and stranger.json()["accepted"] == 0
    owner = httpx.post(f"{srv.base}/v2/models/tiny/feedback", json={"feedback": [
        {"id": ids[0], "label": "7", "token": answers[0].headers["x-feedback-token"]}]})
    assert owner.status_code == 200 and owner.json()["accepted"] == 1, owner.text
    assert labels(reg.engine, "tiny") == {ids[0]: 7}
