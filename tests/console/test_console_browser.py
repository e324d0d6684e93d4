"""The console end to end: headless Chromium (tests/console/browser.py) against a real
`s2s serve` with access control and the lake on. Each test signs in with a token as a user
would and checks what the pages show after real API calls; every page must log no error (a
CSP violation would be one) and throw nothing. Screenshots of each page are written for
review (`build/console-screenshots/`)."""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Locator, Page, expect

from tests.console.browser import ConsolePage, launch_chromium
from tests.server_process import ServerProcess

pytestmark = pytest.mark.xdist_group("console-browser")

BASIN = "console-e2e"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    yield from launch_chromium()


@pytest.fixture
def console(browser: Browser, server: ServerProcess) -> Iterator[ConsolePage]:
    opened = ConsolePage(browser, server.http_url)
    try:
        yield opened
    finally:
        opened.close()


def sign_in(page: Page, token: str) -> None:
    page.goto("/")
    page.get_by_label("access token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_test_id("identity")).to_contain_text("token ")


def fact(page: Page, name: str) -> Locator:
    """The value of one of the stream page's facts ("tail seq_num", "fencing token" ...)."""
    status = page.get_by_test_id("stream-status")
    return status.locator("div", has=page.locator("dt", has_text=name)).locator("dd")


def append(api: httpx.Client, stream: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    response = api.post(
        f"/v1/streams/{stream}/records", headers={"s2-basin": BASIN}, json={"records": records}
    )
    assert response.status_code == 200, response.text
    ack: dict[str, Any] = response.json()
    return ack


def test_sign_in_then_list_and_create(console: ConsolePage, server: ServerProcess) -> None:
    page = console.page
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/console/$"))
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    console.screenshot("sign-in")
    page.get_by_label("access token").fill("s2s_not-a-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("authn")
    sign_in(page, server.root_token)
    expect(page.get_by_test_id("identity")).to_have_text("token root")
    # The token is in this tab's sessionStorage only: no cookie, no localStorage, no URL.
    assert page.evaluate("sessionStorage.getItem('s2s-console-token')") == server.root_token
    assert page.evaluate("document.cookie") == ""
    assert page.evaluate("localStorage.length") == 0
    assert server.root_token not in page.url

    page.get_by_text("Create a basin").click()
    page.get_by_label("new basin name").fill("made-in-console")
    page.get_by_role("button", name="Create basin").click()
    link = page.get_by_test_id("basins").get_by_role("link", name="made-in-console")
    expect(link).to_be_visible()
    page.get_by_label("filter basins by prefix").fill("made-")
    expect(page.get_by_test_id("basins").locator("tbody tr")).to_have_count(1)
    console.screenshot("basins")
    link.click()
    expect(page.get_by_role("heading", name="made-in-console")).to_be_visible()
    page.get_by_text("Create a stream").click()
    page.get_by_label("new stream name").fill("orders/eu")
    page.get_by_label("new stream config").fill('{"retention_policy": {"age": 3600}}')
    page.get_by_role("button", name="Create stream").click()
    row = page.get_by_test_id("streams").locator("tr", has_text="orders/eu")
    expect(row).to_contain_text("no")  # not fenced
    expect(row.locator("td").nth(1)).to_have_text("0")  # tail
    console.screenshot("basin")
    row.get_by_role("link").click()
    expect(page).to_have_url(re.compile(r"#/basins/made-in-console/streams/orders%2Feu$"))
    page.get_by_text("Stream configuration").click()
    expect(page.get_by_test_id("config")).to_contain_text('"age": 3600')


def test_records_live_tail_append_and_views(
    console: ConsolePage, server: ServerProcess, api: httpx.Client
) -> None:
    assert api.put("/v1/streams/live", headers={"s2-basin": BASIN}).status_code in (200, 201)
    append(api, "live", [{"body": "first", "headers": [["kind", "text"]]}])
    page = console.page
    sign_in(page, server.root_token)
    page.goto(f"/console/#/basins/{BASIN}/streams/live")
    expect(fact(page, "tail seq_num")).to_have_text("1")
    expect(fact(page, "fencing token")).to_have_text("not set")
    page.get_by_test_id("live-tail").click()
    expect(page.get_by_test_id("records")).to_contain_text("first")
    expect(page.get_by_test_id("records-state")).to_contain_text("caught up")

    # An append made elsewhere shows in the live tail within a second.
    append(api, "live", [{"body": '{"order": 42, "items": ["tea"]}'}])
    expect(page.get_by_test_id("records").locator("tr", has_text='"order": 42')).to_be_visible(
        timeout=1000
    )

    # Appended from the console as a JSON array: each element's body becomes a record.
    page.get_by_label("append what").select_option("array")
    page.get_by_label("record body").fill(
        '[{"body": {"id": 7, "note": "from-console"}}, {"body": "plain", "headers": [["k", "v"]]}]'
    )
    page.get_by_role("button", name="Append", exact=True).click()
    expect(page.get_by_test_id("append-result")).to_contain_text("appended 2 record(s) at 2")
    records = page.get_by_test_id("records")
    expect(records.locator("tr", has_text="from-console")).to_be_visible(timeout=1000)
    expect(records.locator("tr[data-seq-num='3']")).to_contain_text("k: v")

    # Bodies as JSON (pretty-printed) and as hex.
    page.get_by_label("body format").select_option("json")
    expect(records.locator("tr[data-seq-num='2'] pre")).to_have_text(
        '{\n  "id": 7,\n  "note": "from-console"\n}'
    )
    page.get_by_label("body format").select_option("hex")
    expect(records.locator("tr[data-seq-num='0'] pre")).to_contain_text("66 69 72 73 74")
    page.get_by_label("body format").select_option("text")
    # The filter box keeps only the matching records.
    page.get_by_label("filter records").fill("order")
    expect(records.locator("tr")).to_have_count(1)
    page.get_by_label("filter records").fill("")
    console.screenshot("stream-live-tail")
    page.evaluate("window.scrollTo(0, 0)")
    console.readme_screenshot("readme-live-tail")
    page.get_by_test_id("live-tail").click()  # stop

    # Read from a sequence number, and from a timestamp.
    page.get_by_label("read from").select_option("seq_num")
    page.get_by_label("start").fill("2")
    page.get_by_role("button", name="Read", exact=True).click()
    expect(page.get_by_test_id("records-state")).to_contain_text("2 records read")
    expect(records.locator("tr").first).to_have_attribute("data-seq-num", "2")
    page.get_by_label("read from").select_option("timestamp")
    page.get_by_label("start").fill("0")
    page.get_by_role("button", name="Read", exact=True).click()
    expect(page.get_by_test_id("records-state")).to_contain_text("4 records read")

    # Fence and trim, each shown in the stream's status.
    page.get_by_label("new fencing token").fill("lease-9")
    page.get_by_role("button", name="Fence", exact=True).click()
    expect(fact(page, "fencing token")).to_have_text("set")
    assert api.get("/v1/streams/live/status", headers={"s2-basin": BASIN}).json()["fenced"] is True
    page.get_by_label("trim before seq_num").fill("2")
    page.get_by_role("button", name="Trim", exact=True).click()
    page.get_by_label("confirmation").fill("2")
    page.get_by_role("button", name="Confirm").click()
    expect(fact(page, "trim point")).to_have_text("2")
    console.screenshot("stream")


def test_an_encrypted_stream_is_read_and_written_with_its_key(
    console: ConsolePage, server: ServerProcess, api: httpx.Client
) -> None:
    """The stream page says the stream is encrypted and asks for its key: without it a read
    fails with the server's message; with it, reads show the plaintext, the live tail follows,
    and an append from the console is sealed with it (read back through the API with the
    key). The key is in no storage, cookie or URL."""
    basin, stream = "console-sealed", "secrets"
    key = base64.b64encode(bytes(range(32))).decode()
    made = api.put(f"/v1/basins/{basin}", json={"config": {"stream_cipher": "aegis-256"}})
    assert made.status_code in (200, 201), made.text
    headers = {"s2-basin": basin, "s2-encryption-key": key}
    assert api.put(f"/v1/streams/{stream}", headers=headers).status_code in (200, 201)
    sent = api.post(
        f"/v1/streams/{stream}/records", headers=headers, json={"records": [{"body": "hidden"}]}
    )
    assert sent.status_code == 200, sent.text

    page = console.page
    sign_in(page, server.root_token)
    page.goto(f"/console/#/basins/{basin}/streams/{stream}")
    expect(fact(page, "encryption")).to_have_text("aegis-256")
    page.get_by_label("read from").select_option("seq_num")
    page.get_by_label("start").fill("0")
    page.get_by_role("button", name="Read", exact=True).click()
    expect(page.get_by_role("alert")).to_contain_text("missing encryption key")

    page.get_by_label("encryption key").fill(key)
    page.get_by_role("button", name="Read", exact=True).click()
    records = page.get_by_test_id("records")
    expect(records.locator("tr[data-seq-num='0'] pre")).to_have_text("hidden")
    page.get_by_test_id("live-tail").click()
    expect(page.get_by_test_id("records-state")).to_contain_text("caught up")
    page.get_by_label("record body").fill("sealed-from-console")
    page.get_by_role("button", name="Append", exact=True).click()
    expect(page.get_by_test_id("append-result")).to_contain_text("appended 1 record(s) at 1")
    expect(records.locator("tr[data-seq-num='1'] pre")).to_have_text(
        "sealed-from-console", timeout=2000
    )
    page.get_by_test_id("live-tail").click()  # stop
    console.screenshot("stream-encrypted")

    read = api.get(f"/v1/streams/{stream}/records", headers=headers, params={"seq_num": 1})
    assert read.status_code == 200, read.text
    assert [r["body"] for r in read.json()["records"]] == ["sealed-from-console"]
    without_key = api.get(
        f"/v1/streams/{stream}/records", headers={"s2-basin": basin}, params={"seq_num": 1}
    )
    assert without_key.status_code == 400
    assert page.evaluate("document.cookie") == ""
    assert page.evaluate("localStorage.length") == 0
    assert page.evaluate("sessionStorage.length") == 1  # the token only
    assert key not in page.url


def test_reconfigure_and_delete_with_confirmation(
    console: ConsolePage, server: ServerProcess, api: httpx.Client
) -> None:
    assert api.put("/v1/streams/doomed", headers={"s2-basin": BASIN}).status_code in (200, 201)
    page = console.page
    sign_in(page, server.root_token)
    page.goto(f"/console/#/basins/{BASIN}/streams/doomed")
    page.get_by_text("Stream configuration").click()
    page.get_by_role("button", name="Edit").click()
    page.get_by_label("Stream configuration JSON").fill('{"retention_policy": {"age": 120}}')
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_test_id("config")).to_contain_text('"age": 120')
    config = api.get("/v1/streams/doomed", headers={"s2-basin": BASIN}).json()
    assert config["retention_policy"] == {"age": 120}

    page.get_by_role("button", name="Delete stream").click()
    page.get_by_label("confirmation").fill("wrong")
    expect(page.get_by_role("button", name="Confirm")).to_be_disabled()
    page.get_by_role("button", name="Cancel").click()
    assert api.get("/v1/streams/doomed", headers={"s2-basin": BASIN}).status_code == 200
    page.get_by_role("button", name="Delete stream").click()
    page.get_by_label("confirmation").fill("doomed")
    page.get_by_role("button", name="Confirm").click()
    expect(page).to_have_url(re.compile(rf"#/basins/{BASIN}$"))
    gone = api.get("/v1/streams/doomed", headers={"s2-basin": BASIN})
    assert gone.status_code == 404 or gone.json().get("code") == "stream_deletion_pending"


def test_lake_materialization_lag_dead_letters_and_sql(
    console: ConsolePage, server: ServerProcess, api: httpx.Client
) -> None:
    declared = api.post(
        "/v1/lake/materializations",
        json={"name": "orders", "table": "bronze.orders", "create_table": True},
    )
    assert declared.status_code == 201, declared.text
    rows = [{"id": 1, "amount": 9.5}, {"id": 2, "amount": 3}]
    ingest = api.post(
        "/v2/stream", json={"data": rows, "config": {"table": "bronze.orders", "wait": True}}
    )
    assert ingest.status_code == 200, ingest.text
    bad = api.post(
        "/v2/stream",
        json={"data": [{"id": "not-a-number"}], "config": {"table": "bronze.orders", "wait": True}},
    )
    assert bad.status_code == 200 and bad.json()["rejected_rows"] == 1, bad.text
    page = console.page
    sign_in(page, server.root_token)
    page.get_by_role("link", name="Lake", exact=True).click()
    row = page.get_by_test_id("materializations").locator("tr[data-name='orders']")
    expect(row).to_contain_text("running")
    expect(row.get_by_test_id("lag-records")).to_have_text("0")

    # Paused, the materialization falls behind by what is ingested meanwhile: its lag shows.
    row.get_by_role("button", name="Pause").click()
    expect(row).to_contain_text("paused")
    more = [{"id": n, "amount": n} for n in range(3, 8)]
    assert (
        api.post(
            "/v2/stream", json={"data": more, "config": {"table": "bronze.orders"}}
        ).status_code
        == 200
    )
    expect(row.get_by_test_id("lag-records")).to_have_text("5")
    expect(row.get_by_test_id("lag-seconds")).not_to_have_text("–")
    console.screenshot("lake-paused")
    row.get_by_role("button", name="Resume").click()
    expect(row.get_by_test_id("lag-records")).to_have_text("0")
    expect(row).to_contain_text("running")

    row.get_by_role("button", name="Rejections").click()
    letters = page.get_by_test_id("dead-letters")
    expect(letters).to_contain_text("not-a-number")

    page.get_by_label("SQL").fill("SELECT id, amount FROM bronze.orders ORDER BY id")
    page.get_by_role("button", name="Run").click()
    result = page.get_by_test_id("sql-result")
    expect(result.locator("tbody tr")).to_have_count(7)
    expect(result.locator("tbody tr").first).to_contain_text("9.5")
    with page.expect_download() as download:
        page.get_by_role("button", name="Download CSV").click()
    assert download.value.suggested_filename == "result.csv"
    assert Path(download.value.path()).read_text().splitlines()[:2] == ['"id","amount"', "1,9.5"]
    with page.expect_download() as parquet:
        page.get_by_role("button", name="Download Parquet").click()
    assert Path(parquet.value.path()).read_bytes()[:4] == b"PAR1"
    page.get_by_label("SQL").fill("COPY (SELECT 1) TO 'x.csv'")
    page.get_by_role("button", name="Run").click()
    expect(page.get_by_role("alert")).to_contain_text("read_only_sql")
    expect(result).to_have_count(0)  # the last query's rows are gone with it
    console.screenshot("lake")


def test_health_charts_update_live(
    console: ConsolePage, server: ServerProcess, api: httpx.Client
) -> None:
    assert api.put("/v1/streams/load", headers={"s2-basin": BASIN}).status_code in (200, 201)
    page = console.page
    sign_in(page, server.root_token)
    page.get_by_role("link", name="Health", exact=True).click()
    appended = page.get_by_test_id("chart-append-records")
    expect(appended).to_be_visible()
    # Keep appending until a scrape has seen some: the chart's peak is then above zero.
    deadline = time.monotonic() + 10
    while appended.locator("small").inner_text() == "max 0/s" and time.monotonic() < deadline:
        append(api, "load", [{"body": f"r{n}"} for n in range(50)])
        page.wait_for_timeout(300)
    expect(appended.locator("small")).not_to_have_text("max 0/s")
    expect(appended.locator("path.line")).to_be_attached()
    expect(page.get_by_test_id("chart-ack-p99").locator(".value")).to_contain_text("ms")
    expect(page.get_by_test_id("chart-storage").locator(".value")).not_to_have_text("0 B")
    console.screenshot("health")


def test_a_scope_hides_what_it_does_not_cover(
    console: ConsolePage, server: ServerProcess, api: httpx.Client
) -> None:
    for basin in ("visible-basin", "hidden-basin"):
        assert api.put(f"/v1/basins/{basin}").status_code in (200, 201)
    scope = {
        "basins": {"prefix": "visible-"},
        "streams": {"prefix": ""},
        "op_groups": {"basin": {"read": True}, "stream": {"read": True}},
        "ops": ["list-basins"],
    }
    issued = api.post("/v1/access-tokens", json={"id": "console-viewer", "scope": scope})
    assert issued.status_code == 201, issued.text
    page = console.page
    sign_in(page, issued.json()["access_token"])
    expect(page.get_by_test_id("identity")).to_have_text("token console-viewer")
    basins = page.get_by_test_id("basins")
    expect(basins.get_by_role("link", name="visible-basin")).to_be_visible()
    expect(basins.get_by_role("link", name="hidden-basin")).to_have_count(0)
    expect(basins.get_by_role("link", name=BASIN)).to_have_count(0)
    # Nothing it may not do is offered: no create, no lake, no health.
    expect(page.get_by_text("Create a basin")).to_have_count(0)
    expect(page.get_by_role("link", name="Lake", exact=True)).to_have_count(0)
    expect(page.get_by_role("link", name="Health", exact=True)).to_have_count(0)
    console.screenshot("scoped-basins")
    page.get_by_role("link", name="visible-basin").click()
    expect(page.get_by_role("button", name="Delete basin")).to_have_count(0)
    expect(page.get_by_text("Create a stream")).to_have_count(0)
    page.goto("/console/#/basins/hidden-basin")
    expect(page.get_by_text("This token may not list this basin's streams.")).to_be_visible()
    # And what the page does not offer, the server refuses to the same token anyway.
    status = page.evaluate(
        """() => fetch("/v1/streams", {headers: {
            authorization: "Bearer " + sessionStorage.getItem("s2s-console-token"),
            "s2-basin": "hidden-basin"}}).then((response) => response.status)"""
    )
    assert status == 403
    console.problems.clear()  # the refused request is the point here


def test_without_access_control_no_token_is_asked(browser: Browser, tmp_path: Path) -> None:
    process = ServerProcess(str(tmp_path / "data")).start()
    opened = ConsolePage(browser, process.http_url)
    try:
        with httpx.Client(base_url=process.http_url) as client:
            assert client.put("/v1/basins/open-basin").status_code == 201
        page = opened.page
        page.goto("/")
        expect(page.get_by_test_id("identity")).to_have_text("access control off")
        expect(page.get_by_role("button", name="Sign out")).to_have_count(0)
        expect(page.get_by_test_id("basins").get_by_role("link", name="open-basin")).to_be_visible()
        assert page.evaluate("sessionStorage.length") == 0
    finally:
        opened.close()
        process.stop()


def test_stream_list_pages(console: ConsolePage, server: ServerProcess, api: httpx.Client) -> None:
    for n in range(12):
        created = api.put(f"/v1/streams/page-{n:02d}", headers={"s2-basin": BASIN})
        assert created.status_code in (200, 201)
    page = console.page
    sign_in(page, server.root_token)
    page.goto(f"/console/#/basins/{BASIN}")
    rows = page.get_by_test_id("streams").locator("tbody tr")
    page.get_by_label("filter streams by prefix").fill("page-")
    page.get_by_label("page size").select_option("10")
    expect(rows).to_have_count(10)
    expect(rows.first).to_contain_text("page-00")
    page.get_by_role("button", name="Next ›").click()
    expect(rows).to_have_count(2)
    expect(rows.first).to_contain_text("page-10")
    expect(page.get_by_role("button", name="Next ›")).to_be_disabled()
    page.get_by_role("button", name="‹ Previous").click()
    expect(rows).to_have_count(10)
    expect(rows.last).to_contain_text("page-09")
