"""Monitoring, step 4: the server's dashboard opened in a real headless Chromium under traffic (its
charts hold data points, it refreshes by itself, nothing leaves loopback; a screenshot is kept
under test-artifacts/), the self-contained HTML report, and `shipyard trace`. Both pages grey an
accuracy estimate the evaluator cannot believe (v1's inverted digits) and say why, and not one it
can (v2's calm digits)."""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from html import escape
from pathlib import Path

import httpx
import numpy as np
import pytest

from harness.bundles import make_bundle, traffic_data
from shipyard import charts
from shipyard.monitor import stats
from shipyard.monitor.api import Monitor
from shipyard.registry import Registry
from shipyard.settings import Settings

from ..conftest import run_cli
from ..serving import serve, server_env
from ..waiting import wait_for

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHARTS = ("chart-rps", "chart-latency", "chart-errors", "chart-split", "chart-drift", "chart-accuracy",
          "chart-versions")


def _row(html: str, version: str) -> str:
    """The current-state table's row of one version."""
    m = re.search(rf'<tr data-version="{version}">.*?</tr>', html, re.S)
    assert m, f"no row for v{version}"
    return m.group(0)


def _reliability(reg: Registry) -> dict[str, dict]:  # type: ignore[type-arg]
    """Each version's accuracy state once v2 has an evaluated window (v1's newest is the inverted one)."""
    def ready() -> dict[str, dict] | None:  # type: ignore[type-arg]
        versions = Monitor(reg).status("digits")["versions"]
        return {v: s["accuracy"] for v, s in versions.items()} if versions.get("2", {}).get("windows") else None
    return wait_for(ready, "v2's first evaluated window")


def _send(base: str, images: np.ndarray, prefix: str) -> None:
    with httpx.Client() as c:
        for i in range(0, len(images), 10):
            chunk = (images[i:i + 10].reshape(-1, 784) / 255.0).astype(np.float32)
            doc = {"id": f"{prefix}-{i}", "inputs": [{"name": "input", "datatype": "FP32",
                                                      "shape": list(chunk.shape), "data": chunk.ravel().tolist()}]}
            assert c.post(f"{base}/v2/models/digits/infer", json=doc).status_code == 200


