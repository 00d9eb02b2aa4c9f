"""The report in a real browser: headless Chromium (Debian's ``chromium``) opens ``index.html``
from disk (file://), driven over the DevTools protocol on a pipe (``tests/chromium_cdp.py``).

Checked: no console error or uncaught exception; every image loads (decoded, naturalWidth > 0);
each table has as many rows as the catalogue says; a click on a column header sorts that table
(and a second click reverses it); nothing is requested but the file itself and inline data (no
network); a screenshot is saved in the test's temporary folder. Without Chromium the test is
skipped, except in CI (``CI`` set), where ``.ci/run`` installs it and its absence is a failure.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from chromium_cdp import Chromium, find_chromium
from report_home import QuickstartReport, expected_rows

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def chromium_binary() -> str:
    found = find_chromium()
    if found is None:
        reason = "Chromium is not installed (apt-get install chromium); .ci/run installs it in CI"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}, but CI is set and it is missing")
        pytest.skip(reason)
    return found


@pytest.fixture(scope="module")
def report(quickstart_report: QuickstartReport) -> tuple[Path, Path]:
    return quickstart_report.home, quickstart_report.folder


@pytest.fixture
def browser(chromium_binary: str, tmp_path: Path) -> Any:
    profile = tmp_path / "profile"
    profile.mkdir()
    chrome = Chromium(chromium_binary, profile, tmp_path / "chromium.log")
    try:
        yield chrome
    finally:
        chrome.close()


TABLE_ROWS = """Object.fromEntries(Array.from(document.querySelectorAll('table[data-table]'))
    .map(t => [t.dataset.table, t.tBodies[0].rows.length]))"""

IMAGES = """Array.from(document.images).map(i => ({complete: i.complete, width: i.naturalWidth,
    height: i.naturalHeight, alt: i.alt}))"""


def _column(chrome: Chromium, session: str, table: str, index: int) -> list[str]:
    return chrome.evaluate(
        session,
        f"Array.from(document.querySelector('table[data-table=\"{table}\"]').tBodies[0].rows)"
        f".map(r => r.cells[{index}].getAttribute('data-sort'))",
    )


def _header(chrome: Chromium, session: str, table: str, name: str) -> dict[str, Any]:
    """The header cell ``name`` of the table: its column index and its centre on screen."""
    return chrome.evaluate(
        session,
        f"""(() => {{
          const t = document.querySelector('table[data-table="{table}"]');
          const ths = Array.from(t.tHead.rows[t.tHead.rows.length - 1].cells);
          const th = ths.find(h => h.textContent.trim() === '{name}');
          th.scrollIntoView({{block: 'center'}});
          const r = th.getBoundingClientRect();
          return {{index: ths.indexOf(th), x: r.x + r.width / 2, y: r.y + r.height / 2,
                   sort: th.getAttribute('aria-sort')}};
        }})()""",
    )


def _numbers(values: list[str]) -> list[float]:
    return [float(v) for v in values if v != ""]


def test_the_report_opens_from_disk_and_works_offline(browser, report, tmp_path):
    home, folder = report
    chrome = browser
    session = chrome.open_page()
    chrome.send("Emulation.setDeviceMetricsOverride",
                {"width": 1400, "height": 1000, "deviceScaleFactor": 1, "mobile": False},
                session=session)  # fmt: skip
    url = (folder / "index.html").as_uri()
    assert "%20" in url
    chrome.send("Page.navigate", {"url": url}, session=session)
    chrome.wait_for("Page.loadEventFired", session, timeout=60)

    # Every image decoded, as many as the report wrote.
    images = chrome.evaluate(session, IMAGES)
    pngs = list(folder.rglob("*.png"))
    assert len(images) == len(pngs) >= 20
    assert all(i["complete"] and i["width"] > 0 and i["height"] > 0 for i in images), [
        i["alt"] for i in images if not i["width"]
    ]

    # Each table as long as the catalogue says.
    rows = chrome.evaluate(session, TABLE_ROWS)
    for key, n in expected_rows(home / "catalogue.db").items():
        assert rows[key] == n, key

    # A click on a header sorts that table by the column; a second click reverses it.
    table = "early-exit-confidence"
    head = _header(chrome, session, table, "test acc")
    before = _column(chrome, session, table, head["index"])
    assert head["sort"] is None and _numbers(before) != sorted(_numbers(before))
    chrome.click(session, head["x"], head["y"])
    after = _column(chrome, session, table, head["index"])
    assert after != before and sorted(after) == sorted(before)
    assert _numbers(after) == sorted(_numbers(before))
    assert _header(chrome, session, table, "test acc")["sort"] == "ascending"
    head = _header(chrome, session, table, "test acc")
    chrome.click(session, head["x"], head["y"])
    assert _numbers(_column(chrome, session, table, head["index"])) == sorted(
        _numbers(before), reverse=True
    )
    # A text column sorts too (the runs table by status, then back by name).
    head = _header(chrome, session, "runs", "run")
    names = chrome.evaluate(
        session,
        "Array.from(document.querySelector('table[data-table=\"runs\"]').tBodies[0].rows)"
        ".map(r => r.cells[0].textContent)",
    )
    chrome.click(session, head["x"], head["y"])
    clicked = chrome.evaluate(
        session,
        "Array.from(document.querySelector('table[data-table=\"runs\"]').tBodies[0].rows)"
        ".map(r => r.cells[0].textContent)",
    )
    assert clicked != names and clicked == sorted(names)

    # Screenshots in the test's temporary folder: the first screen and the whole page.
    chrome.evaluate(session, "window.scrollTo(0, 0)")
    shot = chrome.screenshot(session, tmp_path / "report.png")
    whole = chrome.screenshot(session, tmp_path / "report-full.png", full_page=True)
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size == (1400, 1000) and len(set(im.convert("L").getdata())) > 20
    with Image.open(whole) as im:
        assert im.size[1] > 5000

    # No console error, no uncaught exception, no failed load.
    errors = [
        e for e in chrome.events
        if (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))
        or e.get("method") == "Runtime.exceptionThrown"
        or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
        or e.get("method") == "Network.loadingFailed"
    ]  # fmt: skip
    assert not errors, errors
    # Nothing but the file itself (and inline data) was requested: no network at all.
    requested = [
        e["params"]["request"]["url"]
        for e in chrome.events
        if e.get("method") == "Network.requestWillBeSent"
    ]
    assert url in requested
    assert all(u.startswith(("file://", "data:")) for u in requested), requested
    assert [u for u in requested if u.startswith("file://")] == [url]
