"""`shipyard ui` in this process: `create_app` over a real SQLite registry (two tiny real bundles as
digits v1 and v2, two tracked runs with curves, an open alert), driven through Starlette's
TestClient the way a browser and a hostile page would: every read page, the error pages and their
statuses, login and sessions, every guard on actions (session, CSRF, same-site, content type,
size, Host), the actions' effects in the database, escaping, and a rollout started from the UI."""

from __future__ import annotations

import html
import re
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import sqlalchemy as sa
from starlette.applications import Starlette

from harness.bundles import make_bundle
from shipyard.registry import Registry
from shipyard.settings import Settings
from shipyard.store.schema import alerts
from shipyard.training.tracking import RunStore
from shipyard.ui.app import create_app
from shipyard.ui.auth import COOKIE

with warnings.catch_warnings():  # Starlette 1.x prefers `httpx2` for its TestClient; `httpx` works the same
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

TOKEN = "s3cret-token-for-tests"
BASE = "http://127.0.0.1"
EVIL_NAME = "<script>alert(1)</script>"
ESCAPED_EVIL = "&lt;script&gt;alert(1)&lt;/script&gt;"


@dataclass
class Env:
    app: Starlette
    reg: Registry
    store: RunStore
    run_a: str  # "baseline", tagged team=vision, the run v1 came from
    run_b: str  # named EVIL_NAME
    alert_id: int


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("ui")
    settings = Settings(home=tmp / "home")
    store = RunStore(settings=settings)
    run_ids = []
    for name, tags, lr in (("baseline", {"team": "vision"}, 0.01), (EVIL_NAME, {"try": "2"}, 0.003)):
        rid = store.create({"model": "mlp", "epochs": 2, "lr": lr}, "mnist-sample", name=name, tags=tags)
        for epoch in (1, 2):
            acc = 0.80 + 0.05 * epoch + lr
            store.log_epoch(rid, epoch, {"train_loss": 1.0 / epoch, "val_loss": 1.2 / epoch, "train_accuracy": acc,
                                         "val_accuracy": acc - 0.02, "lr": lr, "samples_per_s": 1000.0},
                            epochs_run=epoch, best_val_accuracy=acc - 0.02, best_epoch=epoch)
        store.update(rid, status="completed", test_accuracy=0.84)
        run_ids.append(rid)
    lineage = {"run_id": run_ids[0], "parent_version": None, "data_fingerprint": None, "library_versions": {}}
    reg = Registry(settings=settings)
    reg.register(make_bundle(tmp / "b1", "digits", seed=1, lineage=lineage), "digits", alias="production")
    reg.register(make_bundle(tmp / "b2", "digits", seed=2), "digits")
    now = time.time()
    with reg.engine.begin() as conn:
        alert_id = conn.execute(alerts.insert().values(
            model="digits", version=1, rule="drift", kind="drift", severity="warning", status="firing",
            opened_at=now - 60, last_seen_at=now, message="input drift on <b>digits</b>", details={},
            notified="none")).inserted_primary_key[0]
    app = create_app(reg, token=TOKEN, auth=False, hosts={"127.0.0.1"})
    yield Env(app, reg, store, run_ids[0], run_ids[1], int(alert_id))
    from shipyard.update import rollout as ro

    st = ro.status(reg.engine, "digits")
    if st is not None and st["status"] == "running":  # a failed test left it running: stop its thread
        ro.abort(reg, "digits", "test teardown")
    deadline = time.monotonic() + 10
    while app.state.rollouts.running_here("digits") and time.monotonic() < deadline:
        time.sleep(0.1)


def client(app: Starlette) -> TestClient:
    return TestClient(app, base_url=BASE, follow_redirects=False, raise_server_exceptions=False)


def login(app: Starlette) -> tuple[TestClient, str]:
    """A logged-in browser and the CSRF value its pages carry."""
    c = client(app)
    r = c.post("/login", data={"token": TOKEN, "next": "/runs"})
    assert r.status_code == 303, r.text
    page = c.get("/runs")
    assert page.status_code == 200
    m = re.search(r'name="csrf" value="([^"]+)"', page.text)  # the logout form's, as on every page
    assert m, "a logged-in page carries the session's CSRF value in its forms"
    return c, m.group(1)


@pytest.fixture
def user(env: Env) -> tuple[TestClient, str]:
    return login(env.app)