@pytest.fixture(scope="module")
def watched(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A served model with history: calm traffic, then inverted digits (a drift alarm and an
    alert), then labels, and an alias move to a second version. One server for the module."""
    tmp_path = tmp_path_factory.mktemp("watched")
    home = tmp_path / "home"
    reg = Registry(settings=Settings(home=home))
    reg.register(make_bundle(tmp_path / "a", reference=True), "digits", alias="production")
    reg.register(make_bundle(tmp_path / "b", seed=1, reference=True), "digits")
    images, labels = traffic_data()
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nname = "drift"\nkind = "drift"\nwindows = 1\n')
    env = server_env(home)
    with serve(home, "digits", "--window", "100", "--poll-s", "0.5", "--alerts", str(rules), env=env) as srv:
        _send(srv.base, images[:200], "calm")
        _send(srv.base, 255 - images[200:300], "inverted")
        feedback = [{"id": f"calm-{i}/{j}", "label": str(labels[i + j])} for i in range(0, 200, 10) for j in range(10)]
        r = httpx.post(f"{srv.base}/v2/models/digits/feedback", json={"feedback": feedback})
        assert r.json()["accepted"] == 200
        mon = Monitor(reg)
        deadline = time.monotonic() + 60
        while not mon.status("digits")["alerts"]:
            assert time.monotonic() < deadline, mon.status("digits")
            time.sleep(0.2)
        reg.set_alias("digits", "production", 2, reason="dashboard test")
        wait_for(lambda: [r["version"] for r in srv.health()["models"]["digits"]["routes"]] == [2],
                 "the server to follow the alias move to version 2")  # it polls the registry every 0.5 s
        _send(srv.base, images[300:400], "after-move")
        while stats.summary(reg.engine, "digits", since=0).requests < 40:  # written every 5 s
            assert time.monotonic() < deadline + 30
            time.sleep(0.2)
        yield srv, reg, env


def test_the_dashboard_shows_live_charts_in_a_real_browser_without_leaving_loopback(watched) -> None:  # type: ignore[no-untyped-def]
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    srv, reg, _ = watched
    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1300,1500", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"):
        opts.add_argument(arg)
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=opts)
    stop = threading.Event()

    def traffic() -> None:  # keeps the charts moving while the page is open
        images, _ = traffic_data()
        i = 0
        while not stop.is_set():
            _send(srv.base, images[i % 1000:i % 1000 + 10], f"live-{i}")
            i += 10
            time.sleep(0.05)

    t = threading.Thread(target=traffic, daemon=True)
    t.start()
    try:
        driver.get(f"{srv.base}/dashboard")
        wait = WebDriverWait(driver, 60, poll_frequency=0.25)
        def points() -> dict[str, int]:  # what each chart drew (uPlot on a canvas: counted by our charts.js)
            return {c: driver.execute_script("return ShipyardCharts.points(arguments[0])", c) for c in CHARTS}

        # serving statistics reach the database every 5 s: the page fills in as it refreshes
        wait.until(lambda d: all(n > 0 for n in points().values()),
                   message=f"charts without data: {points()}: {driver.find_element(By.ID, 'updated').text}")
        assert driver.find_elements(By.CSS_SELECTOR, "#chart-rps canvas")  # drawn by uPlot, not a blank figure
        moves = driver.find_elements(By.CSS_SELECTOR, ".sy-events-all li")  # the alias moves, listed
        assert any("production: v1→v2" in m.get_attribute("textContent") for m in moves)
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors
        assert "ALARM" in driver.find_element(By.ID, "content").text
        _reliability(reg)
        wait.until(lambda d: "(unreliable)" in d.find_element(By.ID, "content").text)  # v1's inverted window
        first = driver.find_element(By.ID, "updated").text
        wait.until(lambda d: d.find_element(By.ID, "updated").text != first)  # it refreshed by itself
        assert driver.find_element(By.ID, "updated").text.startswith("updated")
        ARTIFACTS.mkdir(exist_ok=True)
        assert driver.save_screenshot(str(ARTIFACTS / "dashboard.png"))
        urls = []
        for entry in driver.get_log("performance"):
            msg = json.loads(entry["message"])["message"]
            if msg["method"] == "Network.requestWillBeSent":
                urls.append(msg["params"]["request"]["url"])
        assert urls and all(u.startswith(srv.base) or u.startswith("data:") for u in urls), \
            [u for u in urls if not u.startswith(srv.base)]
    finally:
        stop.set()
        t.join(timeout=10)
        driver.quit()
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000


def test_the_report_is_one_self_contained_file_with_every_plot(watched, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, reg, env = watched
    out = json.loads(run_cli(["monitor", "report", "digits", "--html", str(tmp_path / "r.html"), "--since", "1h",
                              "--json"], env).stdout)
    html = Path(out["path"]).read_text()
    specs = charts.specs(html)
    for chart in CHARTS:
        assert any(y is not None for s in specs[chart]["series"] for _, y in s["points"]), chart
    # nothing to fetch: the chart library and the images are inline
    assert "uPlot" in html and "<script src" not in html and not re.search(r'(src|href)="(?!#|data:)', html)
    split = {s["label"] for s in specs["chart-split"]["series"]}
    assert split == {"v1", "v2"}, split  # served versions only: refusals are the error chart's own series
    assert [s["step"] for s in specs["chart-versions"]["series"]] == [True] and specs["chart-versions"]["y"]["integer"]
    assert len({json.dumps(s.get("range")) for s in specs.values()}) == 1  # one time range for the page
    assert "drift" in html and "production" in html and "dashboard test" in html
    acc = _reliability(reg)
    html = Path(json.loads(run_cli(["monitor", "report", "digits", "--html", str(tmp_path / "r2.html"), "--since",
                                    "1h", "--json"], env).stdout)["path"]).read_text()
    assert acc["1"]["estimated_reliable"] is False and acc["2"]["estimated_reliable"] is True, acc
    v1, v2 = _row(html, "1"), _row(html, "2")
    assert "(unreliable)" in v1 and escape(acc["1"]["estimated_reason"]) in v1
    assert "unreliable" not in v2 and "%" in v2
    assert "<th>mean</th>" in html and "window(s) not drawn on the estimate line" in html
    assert Monitor(reg).report("digits", tmp_path / "api.html").stat().st_size > 5000
    missing = run_cli(["monitor", "report", "nope", "--html", str(tmp_path / "x.html")], env, check=False)
    assert missing.returncode != 0 and "no model 'nope'" in missing.stderr


def test_the_dashboard_fragment_greys_the_estimate_it_cannot_believe_and_says_why(watched) -> None:  # type: ignore[no-untyped-def]
    srv, reg, _ = watched
    acc = _reliability(reg)
    reason = acc["1"]["estimated_reason"]
    assert acc["1"]["estimated_reliable"] is False and "inputs moved" in reason, acc
    r = httpx.get(f"{srv.base}/dashboard/fragment", params={"model": "digits", "minutes": 60})
    assert r.status_code == 200, r.text
    v1, v2 = _row(r.text, "1"), _row(r.text, "2")
    assert 'class="estimate unreliable"' in v1 and "(unreliable)" in v1 and escape(reason) in v1
    assert acc["2"]["estimated_reliable"] is True and "unreliable" not in v2
    assert "<th>mean</th>" in r.text and "<table class=rules>" in r.text


def test_trace_follows_a_request_to_its_version_bundle_window_and_alert(watched) -> None:  # type: ignore[no-untyped-def]
    _, reg, env = watched
    t = json.loads(run_cli(["trace", "inverted-0/3", "--json"], env).stdout)
    assert t["model"] == "digits" and t["version"] == 1 and t["label"] is None
    assert t["bundle"]["sha256"] == reg.get("digits@1").bundle_sha256 and t["bundle"]["variant"] == "fp32"
    assert t["window"] is not None and t["window"]["alarm"] and t["window"]["n"] == 100
    assert [a["rule"] for a in t["alerts"]] == ["drift"]
    calm = json.loads(run_cli(["trace", "calm-10/2", "--model", "digits", "--json"], env).stdout)
    assert calm["label"] is not None and not calm["window"]["alarm"] and calm["alerts"] == []
    assert json.loads(run_cli(["trace", "after-move-0/0", "--json"], env).stdout)["version"] == 2
    human = run_cli(["trace", "inverted-0/3"], env).stdout
    assert "digits v1" in human and "drift alarm" in human
    unknown = run_cli(["trace", "never-sent", "--json"], env, check=False)
    assert unknown.returncode != 0 and "never-sent" in json.loads(unknown.stdout)["error"]
