"""`shipyard ui` as a person uses it, in the Debian Chromium, over the database the quickstart
filled: every page loads with no console error and nothing from another host, its charts draw,
the runs table sorts and filters, a run is renamed and tagged, an alias moved from the UI shows up
in `shipyard models history`, a cross-site form post is refused, and the basics of access (a skip
link and keyboard focus, a label on every control, text contrast) hold. Screenshots of the main
pages are written to test-artifacts/ (the README shows them)."""

from __future__ import annotations

import contextlib
import http.server
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shipyard.registry import Registry
from shipyard.settings import Settings

from ..browser import CONTRAST_JS, MIN_CONTRAST, UNLABELLED_JS, chromium, console_errors, requested_urls
from ..conftest import SHIPYARD, run_cli

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
TOKEN = "ui-test-token-7f3a"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ui(quickstart) -> Iterator[tuple[str, dict[str, str]]]:  # type: ignore[no-untyped-def]
    env = {**quickstart[0], "SHIPYARD_TOKEN": TOKEN}
    port = _free_port()
    proc = subprocess.Popen([*SHIPYARD, "ui", "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                    break
            assert time.monotonic() < deadline, "shipyard ui did not come up"
            time.sleep(0.2)
        yield base, env
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        if proc.stderr:
            proc.stderr.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    driver = chromium()
    try:
        yield driver
    finally:
        driver.quit()


def _runs(env: dict[str, str]) -> list[dict[str, Any]]:
    return json.loads(run_cli(["runs", "list", "--json"], env).stdout.strip().splitlines()[-1])["runs"]


def _open(driver: Any, url: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    WebDriverWait(driver, 30).until(lambda d: d.execute_script("return document.readyState") == "complete")


def _login(driver: Any, base: str) -> None:
    from selenium.webdriver.common.by import By

    _open(driver, f"{base}/login?next=/models/digits")
    driver.find_element(By.ID, "token").send_keys(TOKEN)
    driver.find_element(By.CSS_SELECTOR, "form[action='/login'] button").click()
    _wait_path(driver, "/models/digits")


def _wait_path(driver: Any, path: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 30).until(lambda d: d.current_url.split("?")[0].endswith(path), message=path)
    WebDriverWait(driver, 30).until(lambda d: d.execute_script("return document.readyState") == "complete")


def test_every_page_loads_clean_with_its_charts_and_nothing_from_another_host(ui, browser) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base, env = ui
    runs = _runs(env)
    assert len(runs) >= 2
    first, second = runs[0]["run_id"], runs[1]["run_id"]
    pages = {"overview": "/", "runs": "/runs", "run": f"/runs/{first}", "compare-runs":
             f"/runs/compare?ids={first}&ids={second}", "models": "/models", "model": "/models/digits",
             "compare-versions": "/models/digits/compare?a=1&b=2", "deployment": "/deployments/digits"}
    requested_urls(browser)  # drain
    for shot, path in pages.items():
        _open(browser, base + path)
        figures = browser.find_elements(By.CSS_SELECTOR, "figure.sy-chart")
        for fig in figures:  # every chart drew with uPlot (a canvas) or says it has no data
            WebDriverWait(browser, 20).until(
                lambda d, f=fig: f.find_elements(By.CSS_SELECTOR, "canvas") or f.find_elements(
                    By.CSS_SELECTOR, ".sy-empty"), message=f"{path}: {fig.get_attribute('id')} not drawn")
            assert not fig.get_attribute("data-error"), (path, fig.get_attribute("data-error"))
        assert not console_errors(browser), (path, console_errors(browser))
        assert run_id_shown(browser, path, first) if shot in ("runs", "run", "compare-runs", "overview") else True
        if shot == "deployment":
            WebDriverWait(browser, 30).until(lambda d: "loading" not in d.find_element(By.ID, "maps").text)
            drawn = browser.execute_script(
                "return [...document.querySelectorAll('figure.sy-chart')].map(f => [f.id, +f.dataset.points])")
            counts = dict(drawn)
            for chart in ("chart-rps", "chart-latency", "chart-split", "chart-drift", "chart-accuracy",
                          "chart-versions", "chart-weights"):
                assert counts.get(chart, 0) > 0, (chart, counts)
        if shot in ("run", "compare-runs"):
            assert browser.find_elements(By.CSS_SELECTOR, "#curve-loss canvas"), shot
        ARTIFACTS.mkdir(exist_ok=True)
        _full_page_screenshot(browser, ARTIFACTS / f"ui-{shot}.png")
    urls = requested_urls(browser)
    assert urls and all(u.startswith(base) or u.startswith("data:") for u in urls), \
        [u for u in urls if not u.startswith(base)]
    assert any(u.endswith("/assets/uPlot.iife.min.js") for u in urls)  # the vendored library, from this host


def _full_page_screenshot(driver: Any, path: Path) -> None:
    """The whole page, not only the window: a page's charts sit below the fold."""
    import base64

    height = driver.execute_script("return document.documentElement.scrollHeight")
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"captureBeyondViewport": True, "clip": {
        "x": 0, "y": 0, "width": 1300, "height": min(int(height), 6000), "scale": 1}})
    path.write_bytes(base64.b64decode(shot["data"]))
    assert path.stat().st_size > 10_000


def run_id_shown(driver: Any, path: str, run_id: str) -> bool:
    """A run's id (its first 12 characters at least) is on the page beside its name."""
    return run_id[:12] in driver.page_source


def test_the_runs_table_sorts_filters_and_a_run_is_renamed_and_tagged(ui, browser) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    base, env = ui
    _login(browser, base)
    run_id = _runs(env)[-1]["run_id"]
    _open(browser, f"{base}/runs/{run_id}")
    name = browser.find_element(By.ID, "run-name")
    name.clear()
    name.send_keys("baseline <b>mlp</b>")
    tags = browser.find_element(By.ID, "run-tags")
    tags.clear()
    tags.send_keys("team=vision\nstage=first")
    browser.find_element(By.CSS_SELECTOR, "#edit-run button").click()
    _wait_path(browser, f"/runs/{run_id}")
    assert "saved" in browser.find_element(By.CSS_SELECTOR, ".flash").text
    shown = [r for r in _runs(env) if r["run_id"] == run_id][0]
    assert shown["name"] == "baseline <b>mlp</b>" and shown["tags"] == {"team": "vision", "stage": "first"}
    assert "<b>mlp</b>" not in browser.page_source.replace("&lt;b&gt;mlp&lt;/b&gt;", "")  # text, not markup

    _open(browser, f"{base}/runs")
    browser.find_element(By.CSS_SELECTOR, "a[data-sort='val']").click()
    _wait_path(browser, "/runs")

    def column(index: int) -> list[str]:
        return [td.text for td in browser.find_elements(By.CSS_SELECTOR, f"#runs-table tbody tr td:nth-child({index})")]

    val = [float(v.rstrip("%")) for v in column(7) if v != "–"]
    assert len(val) >= 2 and val == sorted(val, reverse=True), val
    assert browser.find_element(By.CSS_SELECTOR, "th[aria-sort]").get_attribute("aria-sort") == "descending"
    browser.find_element(By.CSS_SELECTOR, "a[data-sort='val']").click()  # again: ascending
    _wait_path(browser, "/runs")
    val = [float(v.rstrip("%")) for v in column(7) if v != "–"]
    assert val == sorted(val), val

    box = browser.find_element(By.ID, "f-q")
    box.clear()
    box.send_keys("stage=first")  # a tag's text
    browser.find_element(By.CSS_SELECTOR, "form.filters button").click()
    _wait_path(browser, "/runs")
    rows = browser.find_elements(By.CSS_SELECTOR, "#runs-table tbody tr[data-run]")
    assert [r.get_attribute("data-run") for r in rows] == [run_id]
    assert "1 matching" in browser.find_element(By.ID, "runs-total").text


def test_an_alias_moved_in_the_ui_is_in_models_history_as_the_cli_records_it(ui, browser) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    base, env = ui
    _login(browser, base)
    browser.find_element(By.ID, "al-alias").clear()
    browser.find_element(By.ID, "al-alias").send_keys("staging")
    Select(browser.find_element(By.ID, "al-version")).select_by_value("1")
    browser.find_element(By.ID, "al-reason").send_keys("compare v1 in staging (ui test)")
    browser.find_element(By.CSS_SELECTOR, "#alias-form button").click()
    _wait_path(browser, "/models/digits")
    assert browser.find_element(By.CSS_SELECTOR, ".flash").text == "digits@staging now points at v1"
    history = json.loads(run_cli(["models", "history", "digits", "--json"], env).stdout.strip().splitlines()[-1])
    events = history["events"]
    moved = [e for e in events if e["kind"] == "alias" and e["alias"] == "staging"]
    assert moved and moved[-1]["to_version"] == 1 and moved[-1]["reason"] == "compare v1 in staging (ui test)"
    assert moved[-1]["actor"]  # who did it
    row = browser.find_element(By.CSS_SELECTOR, "#history-table tbody tr[data-kind='alias']")
    assert "compare v1 in staging (ui test)" in row.text


class _Attacker(http.server.BaseHTTPRequestHandler):
    target = ""

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        page = (f'<html><body><form id="f" method="post" action="{self.target}/models/digits/alias">'
                '<input name="alias" value="production"><input name="version" value="1">'
                '<input name="reason" value="evil"><input name="csrf" value="guess"></form>'
                '<script>document.getElementById("f").submit()</script></body></html>').encode()
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, *args: Any) -> None:
        pass