def error_message(r: Any) -> str:
    m = re.search(r'id="error-message">(.*?)</p>', r.text, re.S)
    assert m, f"not an error page ({r.status_code}): {r.text[:300]}"
    return html.unescape(m.group(1))


def history_len(env: Env) -> int:
    return len(env.reg.history("digits"))


# -- reading -----------------------------------------------------------------------------------------
def test_every_read_page_answers_with_its_content(env: Env) -> None:
    c = client(env.app)
    a, b = env.run_a, env.run_b
    pages = {
        "/": ["Overview", "digits", a[:12]],
        "/runs": ["Runs", "2 matching", a[:12], b[:12], "baseline", "team=vision"],
        f"/runs/{a}": [a, "baseline", "team=vision", "curve-loss", "curve-accuracy", "digits</a> v1"],
        f"/runs/compare?ids={a}&ids={b}": ["Compare 2 runs", a[:12], b[:12], "lr"],
        "/models": ["Models", "digits"],
        "/models/digits": ["Model digits", "production → v1", 'data-version="2"', a[:12]],
        "/models/digits/compare?a=1&b=2": ["digits: v1 against v2"],
        "/deployments/digits": ["Deployment digits", "input drift on &lt;b&gt;digits&lt;/b&gt;"],
    }
    for path, wanted in pages.items():
        r = c.get(path)
        assert r.status_code == 200, (path, r.status_code, r.text[:500])
        assert r.headers["content-type"].startswith("text/html"), path
        for w in wanted:
            assert w in r.text, f"{path} lacks {w!r}"
    maps = c.get("/deployments/digits/maps")
    assert maps.status_code == 200 and maps.headers["content-type"].startswith("text/html")
    js = c.get("/assets/uPlot.iife.min.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"] and len(js.content) > 10_000
    css = c.get("/static/ui.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css") and "header.top" in css.text


def test_run_ids_stand_beside_run_names(env: Env) -> None:
    c = client(env.app)
    short = re.escape(env.run_a[:12])
    for path in ("/", "/runs", f"/runs/compare?ids={env.run_a}&ids={env.run_b}", "/models/digits"):
        text = c.get(path).text
        assert re.search(rf"<code>{short}[0-9a-f]*</code>(</a>)?\s*(<span[^>]*>)?baseline", text), path


def test_pages_carry_the_security_headers(env: Env) -> None:
    c = client(env.app)
    for path in ("/", "/runs", "/models/digits", "/nope", "/runs?sort=bogus", "/assets/uPlot.iife.min.js",
                 "/static/ui.css", "/deployments/digits/maps"):
        r = c.get(path)
        assert r.headers.get("x-frame-options") == "DENY", path
        assert r.headers.get("x-content-type-options") == "nosniff", path
        csp = r.headers.get("content-security-policy", "")
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
        assert "http" not in csp and "*" not in csp, f"{path}: CSP names other hosts: {csp}"


def test_runs_list_filters_and_sorts(env: Env) -> None:
    c = client(env.app)
    r = c.get("/runs", params={"q": "vision"})
    assert r.status_code == 200 and "1 matching" in r.text and env.run_a[:12] in r.text
    assert env.run_b[:12] not in r.text
    r = c.get("/runs", params={"q": "100%_"})  # LIKE wildcards are literal text
    assert r.status_code == 200 and "0 matching" in r.text
    r = c.get("/runs", params={"sort": "name", "dir": "asc"})
    assert r.status_code == 200
    assert r.text.index(ESCAPED_EVIL) < r.text.index("baseline")  # "<" sorts before "b"


