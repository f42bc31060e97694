"""The gateway's web dashboard in real headless Chromium, against a real gateway and providers.

Each page is loaded and what it shows is compared with the JSON API it claims to show:
the providers on the map and in the table are exactly the connected ones, the account
page shows the balance /v1/account reports, the provider page shows its earnings. A
screenshot of each page is kept under $GPUPOOL_TEST_ARTIFACTS (default: pytest's tmp_path).

Chromium is Debian's (`/usr/bin/chromium`, installed by `make test`), driven by the
`playwright` package; playwright's own browser download is not used.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gpupool.devnet import Network
from tests.integration.conftest import client_for, wait_until

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                "(apt-get install chromium; `make test` does)")

# A region no table knows, with markup in it: must land under "elsewhere", shown as text.
ODD_REGION = "<b>lab</b>"
PRICE = "echo=2000000/4000000"  # µcr per 1M tokens: requests cost something, so charges and earnings move


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    network = Network(tmp_path_factory.mktemp("dashboard") / "net")
    try:
        network.start_gateway()
        network.start_provider(["echo=echo:chat", "echo-embed=echo:embeddings"], extra=["--price", PRICE])  # eu-west
        network.start_provider(["echo=echo:chat"], extra=["--price", PRICE])  # us-east
        # Later flags win: no location, so only the region name could place it (and cannot).
        network.start_provider(["echo=echo:chat"], region=ODD_REGION,
                               extra=["--price", PRICE, "--latitude", "0", "--longitude", "0"])
        network.wait_for_models({"echo": 3, "echo-embed": 1}, timeout=90)
        yield network
    finally:
        network.stop(timeout=10)


@pytest.fixture(scope="module")
def traffic(net: Network) -> list[str]:
    """A few real requests (chat, stream, embeddings) so stats, charges and earnings exist."""
    client = client_for(net)
    ids = []
    for i in range(4):
        r = client.chat.completions.with_raw_response.create(
            model="echo", messages=[{"role": "user", "content": f"hello dashboard {i}"}], max_tokens=8)
        ids.append(r.headers["x-request-id"])
    with client.chat.completions.with_streaming_response.create(
            model="echo", messages=[{"role": "user", "content": "a stream"}], max_tokens=8, stream=True) as r:
        ids.append(r.headers["x-request-id"])
        for _ in r.iter_lines():
            pass
    r = client.embeddings.with_raw_response.create(model="echo-embed", input=["one", "two"])
    ids.append(r.headers["x-request-id"])
    # Charges settle in batches once providers sign their receipts: wait until none is pending.
    def settled() -> bool:
        body = account(net)
        return body["unsettled_charges"] == 0 and set(ids) <= {c["request_id"] for c in body["recent_charges"]}

    wait_until(settled, "charges to settle", 30)
    return ids


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    path = Path(os.environ.get("GPUPOOL_TEST_ARTIFACTS") or tmp_path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def account(net: Network) -> dict[str, Any]:
    r = httpx.get(net.gateway_url + "/v1/account?limit=100", headers={"Authorization": f"Bearer {net.dev_key()}"},
                  timeout=10)
    r.raise_for_status()
    return r.json()


def open_page(browser: Any, url: str) -> tuple[Any, list[str]]:
    """A fresh page at `url`, and the list its script errors and failed API calls are appended to."""
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"script error: {exc}"))
    page.on("response", lambda r: problems.append(f"{r.status} {r.url}") if r.status >= 500 else None)
    page.goto(url)
    return page, problems


def shot(page: Any, artifacts: Path, name: str) -> None:
    path = artifacts / f"dashboard-{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")


def test_overview_shows_exactly_the_connected_providers(net: Network, traffic: list[str], browser: Any,
                                                        artifacts: Path) -> None:
    connected = {p["node_id"] for p in net.admin("/admin/providers")}
    listed = httpx.get(net.gateway_url + "/v1/providers?limit=100", timeout=10).json()
    assert {p["id"] for p in listed["data"]} == connected and len(connected) == 3
    by_id = {p["id"]: p for p in listed["data"]}

    page, problems = open_page(browser, net.gateway_url + "/")
    try:
        page.wait_for_selector("body[data-providers-loaded='3']", timeout=30_000)
        page.wait_for_function(f"Number(document.body.dataset.statsRequests) >= {len(traffic)}", timeout=30_000)
        page.wait_for_selector("#market tbody tr[data-model='echo-embed']", timeout=30_000)

        table_ids = set(page.eval_on_selector_all("#providers tbody tr", "rows => rows.map(r => r.dataset.id)"))
        assert table_ids == connected
        markers = page.eval_on_selector_all(
            "svg#map g.marker", "gs => gs.map(g => ({region: g.dataset.region, ids: g.dataset.ids.split(' ')}))")
        elsewhere = page.eval_on_selector_all("#elsewhere li", "lis => lis.map(li => li.dataset.id)")
        on_map = {i for m in markers for i in m["ids"]}
        assert on_map | set(elsewhere) == connected and not on_map & set(elsewhere)
        # Each marker is where its providers' regions are; the odd region is listed, not placed.
        assert sorted(m["region"] for m in markers) == ["eu-west", "us-east"]
        for m in markers:
            assert {by_id[i]["region"] for i in m["ids"]} == {m["region"]}
        assert [by_id[i]["region"] for i in elsewhere] == [ODD_REGION]
        # Provider-chosen text is shown as text, never parsed as markup.
        assert page.locator("#elsewhere b").count() == 0 and page.locator("#providers tbody b").count() == 0
        assert ODD_REGION in page.inner_text("#elsewhere")
        assert page.locator("svg#map path.land").get_attribute("d").count("M") > 50  # the world was drawn

        # Table cells match the API row for row.
        for node_id, p in by_id.items():
            row = page.locator(f"#providers tbody tr[data-id='{node_id}']")
            cells = row.locator("td").all_inner_texts()
            assert cells[1] == p["region"]
            assert cells[3] == f'{p["load"]["in_flight"]} / {p["load"]["max_concurrency"]}'
            assert cells[9] == p["state"] == "serving"
            assert [m["name"] for m in p["models"]] == [line.split(" ")[0] for line in cells[2].splitlines()]

        stats = httpx.get(net.gateway_url + "/v1/stats?window_s=300", timeout=10).json()
        models = page.eval_on_selector_all("#traffic tbody tr", "rows => rows.map(r => r.dataset.model)")
        assert models == [m["model"] for m in stats["models"]] and {"echo", "echo-embed"} <= set(models)
        assert page.inner_text("#n-providers") == "3"
        assert page.locator("#chart-rps path").count() == 1 and page.locator("#chart-latency path").count() == 2
        market = httpx.get(net.gateway_url + "/v1/market", timeout=10).json()["data"]
        assert page.eval_on_selector_all("#market tbody tr", "rows => rows.map(r => r.dataset.model)") == \
            [m["model"] for m in market]
        assert problems == []
        shot(page, artifacts, "overview")
    finally:
        page.close()


def test_account_page_shows_the_keys_balance_charges_and_batches(net: Network, traffic: list[str], browser: Any,
                                                                  artifacts: Path) -> None:
    client = client_for(net)
    lines = [{"custom_id": f"item-{i}", "method": "POST", "url": "/v1/embeddings",
              "body": {"model": "echo-embed", "input": f"catalogue line {i}"}} for i in range(3)]
    uploaded = client.files.create(file=("items.jsonl", io.BytesIO(b"".join(json.dumps(x).encode() + b"\n"
                                                                         for x in lines))), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h")
    wait_until(lambda: client.batches.retrieve(batch.id).status in ("completed", "failed", "cancelled", "expired"),
               "the batch to end", 60)
    # Nothing moving while the page and the API are compared: charges settled, the tab returned.
    wait_until(lambda: (a := account(net))["held"] == 0 and a["unsettled_charges"] == 0, "the tab to close", 60)

    page, problems = open_page(browser, net.gateway_url + "/dashboard/account.html")
    try:
        # A wrong key is a clear message, not a page of zeros.
        page.fill("#key", "gp-not-a-key")
        page.click("#key-form button[type=submit]")
        page.wait_for_selector("#key-error:not([hidden])", timeout=15_000)
        assert "Incorrect API key" in page.inner_text("#key-error")
        assert page.locator("#account").is_hidden()

        page.fill("#key", net.dev_key())
        page.click("#key-form button[type=submit]")
        page.wait_for_selector("body[data-account-loaded='1'], #key-error:not([hidden])", timeout=15_000)
        assert page.locator("#key-error").is_hidden(), page.inner_text("#key-error")
        body = account(net)
        assert int(page.get_attribute("#balance", "data-ucr")) == body["balance"]
        assert int(page.get_attribute("#held", "data-ucr")) == body["held"]
        assert page.inner_text("#account-name") == body["account"]
        explained = page.inner_text("#holds-explained")
        assert ("reserved by this gateway as a tab" in explained) if body["held"] else ("Nothing is held" in explained)
        # Holds the API itemises are listed with their amounts.
        assert [int(x) for x in page.eval_on_selector_all("#holds li", "lis => lis.map(li => li.dataset.ucr)")] == \
            [h.get("amount_ucr", h.get("amount", 0)) for h in body.get("holds", [])]
        shown = page.eval_on_selector_all("#charges tbody tr", "rows => rows.map(r => r.dataset.request)")
        assert set(traffic) <= set(shown)
        costs = {c["request_id"]: c["cost"] for c in body["recent_charges"]}
        for rid in traffic:
            assert int(page.get_attribute(f"#charges tr[data-request='{rid}'] td[data-ucr]", "data-ucr")) == costs[rid]
        assert sum(costs[r] for r in traffic) > 0
        # Ledger movements (deposit, tab reserved and returned) as the API lists them.
        shown_moves = page.eval_on_selector_all("#movements tbody tr td[data-ucr]", "tds => tds.map(t => t.dataset.ucr)")
        assert [int(x) for x in shown_moves] == [m["delta"] for m in body["recent"]] and shown_moves
        # The key lives in this tab's sessionStorage only: never in the URL or localStorage.
        assert net.dev_key() not in page.url
        assert page.evaluate("Object.keys(localStorage).length") == 0
        # The key's batch jobs, with their progress, as GET /v1/batches lists them.
        listed = httpx.get(net.gateway_url + "/v1/batches", headers={"Authorization": f"Bearer {net.dev_key()}"},
                           timeout=10).json()["data"]
        row = page.locator(f"#batches tbody tr[data-batch='{batch.id}']")
        row.wait_for(timeout=15_000)
        b = next(x for x in listed if x["id"] == batch.id)
        c = b["request_counts"]
        cells = row.locator("td").all_inner_texts()
        assert cells[1] == b["status"] == "completed" and c["total"] == c["completed"] == 3
        assert cells[3] == f'{c["completed"]} / {c["failed"]} / {c["total"]}' and "100%" in cells[4]
        assert problems == []
        shot(page, artifacts, "account")
    finally:
        page.close()


def test_provider_page_shows_its_earnings(net: Network, traffic: list[str], browser: Any, artifacts: Path) -> None:
    charges = account(net)["recent_charges"]
    busiest = max({c["provider"] for c in charges if c["cost"] > 0},
                  key=lambda p: sum(c["cost"] for c in charges if c["provider"] == p))

    def earnings() -> dict[str, Any]:
        return httpx.get(f"{net.gateway_url}/v1/providers/{busiest}/earnings", timeout=10, verify=net.verify).json()

    wait_until(lambda: earnings()["held"] > 0, "the provider's earnings to settle", 30)
    page, problems = open_page(browser, f"{net.gateway_url}/dashboard/provider.html?id={busiest}")
    try:
        page.wait_for_selector("body[data-provider-loaded='1']", timeout=15_000)
        e = earnings()
        assert int(page.get_attribute("#earn-held", "data-ucr")) == e["held"] > 0
        assert int(page.get_attribute("#earn-free", "data-ucr")) == e["withdrawable"]
        live = httpx.get(f"{net.gateway_url}/v1/providers/{busiest}", timeout=10).json()
        assert page.inner_text("#region") == live["region"]
        assert page.inner_text("#reputation") == f'{live["reputation"]:.3f}'
        assert page.eval_on_selector_all("#models tbody tr", "rows => rows.map(r => r.dataset.model)") == \
            [m["name"] for m in live["models"]]
        assert problems == []
        shot(page, artifacts, "provider")
    finally:
        page.close()