def test_a_cross_site_form_post_is_refused_even_with_a_session(ui, browser) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    base, env = ui
    _login(browser, base)  # the victim is logged in
    _Attacker.target = base
    evil = http.server.ThreadingHTTPServer(("127.0.0.2", 0), _Attacker)  # another site (another origin)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        browser.get(f"http://127.0.0.2:{evil.server_address[1]}/")
        WebDriverWait(browser, 30).until(lambda d: d.current_url.startswith(base))
        WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.ID, "error-message"))
        message = browser.find_element(By.ID, "error-message").text
        assert "cross-site" in message or "log in" in message, message
    finally:
        evil.shutdown()
        evil.server_close()
    history = json.loads(run_cli(["models", "history", "digits", "--json"], env).stdout.strip().splitlines()[-1])
    events = history["events"]
    assert not [e for e in events if e.get("reason") == "evil"]
    assert Registry(settings=Settings(home=Path(env["SHIPYARD_HOME"]))).get("digits@production").version == 2
    # the same post from a script that stole nothing: no session, a forged Origin
    r = httpx.post(f"{base}/models/digits/alias", data={"alias": "production", "version": "1", "reason": "evil"},
                   headers={"origin": "http://evil.example"})
    assert r.status_code == 403 and "cross-site" in r.text


def test_keyboard_labels_and_contrast(ui, browser) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    base, _ = ui
    _login(browser, base)
    for path in ("/", "/runs", "/models/digits", "/deployments/digits"):
        _open(browser, base + path)
        assert browser.execute_script(UNLABELLED_JS) == [], path
        assert browser.execute_script(CONTRAST_JS, MIN_CONTRAST) == [], path
    _open(browser, f"{base}/runs")
    body = browser.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.TAB)
    skip = browser.switch_to.active_element
    assert skip.text == "Skip to content"
    skip.send_keys(Keys.ENTER)
    assert browser.switch_to.active_element.get_attribute("id") == "main"
    for _ in range(3):  # onward from the content: the filter form's controls, in order
        browser.switch_to.active_element.send_keys(Keys.TAB)
    focused = browser.switch_to.active_element
    assert focused.tag_name in ("input", "select", "button", "a"), focused.tag_name