# -- errors --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("path", "status", "message"), [
    ("/models/nosuch", 404, "no model 'nosuch'"),
    ("/models/nosuch/compare?a=1&b=2", 404, "nosuch"),
    ("/models/digits/compare?a=1&b=1", 400, "pick two different versions to compare"),
    ("/models/digits/compare?a=1&b=99", 404, "no version 99"),
    ("/deployments/nosuch", 404, "no model 'nosuch'"),
    ("/runs/0000deadbeef", 404, "0000deadbeef"),
    ("/runs?sort=bogus", 400, "sort must be one of created, name, status, data, model, val, test, epochs, "
                              "got 'bogus'"),
    ("/runs?status=bogus", 400, "status must be one of"),
    ("/runs?page=0", 400, "page must be in 1..1000000, got 0"),
    ("/runs?page=x", 400, "page must be a whole number, got 'x'"),
    ("/runs/compare?ids=aaa", 400, "compare 2 to 5 runs (tick them in the runs table), got 1"),
    ("/runs/compare?" + "&".join(f"ids=r{i}" for i in range(6)), 400, "compare 2 to 5 runs"
                                                                      " (tick them in the runs table), got 6"),
    ("/runs/compare", 400, "got 0"),
    ("/deployments/digits?range=3y", 400, "range must be one of 15m, 1h, 6h, 24h, 7d, got '3y'"),
    ("/deployments/digits?alerts=lots", 400, "alerts must be a whole number, got 'lots'"),
    ("/no/such/page", 404, "no such page"),
    ("/assets/evil.js", 404, "no asset 'evil.js'"),
    ("/assets/..%2F..%2Fsettings.py", 404, "no"),
    ("/static/..%2Fapp.py", 404, "no"),
])
def test_errors_are_pages_with_status_and_message(env: Env, path: str, status: int, message: str) -> None:
    r = client(env.app).get(path)
    assert r.status_code == status, (path, r.status_code, r.text[:400])
    assert message in error_message(r)
    assert r.headers.get("x-frame-options") == "DENY"


def test_the_same_run_twice_and_unknown_runs_are_refused(env: Env) -> None:
    c = client(env.app)
    r = c.get("/runs/compare", params=[("ids", env.run_a), ("ids", env.run_a[:8])])
    assert r.status_code == 400 and error_message(r) == "the same run is named twice"
    r = c.get("/runs/compare", params=[("ids", env.run_a), ("ids", "ffffffffffff")])
    assert r.status_code == 404 and "ffffffffffff" in error_message(r)


def test_wrong_method_is_405_page(env: Env) -> None:
    r = client(env.app).delete("/models/digits")
    assert r.status_code == 405 and "method DELETE not allowed" in error_message(r)


# -- login ---------------------------------------------------------------------------------------------
def test_login_with_wrong_token_is_401(env: Env) -> None:
    c = client(env.app)
    assert c.get("/login").status_code == 200
    for token in ("nope", "", TOKEN + "x", TOKEN[:-1]):
        r = c.post("/login", data={"token": token})
        assert r.status_code == 401 and "wrong token" in r.text
        assert COOKIE not in r.cookies and "set-cookie" not in r.headers


def test_login_sets_a_strict_httponly_cookie_and_logout_clears_it(env: Env) -> None:
    c = client(env.app)
    r = c.post("/login", data={"token": TOKEN, "next": "/runs"})
    assert r.status_code == 303 and r.headers["location"] == "/runs"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower() and "path=/" in cookie.lower()
    session = c.cookies.get(COOKIE)
    assert session and env.app.state.gate.session(session) is not None
    page = c.get(f"/runs/{env.run_a}")
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
    assert "Log out" in page.text and 'id="edit-run"' in page.text
    r = c.post("/logout", data={"csrf": csrf})
    assert r.status_code == 303
    gone = r.headers["set-cookie"].lower()
    assert gone.startswith(f"{COOKIE}=") and ("max-age=0" in gone or "expires=" in gone)
    assert env.app.state.gate.session(session) is None  # the server forgot it, not only the browser
    # the old cookie replayed by hand opens nothing
    replay = client(env.app)
    replay.cookies.set(COOKIE, session)
    r = replay.post("/models/digits/alias", data={"csrf": csrf, "alias": "replayed", "version": "2",
                                                  "reason": "replay"})
    assert r.status_code == 401 and "replayed" not in env.reg.model("digits").aliases


@pytest.mark.parametrize("nxt", ["//evil.example/", "https://evil.example/", "/\\evil.example", "\\\\evil.example"])
def test_login_never_redirects_to_another_site(env: Env, nxt: str) -> None:
    r = client(env.app).post("/login", data={"token": TOKEN, "next": nxt})
    assert r.status_code == 303
    loc = r.headers["location"]
    assert loc.startswith("/") and not loc.startswith(("//", "/\\")) and "\t" not in loc, loc


def test_login_from_another_site_is_refused(env: Env) -> None:
    r = client(env.app).post("/login", data={"token": TOKEN}, headers={"origin": "http://evil.example"})
    assert r.status_code == 403 and "set-cookie" not in r.headers


