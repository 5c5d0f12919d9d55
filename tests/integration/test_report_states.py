"""The report and the dashboard's fragment show what the evaluator believes: an accuracy estimate
it cannot believe is greyed, marked "(unreliable)" with its reason (now, and per window) and left
off the chart's estimate line; rules show ok, firing and unknown; an open alert whose rule cannot
decide is listed as unknown, not firing; the mean test has its column. States come from the real
evaluator on a real prediction log and database (calm digits, then inverted ones)."""

from __future__ import annotations

import copy
import re
from html import escape
from pathlib import Path

from harness.bundles import traffic_data
from shipyard import charts
from shipyard.monitor import report
from shipyard.monitor.api import Monitor
from shipyard.monitor.drift import TESTS
from shipyard.monitor.evaluator import Evaluator
from shipyard.serve import dashboard

from ..monitoring import deploy, log_images
from .test_stale_alerts import ACCURACY, CONFIG, DRIFT, rules


def _row(html: str, attr: str) -> str:
    m = re.search(rf"<tr {attr}[^>]*>.*?</tr>", html, re.S)
    assert m, attr
    return m.group(0)


def test_an_unbelievable_estimate_and_an_undecided_rule_are_shown_as_such(tmp_path: Path) -> None:
    reg, rt, log = deploy(tmp_path)
    images, _ = traffic_data()
    ev = Evaluator(reg, lambda: ["digits"], CONFIG, alerts=rules(ACCURACY, DRIFT))
    mon = Monitor(reg)

    log_images(log, rt, images[:200], "calm")  # two windows, each estimate believed
    ev.tick()
    calm = report.collect(mon, "digits", since=0)
    assert calm["status"]["versions"]["1"]["accuracy"]["estimated_reliable"] is True
    html = report.render(calm)
    body = html.split("</script>", 1)[1]  # after the inline chart library
    assert "unreliable" not in body and "cannot decide" not in body  # no mark, no chart note, no unknown alert
    assert '<td class="estimate">' in _row(html, 'data-version="1"')
    head = re.search(r"<tr><th>version</th><th>aliases</th>.*?</tr>", html, re.S)
    assert head and all(f"<th>{t}</th>" in head.group(0) for t in TESTS) and "<th>mean</th>" in head.group(0)
    drift = {s["label"] for s in charts.specs(html)["chart-drift"]["series"]}
    assert "v1 mean" in drift, drift  # the fourth test is drawn
    acc_rule = _row(html, 'data-version="1" data-rule="acc"')
    assert '<td class="alarm">firing</td>' in acc_rule
    assert '<td class="alarm">firing</td>' in _row(html, 'data-alert=')  # the accuracy alert, decided

    log_images(log, rt, 255 - images[200:300], "inverted")  # the estimate can no longer be believed
    ev.tick()
    ev.stop()
    data = report.collect(mon, "digits", since=0)
    acc = data["status"]["versions"]["1"]["accuracy"]
    assert acc["estimated_reliable"] is False
    reason = acc["estimated_reason"]
    assert "≤" in reason and "χ²" in reason  # characters the page must carry intact, escaped
    html = report.render(data)
    now = _row(html, 'data-version="1"')
    assert 'class="estimate unreliable"' in now and "(unreliable)" in now and escape(reason) in now

    # per window: the inverted one marked with its own reason, the calm ones not
    wins = data["windows"]
    assert [w["results"]["estimated_reliable"] for w in wins] == [True, True, False]
    marked = [("(unreliable)" in _row(html, f'data-window="{w["id"]}"')) for w in wins]
    assert marked == [False, False, True]
    assert escape(wins[2]["results"]["estimated_reason"]) in _row(html, f'data-window="{wins[2]["id"]}"')

    # the chart's estimate line leaves the unbelievable window out, and says so
    chart = charts.specs(html)["chart-accuracy"]
    estimated = next(s for s in chart["series"] if s["label"] == "v1 estimated")
    assert len([y for _, y in estimated["points"] if y is not None]) == 2
    note = re.search(r'<figure class="sy-chart" id="chart-accuracy".*?<p class="sy-note">(.*?)</p>', html, re.S)
    assert note and "1 of 3 window(s) not drawn" in note.group(1)
    assert escape(wins[2]["results"]["estimated_reason"]) in note.group(1)

    # rules and alerts: the accuracy rule cannot decide; its open alert is unknown, not firing
    acc_rule = _row(html, 'data-version="1" data-rule="acc"')
    assert '<td class="unknown">unknown</td>' in acc_rule and "cannot be believed" in acc_rule
    assert '<td class="alarm">firing</td>' in _row(html, 'data-version="1" data-rule="drift"')
    by_rule = {a["rule"]: a for a in data["alerts"]}
    assert by_rule["acc"]["status"] == "unknown" and by_rule["drift"]["status"] == "firing"
    acc_alert = _row(html, f'data-alert="{by_rule["acc"]["id"]}"')
    assert '<td class="unknown">unknown</td>' in acc_alert and "firing" not in acc_alert
    assert '<td class="alarm">firing</td>' in _row(html, f'data-alert="{by_rule["drift"]["id"]}"')
    assert "autopilot does not act on it" in html

    # the dashboard's fragment is the same tables and charts, with the marks' style
    frag = dashboard.fragment(reg, "digits", 60)
    assert ".unreliable{" in frag and escape(reason) in _row(frag, 'data-version="1"')
    assert '<td class="unknown">unknown</td>' in _row(frag, f'data-alert="{by_rule["acc"]["id"]}"')

    # whatever a reason says, it is text on the page, never markup
    hostile = copy.deepcopy(data)
    hostile["status"]["versions"]["1"]["accuracy"]["estimated_reason"] = '<img src=x onerror="alert(1)"> & co'
    hostile["windows"][2]["results"]["estimated_reason"] = "<script>alert(2)</script>"
    page = report.render(hostile)
    assert "<img src=x" not in page and "<script>alert" not in page  # (our own <img>s are data: URLs)
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt; &amp; co" in page and "&lt;script&gt;" in page
