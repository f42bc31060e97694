"""A client's tab closing while its requests arrive (issue 18, item 1), and the map of signed
receipt digests staying bounded (item 6): Billing over a real SQLite ledger.

A tab closes by returning its unused rest to the client's balance: a ledger write, awaited
under the tab's lock. Requests arriving in that window must neither draw on the money on
its way back (the provider would never be paid) nor top up a tab about to be forgotten
(every later flush raised KeyError: nothing settled for anyone).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gpupool import protocol
from gpupool.gateway.money.billing import Billing, Hold
from gpupool.gateway.money.signed_digests import SignedDigests
from gpupool.ledger import postings
from gpupool.ledger.sql import SqlLedger

DEPOSIT = 5_000_000
TAB = 1_000_000


@pytest.fixture
async def billing(tmp_path: Path) -> AsyncIterator[Billing]:
    ledger = await SqlLedger.open(f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}")
    await ledger.deposit("d1", "alice", DEPOSIT)
    b = Billing(ledger, holder="gw", fee_bps=1000, tab_size=TAB, flush_interval_s=60, tab_idle_s=60,
                audit_window_s=3600)
    try:
        yield b
    finally:
        await ledger.close()


def charge(billing: Billing, hold: Hold, rid: str, cost: int) -> None:
    """Charge `cost` from a receipt the provider has signed (its Statement listed the digest)."""
    receipt = protocol.Receipt(rid, "prov", "m", b"i" * 32, b"o" * 32, protocol.Usage(1, 1))
    assert hold.charge(rid, "prov", cost, receipt, b"k" * 32) == cost
    billing.statement("prov", [protocol.receipt_digest(receipt)])


async def closing(billing: Billing) -> asyncio.Task[None]:
    """Close alice's (idle) tab, and return while its rest is on its way back to her balance."""
    tab = billing.tabs["alice"]
    task = asyncio.create_task(billing._close_tab(tab))
    await asyncio.sleep(0)  # the close runs until it awaits the ledger
    assert tab.lock.locked() and not task.done()
    return task


async def adds_up(billing: Billing, paid: int) -> None:
    """No µcr lost or created: the client's balance and tab hold, the provider and the fees sum to the deposit."""
    balances = await billing.ledger.balances()
    provider, fees = balances.get(postings.provider_held("prov"), 0), balances.get(postings.GATEWAY_FEES, 0)
    assert provider + fees == paid
    assert balances[postings.client("alice")] + balances.get(postings.client_hold("alice", "gw"), 0) == DEPOSIT - paid
    await billing.close()  # every tab returns its rest
    assert (await billing.ledger.balances()).get(postings.client_hold("alice", "gw"), 0) == 0
    assert (await billing.ledger.balance(postings.client("alice"))) == DEPOSIT - paid


async def test_a_request_topping_up_while_its_tab_closes_is_settled(billing: Billing) -> None:
    (await billing.reserve("alice", 500)).release()  # a tab of 1 credit, idle
    close = await closing(billing)
    big = asyncio.create_task(billing.reserve("alice", 2 * TAB))  # more than the tab: waits to top up
    await close
    hold = await big
    charge(billing, hold, "r1", 1_500_000)
    await billing.flush()  # on the old code: KeyError here, and on every flush after
    await billing.flush()
    assert billing.stats["charged"] == 1 and billing._unsent is None
    await adds_up(billing, 1_500_000)


async def test_a_new_tab_is_not_idle_while_its_first_top_up_is_written(billing: Billing) -> None:
    """The idle sweep ran during a new tab's first ledger write (CI, 2026-12-07): the tab had never
    been used, so it looked idle, and its rest went back while the request held it."""
    billing.tab_idle_s = 0.001
    first = asyncio.create_task(billing.reserve("alice", 290))
    await asyncio.sleep(0)  # the tab is open and its top-up is being written
    assert billing.tabs["alice"].lock.locked() and not first.done()
    await billing._close_idle_tabs()  # the sweep waits for the lock, then finds the tab in use
    hold = await first
    tab = billing.tabs["alice"]
    assert tab.reserved == TAB and tab.available == TAB - 290
    assert await billing.ledger.balance(postings.client("alice")) == DEPOSIT - TAB
    charge(billing, hold, "r1", 2)
    await billing.flush()
    await adds_up(billing, 2)


async def test_a_request_never_draws_on_money_on_its_way_back(billing: Billing) -> None:
    (await billing.reserve("alice", 500)).release()
    close = await closing(billing)
    small = asyncio.create_task(billing.reserve("alice", 400))  # the tab seemed to cover it
    await close
    hold = await small
    charge(billing, hold, "r2", 400)
    await billing.flush()
    # On the old code the ledger refused it (the tab's hold had gone back): the provider was never paid.
    assert billing.stats["charged"] == 1 and billing.stats["rejected"] == 0
    await adds_up(billing, 400)


async def test_many_requests_while_tabs_close_settle_exactly(billing: Billing) -> None:
    paid = 0
    for round_ in range(5):
        (await billing.reserve("alice", 100)).release()
        close = await closing(billing)
        reserves = [asyncio.create_task(billing.reserve("alice", amount)) for amount in (300, TAB + 7, 50)]
        await close
        for i, hold in enumerate(await asyncio.gather(*reserves)):
            cost = hold.amount // 10 + i
            charge(billing, hold, f"r{round_}-{i}", cost)
            paid += cost
        await billing.flush()
    assert billing.stats["charged"] == 15 and billing.stats["rejected"] == 0
    await adds_up(billing, paid)


def test_signed_digests_are_bounded_per_provider_and_expire() -> None:
    signed = SignedDigests(per_node=100, ttl_s=60)
    for i in range(50):  # a provider stating 5,000 made-up digests
        signed.add("liar", [i.to_bytes(2, "big") + bytes([j]) for j in range(100)], now=float(i))
    signed.add("honest", [b"real"], now=49.0)
    assert len(signed) == 101
    assert signed.take("liar", (49).to_bytes(2, "big") + bytes([99]))  # its newest are kept
    assert signed.take("honest", b"real") and not signed.take("honest", b"real")  # each covers one charge
    signed.add("honest", [b"late"], now=100.0)
    signed.prune(now=115.0)  # nothing was queued: the timer alone forgets them
    assert len(signed) == 1 and signed.take("honest", b"late")