# -- action guards -------------------------------------------------------------------------------------
def _alias_form(csrf: str, **over: str) -> dict[str, str]:
    return {"csrf": csrf, "alias": "staging", "version": "2", "reason": "guard test", **over}


def test_refused_actions_change_nothing(env: Env, user: tuple[TestClient, str]) -> None:
    c, csrf = user
    before = history_len(env)
    aliases_before = env.reg.model("digits").aliases
    anon = client(env.app)
    cases: list[tuple[int, str, Any]] = [
        (401, "log in with the token first", lambda: anon.post("/models/digits/alias", data=_alias_form(csrf))),
        (403, "CSRF value does not match", lambda: c.post("/models/digits/alias", data=_alias_form("wrong"))),
        (403, "CSRF value does not match",
         lambda: c.post("/models/digits/alias", data={k: v for k, v in _alias_form(csrf).items() if k != "csrf"})),
        (403, "Origin: http://evil.example", lambda: c.post(
            "/models/digits/alias", data=_alias_form(csrf), headers={"origin": "http://evil.example"})),
        (403, "Origin: null", lambda: c.post("/models/digits/alias", data=_alias_form(csrf),
                                             headers={"origin": "null"})),
        (403, "Sec-Fetch-Site: cross-site", lambda: c.post(
            "/models/digits/alias", data=_alias_form(csrf), headers={"sec-fetch-site": "cross-site"})),
        (403, "Sec-Fetch-Site: same-site", lambda: c.post(
            "/models/digits/alias", data=_alias_form(csrf), headers={"sec-fetch-site": "same-site"})),
        (415, "not application/json", lambda: c.post("/models/digits/alias", json=_alias_form(csrf))),
        (415, "not multipart/form-data", lambda: c.post("/models/digits/alias", data=_alias_form(csrf),
                                                       files={"f": ("a.txt", b"x")})),
        (413, "form over 64 KiB", lambda: c.post(
            "/models/digits/alias", content=("csrf=" + csrf + "&reason=" + "x" * (65 * 1024)).encode(),
            headers={"content-type": "application/x-www-form-urlencoded"})),
        (400, "say why (reason)", lambda: c.post("/models/digits/alias", data=_alias_form(csrf, reason="  "))),
        (400, "at most 500", lambda: c.post("/models/digits/alias", data=_alias_form(csrf, reason="x" * 501))),
        (400, "version must be a whole number from 0 to 2147483647, got 'two'",
         lambda: c.post("/models/digits/alias", data=_alias_form(csrf, version="two"))),
        (404, "no version 9", lambda: c.post("/models/digits/alias", data=_alias_form(csrf, version="9"))),
        (400, "not an alias", lambda: c.post("/models/digits/alias", data=_alias_form(csrf, alias="<b>x</b>"))),
        (400, "reserved", lambda: c.post("/models/digits/alias", data=_alias_form(csrf, alias="latest"))),
        (404, "no model 'nosuch'", lambda: c.post("/models/nosuch/alias", data=_alias_form(csrf))),
        (405, "method GET not allowed", lambda: c.get("/models/digits/alias", params=_alias_form(csrf))),
        (400, "the form is not UTF-8", lambda: c.post(
            "/models/digits/alias", content=b"csrf=" + csrf.encode() + b"&reason=\xff\xfe",
            headers={"content-type": "application/x-www-form-urlencoded"})),
    ]
    for status, message, send in cases:
        r = send()
        assert r.status_code == status, (message, r.status_code, r.text[:400])
        assert message in error_message(r), (message, error_message(r))
    assert history_len(env) == before
    assert env.reg.model("digits").aliases == aliases_before


