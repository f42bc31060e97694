"""The fallback policy (routing/fallback.py), the lane configuration and the pool-failure reasons."""

from __future__ import annotations

import pytest

from gpupool import errors
from gpupool.gateway.fallback.lanes import PoolStalled, pool_failure_reason
from gpupool.gateway.fallback.lane_config import parse_lanes
from gpupool.market.pricing import Price
from gpupool.routing.fallback import REASONS, Lane, LaneModel, Need, choose_lanes, lane_cost, pool_deadline

CHEAP = Lane("cheap", "http://a/v1", {"m": LaneModel("up-m", Price(100_000, 400_000))}, region="eu")
DEAR = Lane("dear", "http://b/v1", {"m": LaneModel("m", Price(1_000_000, 4_000_000)),
                                    "other": LaneModel("o", Price(1, 1))}, region="us")
NEED = Need("m", input_tokens=1_000, max_output_tokens=1_000)


def test_cost_is_the_lane_price_plus_the_gateway_fee() -> None:
    # 1,000 in at 100,000/M + 1,000 out at 400,000/M = 500 µcr; 5% fee = 25.
    assert lane_cost(Price(100_000, 400_000), 1_000, 1_000, 500) == 525
    assert lane_cost(Price(0, 0), 1_000, 1_000, 500) == 0


@pytest.mark.parametrize("reason", REASONS)
def test_every_pool_failure_reason_goes_to_the_cheapest_lane_first(reason: str) -> None:
    d = choose_lanes([DEAR, CHEAP], reason, NEED, fee_bps=500)
    assert [lane.name for lane in d.lanes] == ["cheap", "dear"]
    assert d.reason == reason


def test_no_pool_failure_means_no_fallback() -> None:
    for reason in (None, "", "invalid_request", "payment"):
        d = choose_lanes([CHEAP], reason, NEED, 500)
        assert d.lanes == () and d.why_not


def test_the_client_may_forbid_fallback() -> None:
    d = choose_lanes([CHEAP], "no_provider", Need("m", 10, 10, allow=False), 500)
    assert d.lanes == () and "forbade" in d.why_not


def test_only_lanes_that_map_the_model() -> None:
    assert [lane.name for lane in choose_lanes([CHEAP, DEAR], "failed", Need("other", 1, 1), 0).lanes] == ["dear"]
    d = choose_lanes([CHEAP, DEAR], "failed", Need("nobody", 1, 1), 0)
    assert d.lanes == () and "nobody" in d.why_not


def test_a_lane_over_the_client_price_cap_is_never_used() -> None:
    cap = lane_cost(CHEAP.models["m"].price, 1_000, 1_000, 500)
    d = choose_lanes([CHEAP, DEAR], "price", Need("m", 1_000, 1_000, max_price=cap), 500)
    assert [lane.name for lane in d.lanes] == ["cheap"]
    d = choose_lanes([CHEAP, DEAR], "price", Need("m", 1_000, 1_000, max_price=cap - 1), 500)
    assert d.lanes == () and f"{cap:,}" in d.why_not and "max_price" in d.why_not


def test_a_required_region_excludes_other_lanes_and_a_preferred_one_goes_first() -> None:
    d = choose_lanes([CHEAP, DEAR], "region", Need("m", 10, 10, region="us", region_policy="require"), 500)
    assert [lane.name for lane in d.lanes] == ["dear"]
    d = choose_lanes([CHEAP, DEAR], "region", Need("m", 10, 10, region="ap", region_policy="require"), 500)
    assert d.lanes == () and "region" in d.why_not
    d = choose_lanes([CHEAP, DEAR], "failed", Need("m", 10, 10, region="us", region_policy="prefer"), 500)
    assert [lane.name for lane in d.lanes] == ["dear", "cheap"]


def test_equal_lanes_keep_configuration_order() -> None:
    a = Lane("a", "http://a", {"m": LaneModel("m", Price(5, 5))})
    b = Lane("b", "http://b", {"m": LaneModel("m", Price(5, 5))})
    assert [lane.name for lane in choose_lanes([b, a], "failed", NEED, 0).lanes] == ["b", "a"]


def test_the_pool_keeps_most_of_the_deadline() -> None:
    assert pool_deadline(100.0, 200.0, 15.0) == 185.0
    assert pool_deadline(100.0, 110.0, 15.0) == 105.0  # never more than half of what is left
    assert pool_deadline(100.0, 99.0, 15.0) == 99.0


def test_pool_errors_map_to_reasons() -> None:
    assert pool_failure_reason(errors.ModelNotFound("x"), pool_live=False) == "no_provider"
    assert pool_failure_reason(errors.NoProvider("x"), pool_live=False) == "no_provider"
    assert pool_failure_reason(errors.NoProvider("x"), pool_live=True) == "failed"
    limits = "no_provider_within_limits"
    assert pool_failure_reason(errors.NoProvider("x", param="max_price", code=limits), True) == "price"
    assert pool_failure_reason(errors.NoProvider("x", param="region", code=limits), True) == "region"
    assert pool_failure_reason(errors.NoCapacity("x"), True) == "capacity"
    assert pool_failure_reason(errors.ProviderFailed("x"), True) == "failed"
    assert pool_failure_reason(errors.Timeout("x"), True) == "deadline"
    assert pool_failure_reason(PoolStalled("x"), True) == "stalled"
    for own_fault in (errors.InvalidRequest("x"), errors.PaymentRequired("x"), errors.AuthenticationFailed("x")):
        assert pool_failure_reason(own_fault, True) is None