def test_move_alias_records_reason_and_actor(env: Env, user: tuple[TestClient, str]) -> None:
    c, csrf = user
    r = c.post("/models/digits/alias", data=_alias_form(csrf, alias="blue", version="v2", reason="ship v2 to blue"),
               headers={"origin": BASE, "sec-fetch-site": "same-origin"})
    assert r.status_code == 303, r.text
    assert r.headers["location"].startswith("/models/digits?ok=")
    assert env.reg.model("digits").aliases["blue"] == 2
    ev = env.reg.history("digits")[-1]
    assert (ev.kind, ev.alias, ev.to_version, ev.reason) == ("alias", "blue", 2, "ship v2 to blue")
    assert ev.actor == env.reg.actor and ev.actor
    page = c.get(r.headers["location"])
    assert "digits@blue now points at v2" in page.text and "ship v2 to blue" in page.text
    r = c.post("/models/digits/alias", data=_alias_form(csrf, alias="blue", version="1", reason="back to v1"))
    assert r.status_code == 303 and env.reg.model("digits").aliases["blue"] == 1
    assert "digits@blue moved from v2 to v1" in c.get(r.headers["location"]).text
    ev = env.reg.history("digits")[-1]
    assert (ev.from_version, ev.to_version, ev.reason) == (2, 1, "back to v1")
    # the same move again: no new event, said so
    before = history_len(env)
    r = c.post("/models/digits/alias", data=_alias_form(csrf, alias="blue", version="1", reason="again"))
    assert r.status_code == 303 and "already+pointed" in r.headers["location"]
    assert history_len(env) == before


@pytest.mark.parametrize(("path", "field", "value"), [
    ("/models/digits/alias", "version", "99999999999999999999"),  # past SQLite's INTEGER
    ("/models/digits/alias", "version", "²"),  # str.isdigit() says yes, int() says no
    ("/models/digits/traffic", "weights", "production=²"),
    ("/models/digits/rollout", "min_requests", "²"),
    ("/alerts/99999999999999999999/ack", "reason", "x"),
])
def test_absurd_numbers_are_client_errors(env: Env, user: tuple[TestClient, str], path: str, field: str,
                                          value: str) -> None:
    c, csrf = user
    before = history_len(env)
    form = {**_alias_form(csrf), "weights": "production=100", "steps": "50,100", "min_requests": "100000",
            field: value}
    r = c.post(path, data=form)
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    assert error_message(r)
    assert history_len(env) == before
    assert not env.app.state.rollouts.running_here("digits")


def test_dns_rebinding_host_is_refused(env: Env, user: tuple[TestClient, str]) -> None:
    c, csrf = user
    anon = client(env.app)
    for path in ("/", "/runs", f"/runs/{env.run_a}", "/models/digits", "/login"):
        r = anon.get(path, headers={"host": "evil.example"})
        assert r.status_code == 421, path
        assert "does not answer for host 'evil.example'" in error_message(r)
        assert "baseline" not in r.text and "team=vision" not in r.text and "production" not in r.text
    r = anon.get("/", headers={"host": "10.1.2.3:8800"})
    assert r.status_code == 421 and "address 10.1.2.3" in error_message(r)
    before = history_len(env)
    r = c.post("/models/digits/alias", data=_alias_form(csrf), headers={"host": "evil.example"})
    assert r.status_code == 421 and history_len(env) == before
    r = anon.post("/login", data={"token": TOKEN}, headers={"host": "evil.example"})
    assert r.status_code == 421 and "set-cookie" not in r.headers
    for ok in ("127.0.0.1:8800", "localhost:8800", "[::1]:8800"):
        assert anon.get("/runs", headers={"host": ok}).status_code == 200, ok


# -- --auth --------------------------------------------------------------------------------------------
def test_auth_mode_asks_readers_to_log_in(env: Env) -> None:
    app = create_app(env.reg, token=TOKEN, auth=True, hosts={"127.0.0.1"})
    c = client(app)
    for path in ("/runs", "/", f"/runs/{env.run_a}", "/deployments/digits/maps"):
        r = c.get(path)
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next="), path
        assert env.run_a[:12] not in r.text
    assert c.get("/login").status_code == 200
    assert c.get("/static/ui.css").status_code == 200  # the login page's own style
    r = c.post("/alerts/1/ack", data={"csrf": "x"})
    assert r.status_code == 401
    r = c.post("/login", data={"token": TOKEN, "next": "/runs"})
    assert r.status_code == 303 and r.headers["location"] == "/runs"
    r = c.get("/runs")
    assert r.status_code == 200 and env.run_a[:12] in r.text
    # a session of the other app is not a session of this one
    other, _ = login(env.app)
    stranger = client(app)
    stranger.cookies.set(COOKIE, other.cookies[COOKIE])
    assert stranger.get("/runs").status_code == 303