def test_lanes_from_toml_tables_and_flags_agree() -> None:
    table = {"name": "cloud", "base_url": "https://api.example/v1/", "api_key_env": "CLOUD_KEY", "region": "eu",
             "timeout_s": 30, "models": {"llama": {"upstream": "meta/llama-3", "price": "100000/400000"},
                                         "echo": {"price": "5"}}}
    flag = ("cloud=https://api.example/v1 key_env=CLOUD_KEY region=eu timeout_s=30 "
            "model=llama=meta/llama-3@100000/400000 model=echo@5")
    env = {"CLOUD_KEY": "sk-secret"}
    (from_table,), keys = parse_lanes([table], env)
    (from_flag,), _ = parse_lanes([flag], env)
    assert from_table == from_flag
    assert from_table.base_url == "https://api.example/v1"
    assert from_table.models["llama"] == LaneModel("meta/llama-3", Price(100_000, 400_000))
    assert from_table.models["echo"] == LaneModel("echo", Price(5, 0))
    assert keys == {"cloud": "sk-secret"}
    assert "sk-secret" not in repr(from_table)  # the key lives apart from the lane


@pytest.mark.parametrize(("raw", "message"), [
    ("cloud=https://x/v1 key_env=MISSING model=m@1", "MISSING"),
    ("cloud=ftp://x model=m@1", "base_url"),
    ("cloud=https://x/v1", "no models"),
    ("cloud=https://x/v1 model=m@cheap", "'m'"),
    ("cl:oud=https://x/v1 model=m@1", "name"),
    ("cloud=https://x/v1 colour=red model=m@1", "colour"),
    ({"name": "cloud", "base_url": "https://x", "models": {"m": {"price": "1"}}, "key": "sk-inline"}, "'key'"),
])
def test_bad_lane_configuration_is_one_clear_line(raw: object, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        parse_lanes([raw], {})
    assert "\n" not in str(info.value)


def test_a_lane_named_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        parse_lanes(["a=http://x model=m@1", "a=http://y model=m@1"], {})


def test_toml_list_of_tables_reaches_the_gateway_settings(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from gpupool.config import GatewaySettings, load

    path = tmp_path / "gw.toml"
    path.write_text('[gateway]\nfallback_first_token_budget_s = 2.5\n\n[[gateway.fallback]]\nname = "cloud"\n'
                    'base_url = "http://127.0.0.1:9/v1"\n[gateway.fallback.models.echo]\nupstream = "e"\n'
                    'price = "10/20"\n')
    settings = load(GatewaySettings, path, environ={})
    assert settings.fallback_first_token_budget_s == 2.5
    (lane,), _ = parse_lanes(settings.fallback, {})
    assert lane.models["echo"] == LaneModel("e", Price(10, 20))
    flagged = load(GatewaySettings, None, {"fallback": ["cloud=http://127.0.0.1:9/v1 model=echo=e@10/20"]}, environ={})
    assert parse_lanes(flagged.fallback, {})[0] == [lane]


def test_fallback_charges_settle_to_the_lane_account_and_the_fee_with_no_provider_earnings(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Billing against a real SQL ledger: hold from the tab, charge, one journal entry per batch."""
    import asyncio

    from gpupool.gateway.money.billing import Billing
    from gpupool.ledger import SqlLedger
    from gpupool.ledger import postings

    async def run() -> dict[str, int]:
        ledger = await SqlLedger.open(f"sqlite+aiosqlite:///{tmp_path / 'l.db'}")
        try:
            await ledger.deposit("d1", "shop", 1_000_000)
            billing = Billing(ledger, holder="gw1", fee_bps=500, tab_size=100_000, flush_interval_s=60,
                              tab_idle_s=60, audit_window_s=3600)
            hold = await billing.reserve("shop", 12_000)
            assert hold.charge_fallback("r1", "cloud", 10_500, 500) == 10_500
            assert hold.charge_fallback("r1", "cloud", 10_500, 500) == 10_500  # settled once only
            capped = await billing.reserve("shop", 1_000)
            assert capped.charge_fallback("r2", "cloud", 2_100, 100) == 1_000  # never above the hold
            await billing.flush()
            await billing.flush()  # nothing left: nothing written twice
            assert billing.stats["fallback_charged"] == 2
            await billing.close()  # the tab's rest goes back
            return await ledger.balances()
        finally:
            await ledger.close()

    balances = asyncio.run(run())
    # r1: 10,000 owed upstream + 500 fee; r2 capped at 1,000 with its fee (100) kept whole: 900 + 100.
    assert balances["fallback:cloud"] == 10_900
    assert balances[postings.GATEWAY_FEES] == 600
    assert balances[postings.client("shop")] == 1_000_000 - 11_500
    assert not any(a.startswith("provider:") and v for a, v in balances.items())