# -- traffic -------------------------------------------------------------------------------------------
def test_set_traffic(env: Env, user: tuple[TestClient, str]) -> None:
    c, csrf = user
    env.reg.set_alias("digits", "green", 2, reason="for the traffic test")
    r = c.post("/models/digits/traffic", data={"csrf": csrf, "weights": "production=80, green=20",
                                               "reason": "split"})
    assert r.status_code == 303, r.text
    assert env.reg.traffic("digits").weights == {"production": 80, "green": 20}
    ev = env.reg.history("digits")[-1]
    assert (ev.kind, ev.reason) == ("traffic", "split")
    r = c.post("/models/digits/traffic", data={"csrf": csrf, "weights": "production=100", "reason": "all back"})
    assert r.status_code == 303 and "production+100%25" in r.headers["location"]
    assert env.reg.traffic("digits").weights == {"production": 100}


@pytest.mark.parametrize(("weights", "status", "message"), [
    ("production=abc", 400, "the weight of 'production' must be a whole number from 0 to 2147483647, got 'abc'"),
    ("production", 400, "weights are ALIAS=PERCENT separated by commas, got 'production'"),
    ("", 400, "give at least one ALIAS=PERCENT"),
    ("production=90", 400, "must sum to 100"),
    ("production=50,nosuch=50", 404, "no alias 'nosuch'"),
])
def test_bad_traffic_is_refused(env: Env, user: tuple[TestClient, str], weights: str, status: int,
                                message: str) -> None:
    c, csrf = user
    before = (history_len(env), env.reg.traffic("digits").weights)
    r = c.post("/models/digits/traffic", data={"csrf": csrf, "weights": weights, "reason": "bad"})
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert message in error_message(r)
    assert (history_len(env), env.reg.traffic("digits").weights) == before


# -- alerts --------------------------------------------------------------------------------------------
def test_acknowledge_alert(env: Env, user: tuple[TestClient, str]) -> None:
    c, csrf = user
    aid = env.alert_id
    r = c.post(f"/alerts/{aid}/ack", data={"csrf": csrf, "reason": "looking at it"})
    assert r.status_code == 303, r.text
    assert r.headers["location"].startswith("/deployments/digits?ok=")
    with env.reg.engine.connect() as conn:
        row = conn.execute(sa.select(alerts).where(alerts.c.id == aid)).mappings().one()
    assert row["acknowledged_by"] == env.reg.actor and row["acknowledged_at"] is not None
    assert row["ack_reason"] == "looking at it"
    ev = env.reg.history("digits")[-1]
    assert (ev.kind, ev.reason, ev.details["alert_id"]) == ("ack", "looking at it", aid)
    before = history_len(env)
    again = c.post(f"/alerts/{aid}/ack", data={"csrf": csrf})
    assert again.status_code in (400, 409) and "already acknowledged" in error_message(again)
    r = c.post("/alerts/424242/ack", data={"csrf": csrf})
    assert r.status_code == 404 and "no alert 424242" in error_message(r)
    r = c.post("/alerts/abc/ack", data={"csrf": csrf})
    assert r.status_code == 404 and "no alert 'abc'" in error_message(r)
    r = c.post(f"/alerts/{aid}/ack", data={"csrf": "stale"})
    assert r.status_code == 403
    assert history_len(env) == before


# -- runs ----------------------------------------------------------------------------------------------
def test_edit_run_name_and_tags(env: Env, user: tuple[TestClient, str]) -> None:
    c, csrf = user
    rid = env.run_a
    form = c.get(f"/runs/{rid}").text
    assert 'id="edit-run"' in form and "team=vision" in form
    r = c.post(f"/runs/{rid}/edit", data={"csrf": csrf, "name": "baseline",
                                          "tags": "team=vision\r\nstage=final\n\n  owner=ana b  "})
    assert r.status_code == 303 and r.headers["location"].startswith(f"/runs/{rid}?ok=")
    run = env.store.get(rid)
    assert run.name == "baseline"
    assert run.tags == {"team": "vision", "stage": "final", "owner": "ana b"}
    r = c.post(f"/runs/{rid}/edit", data={"csrf": csrf, "name": "baseline", "tags": "team=vision\nstage=final"})
    assert r.status_code == 303 and env.store.get(rid).tags == {"team": "vision", "stage": "final"}


@pytest.mark.parametrize(("name", "tags", "message"), [
    ("renamed", "bad key!=1", "tag key 'bad key!'"),
    ("renamed", "no-equals-sign", "tags wants KEY=VALUE, got 'no-equals-sign'"),
    ("x" * 129, "team=vision", "at most 128 characters"),
])
def test_bad_run_edit_changes_nothing(env: Env, user: tuple[TestClient, str], name: str, tags: str,
                                      message: str) -> None:
    c, csrf = user
    before = env.store.get(env.run_a)
    r = c.post(f"/runs/{env.run_a}/edit", data={"csrf": csrf, "name": name, "tags": tags})
    assert r.status_code == 400 and message in error_message(r)
    after = env.store.get(env.run_a)
    assert (after.name, after.tags) == (before.name, before.tags)


def test_edit_unknown_run_is_404_and_anonymous_edit_401(env: Env, user: tuple[TestClient, str]) -> None:
    c, csrf = user
    r = c.post("/runs/ffffffffffff/edit", data={"csrf": csrf, "name": "x"})
    assert r.status_code == 404 and "ffffffffffff" in error_message(r)
    r = client(env.app).post(f"/runs/{env.run_a}/edit", data={"csrf": csrf, "name": "hijacked"})
    assert r.status_code == 401 and env.store.get(env.run_a).name == "baseline"


# -- escaping ------------------------------------------------------------------------------------------
def test_hostile_text_is_escaped(env: Env, user: tuple[TestClient, str]) -> None:
    c, csrf = user
    evil_reason = '<img src=x onerror="alert(2)"><script>alert(3)</script>'
    r = c.post("/models/digits/alias", data=_alias_form(csrf, alias="red", version="1", reason=evil_reason))
    assert r.status_code == 303
    assert env.reg.history("digits")[-1].reason == evil_reason  # stored as given, shown as text
    for path in ("/", "/runs", f"/runs/{env.run_b}", f"/runs/compare?ids={env.run_a}&ids={env.run_b}",
                 "/models/digits"):
        text = c.get(path).text
        assert EVIL_NAME not in text and "alert(1)</script>" not in text, path
        assert "<img src=x" not in text and "<script>alert(3)" not in text, path
        if path != "/models/digits":
            assert ESCAPED_EVIL in text, path
    model_page = c.get("/models/digits").text
    assert "&lt;img src=x onerror=&#34;alert(2)&#34;&gt;" in model_page
    # a run id that is markup is text on its error page
    r = c.get("/runs/<svg onload=alert(4)>")
    assert r.status_code == 404 and "<svg" not in r.text and "&lt;svg onload=alert(4)&gt;" in r.text
    r = c.get("/models/digits", params={"ok": "<script>alert(5)</script>"})
    assert "<script>alert(5)" not in r.text and "&lt;script&gt;alert(5)" in r.text


# -- rollout -------------------------------------------------------------------------------------------
def test_bad_rollout_forms_are_400(env: Env, user: tuple[TestClient, str]) -> None:
    c, csrf = user
    env.reg.set_alias("digits", "candidate", 2, reason="for the rollout tests")
    before = history_len(env)
    for over, message in (({"steps": "10,abc"}, "steps are percents separated by commas, got '10,abc'"),
                          ({"steps": "50"}, "must end at 100"),
                          ({"min_requests": "-5"},
                           "min_requests must be a whole number from 0 to 2147483647, got '-5'"),
                          ({"gates": "bogus<=1"}, "unknown gate 'bogus'")):
        form = {"csrf": csrf, "steps": "50,100", "min_requests": "100000", "step_timeout_s": "600", **over}
        r = c.post("/models/digits/rollout", data=form)
        assert r.status_code == 400 and message in error_message(r), (over, r.status_code, r.text[:300])
    assert history_len(env) == before
    assert not env.app.state.rollouts.running_here("digits")


def _wait_stopped(env: Env, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while env.app.state.rollouts.running_here("digits"):
        assert time.monotonic() < deadline, "the UI's rollout thread did not stop after the abort"
        time.sleep(0.1)


def _stop_rollout(env: Env) -> None:
    """Whatever a failed assertion left: no rollout running, no thread of it."""
    from shipyard.update import rollout as ro

    st = ro.status(env.reg.engine, "digits")
    if st is not None and st["status"] == "running":
        ro.abort(env.reg, "digits", "test cleanup")
    _wait_stopped(env)


ROLLOUT_FORM = {"steps": "50,100", "min_requests": "100000", "step_timeout_s": "600"}  # offline_gate unticked


def test_rollout_started_from_the_ui_runs_and_aborts(env: Env, user: tuple[TestClient, str]) -> None:
    from shipyard.update import rollout as ro

    c, csrf = user
    env.reg.set_alias("digits", "candidate", 2, reason="rollout test")
    assert env.reg.model("digits").aliases["production"] == 1
    rollouts = env.app.state.rollouts
    try:
        r = c.post("/models/digits/rollout", data={"csrf": csrf, **ROLLOUT_FORM})
        assert r.status_code == 303, r.text
        assert "rollout+of+digits%40candidate+started" in r.headers["location"]
        assert rollouts.running_here("digits")
        st = ro.status(env.reg.engine, "digits")
        assert st is not None and st["status"] == "running"
        assert st["holder"] and st["lease"] == st["holder"]
        assert (st["candidate"], st["champion"], st["steps"]) == (2, 1, [50, 100])
        assert (st["config"]["min_requests"], st["config"]["step_timeout_s"]) == (100000, 600)
        assert not any(e.kind == "gate" and (e.details or {}).get("gate") == "offline"
                       for e in env.reg.history("digits")), "the unticked offline gate ran anyway"
        # a second start while this one runs is refused
        r = c.post("/models/digits/rollout", data={"csrf": csrf, **ROLLOUT_FORM})
        assert r.status_code == 409 and "already running" in error_message(r)
        deadline = time.monotonic() + 10  # the first step's split lands just after the start
        while env.reg.traffic("digits").weights != {"production": 50, "candidate": 50}:
            assert time.monotonic() < deadline, env.reg.traffic("digits")
            time.sleep(0.05)
        page = c.get("/models/digits").text
        assert 'id="abort-form"' in page and "<strong>running</strong>" in page

        ro.abort(env.reg, "digits", "test")
        _wait_stopped(env)
    finally:
        _stop_rollout(env)
    st = ro.status(env.reg.engine, "digits")
    assert st is not None and st["status"] == "aborted" and st["reason"] == "test"
    assert st["lease"] is None
    assert env.reg.traffic("digits").weights == {"production": 100}
    assert env.reg.model("digits").aliases["production"] == 1
    assert "digits" not in rollouts.errors
    r = c.post("/models/digits/rollout/abort", data={"csrf": csrf, "reason": "again"})
    assert r.status_code == 409 and "no rollout of digits is running" in error_message(r)
    r = c.post("/models/digits/rollout/resume", data={"csrf": csrf})
    assert r.status_code == 409 and "no rollout of digits to resume" in error_message(r)


def test_rollout_aborted_from_the_ui(env: Env, user: tuple[TestClient, str]) -> None:
    from shipyard.update import rollout as ro

    c, csrf = user
    env.reg.set_alias("digits", "candidate", 2, reason="rollout test")
    try:
        r = c.post("/models/digits/rollout", data={"csrf": csrf, **ROLLOUT_FORM})
        assert r.status_code == 303, r.text
        r = c.post("/models/digits/rollout/abort", data={"csrf": csrf, "reason": ""})
        assert r.status_code == 400 and "say why" in error_message(r)
        r = client(env.app).post("/models/digits/rollout/abort", data={"csrf": csrf, "reason": "anonymous"})
        assert r.status_code == 401
        assert ro.status(env.reg.engine, "digits")["status"] == "running"  # type: ignore[index]
        r = c.post("/models/digits/rollout/abort", data={"csrf": csrf, "reason": "stop <now>"})
        assert r.status_code == 303 and "aborted+the+rollout+of+v2" in r.headers["location"]
        _wait_stopped(env)
    finally:
        _stop_rollout(env)
    st = ro.status(env.reg.engine, "digits")
    assert st is not None and (st["status"], st["reason"]) == ("aborted", "stop <now>")
    assert env.reg.traffic("digits").weights == {"production": 100}
    assert any(e.kind == "rollout" and e.reason == "aborted: stop <now>" for e in env.reg.history("digits"))


def test_rollout_of_production_itself_is_refused(env: Env, user: tuple[TestClient, str]) -> None:
    c, csrf = user
    env.reg.set_alias("digits", "candidate", 1, reason="same as production")
    try:
        r = c.post("/models/digits/rollout", data={"csrf": csrf, **ROLLOUT_FORM})
        assert r.status_code == 400 and "already production" in error_message(r)
        assert not env.app.state.rollouts.running_here("digits")
    finally:
        env.reg.set_alias("digits", "candidate", 2, reason="back")
        _stop_rollout(env)
