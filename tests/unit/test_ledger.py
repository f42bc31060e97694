"""The ledger's behavioural suite, run on every backend: SQLite, PostgreSQL, EVM in-process, EVM on Anvil.

Plus SQL-only checks (journal tampering, two writers on one database). EVM-only
checks (receipt signatures, replay, slashing evidence, gas) are in test_ledger_evm.py.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from gpupool.ledger import InsufficientFunds, LedgerError, SqlLedger
from gpupool.ledger import postings
from gpupool.ledger.interface import Charge

from .ledger_backends import Backend, anvil_url, backend, drop_pg_database, pg_database  # noqa: F401 - fixtures


@pytest.fixture(params=["sqlite", "postgresql"])
async def url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'ledger.db'}"
        return
    name = await pg_database()
    if name is None:
        pytest.skip("PostgreSQL not reachable at 127.0.0.1:5432")
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        await drop_pg_database(name)


async def test_request_lifecycle_moves_exactly_the_documented_amounts(backend: Backend) -> None:
    led = backend.ledger
    await led.deposit("d1", "alice", 1_000_000)
    await led.hold("r1", "alice", 50_000)
    assert await led.balance(postings.client("alice")) == 950_000
    await led.settle("r1", provider="gpx", cost=20_000, fee_bps=500)
    assert await led.balance(postings.client("alice")) == 980_000
    assert await led.balance(postings.client_hold("alice")) == 0
    assert await led.balance(postings.provider_held("gpx")) == 19_000
    assert await led.balance(postings.GATEWAY_FEES) == 1_000
    # Replaying the same settlement (same key) changes nothing: never charged twice.
    await led.settle("r1", provider="gpx", cost=20_000, fee_bps=500)
    assert await led.balance(postings.client("alice")) == 980_000
    # A different settlement under the same key is refused.
    with pytest.raises(LedgerError):
        await led.settle("r1", provider="gpx", cost=30_000, fee_bps=500)
    await led.release("r1")
    assert await led.balance(postings.provider_free("gpx")) == 19_000
    # A failed request gives the whole hold back.
    await led.hold("r2", "alice", 10_000)
    await led.cancel_hold("r2")
    assert await led.balance(postings.client("alice")) == 980_000
    with pytest.raises(InsufficientFunds):
        await led.hold("r3", "alice", 10_000_000)
    with pytest.raises(LedgerError):
        await led.settle("never-held", provider="gpx", cost=1, fee_bps=0)
    # Withdrawals leave through `world`; more than the balance is refused.
    await led.withdraw("w1", postings.client("alice"), 80_000)
    with pytest.raises(InsufficientFunds):
        await led.withdraw("w2", postings.client("alice"), 900_001)
    assert await led.balance(postings.client("alice")) == 900_000
    assert await led.balance(postings.WORLD) == -920_000
    assert await led.verify() == []


async def test_stake_unbonding_and_slash(backend: Backend) -> None:
    led = backend.ledger
    await led.deposit("d", "bob", 100_000)
    await led.hold("r", "bob", 100_000)
    await led.settle("r", provider="gpy", cost=100_000, fee_bps=0)
    await led.release("r")
    await led.stake("s1", "gpy", 60_000)
    await led.unstake("u1", "gpy", 10_000, now=1000.0, delay_s=3600)
    with pytest.raises(LedgerError):
        await led.complete_unstake("u1", now=2000.0)  # still unbonding
    await led.complete_unstake("u1", now=5000.0)
    assert await led.balance(postings.provider_free("gpy")) == 50_000
    # More work held, then fraud: held earnings and stake pay refunds, then the bounty.
    await led.deposit("d2", "carol", 40_000)
    await led.hold("r2", "carol", 40_000)
    await led.settle("r2", provider="gpy", cost=40_000, fee_bps=0)
    evidence = await backend.slash_evidence("r2", "carol", "gpy", 40_000)
    await led.slash("slash-1", "gpy", refunds={"carol": 40_000}, checker_id="chk", bounty_bps=5_000, **evidence)
    assert await led.balance(postings.client("carol")) == 40_000
    assert await led.balance(postings.provider_held("gpy")) == 0 and await led.balance(postings.stake("gpy")) == 0
    assert await led.balance(postings.checker("chk")) == 25_000  # half of what remained of 90,000 - 40,000
    assert await led.balance(postings.SLASHED) == 25_000
    await led.deposit("d3", "dave", 5_000)
    await led.hold("r3", "dave", 5_000)
    await led.settle("r3", provider="gpy", cost=5_000, fee_bps=0)
    evidence = await backend.slash_evidence("r3", "dave", "gpy", 5_000)
    with pytest.raises(LedgerError):  # cannot refund more than can be taken
        await led.slash("slash-2", "gpy", refunds={"carol": 5_001}, checker_id="chk", bounty_bps=0, **evidence)
    assert await led.verify() == []


async def _funded_tab(backend: Backend) -> None:
    """alice deposits 1,000,000 µcr and a gateway reserves a 300,000 µcr tab for her."""
    await backend.ledger.deposit("dep", "alice", 1_000_000)
    await backend.ledger.hold("tab:gw1:alice:1", "alice", 300_000)


async def test_batch_settlement_charges_the_tab_and_pays_nothing_twice(backend: Backend) -> None:
    backend.needs("settle_batch")
    led = backend.ledger
    await _funded_tab(backend)
    assert await led.balance(postings.client_hold("alice")) == 300_000
    charges = [await backend.charge(f"q{i}", "alice", "gpa" if i % 2 else "gpb", 10_000 + i) for i in range(6)]
    result = await led.settle_batch("batch:gw1:1", charges, fee_bps=500)
    assert result.paid == [f"q{i}" for i in range(6)] and result.rejected == {}
    total = sum(10_000 + i for i in range(6))
    fees = sum(postings.fee_of(10_000 + i, 500) for i in range(6))
    assert await led.balance(postings.client_hold("alice")) == 300_000 - total
    assert await led.balance(postings.GATEWAY_FEES) == fees
    assert await led.balance(postings.provider_held("gpa")) + await led.balance(postings.provider_held("gpb")) == total - fees
    assert await led.balance(postings.provider_held("gpb")) == sum(10_000 + i - postings.fee_of(10_000 + i, 500) for i in (0, 2, 4))
    # The same batch replayed: nothing moves.
    replay = await led.settle_batch("batch:gw1:1", charges, fee_bps=500)
    assert await led.balance(postings.client_hold("alice")) == 300_000 - total
    assert replay.paid == [f"q{i}" for i in range(6)]  # reports what the batch paid the first time
    # The same batch key with other content is refused, on both backends.
    with pytest.raises(LedgerError):
        await led.settle_batch("batch:gw1:1", charges[:3], fee_bps=500)
    # A receipt already paid, inside a new batch, is rejected; the rest of the batch is paid.
    again = await led.settle_batch("batch:gw1:2", [charges[0], await backend.charge("q9", "alice", "gpa", 1_000)],
                                   fee_bps=0)
    assert again.paid == ["q9"] and set(again.rejected) == {"q0"}
    assert await led.balance(postings.client_hold("alice")) == 300_000 - total - 1_000
    assert await led.verify() == []


async def test_batch_charge_beyond_the_reserve_is_rejected_alone(backend: Backend) -> None:
    backend.needs("settle_batch")
    led = backend.ledger
    await _funded_tab(backend)
    charges = [await backend.charge("big", "alice", "gpa", 300_001), await backend.charge("ok", "alice", "gpa", 7_000)]
    result = await led.settle_batch("batch:x", charges, fee_bps=0)
    assert result.paid == ["ok"] and set(result.rejected) == {"big"}
    assert await led.balance(postings.client_hold("alice")) == 293_000
    assert await led.balance(postings.provider_held("gpa")) == 7_000


async def test_paid_names_exactly_the_charged_request_ids(backend: Backend) -> None:
    """What the batch runner asks before marking a run done: charged in a batch or alone, never refused ones."""
    led = backend.ledger
    await _funded_tab(backend)
    assert await led.paid([]) == set()
    charges = [await backend.charge("b1", "alice", "gpa", 5_000), await backend.charge("b2", "alice", "gpb", 0),
               await backend.charge("too-big", "alice", "gpa", 300_001)]
    result = await led.settle_batch("batch:p", charges, fee_bps=500)
    assert set(result.rejected) == {"too-big"}
    await led.deposit("d-solo", "bob", 50_000)
    await led.hold("solo", "bob", 20_000)
    await led.settle("solo", provider="gpa", cost=1_000, fee_bps=0)
    await led.hold("cancelled", "bob", 20_000)
    await led.cancel_hold("cancelled")  # its hold went back: nothing was charged
    await led.hold("pending", "bob", 1_000)  # held, not yet settled
    asked = ["b1", "b2", "too-big", "solo", "cancelled", "pending", "never-seen", "b1"]
    assert await led.paid(asked) == {"b1", "b2", "solo"}
    assert await led.paid(iter(["b2", "nope"])) == {"b2"}
    many = [f"x{i}" for i in range(1_100)] + ["b1"]  # more ids than one query asks for
    assert await led.paid(many) == {"b1"}


async def test_release_hold_returns_the_unused_rest_of_a_tab(backend: Backend) -> None:
    backend.needs("release_hold")
    led = backend.ledger
    await _funded_tab(backend)
    await led.release_hold("tab:gw1:alice:1:close", "alice", 120_000)
    await led.release_hold("tab:gw1:alice:1:close", "alice", 120_000)  # replay: no effect
    assert await led.balance(postings.client("alice")) == 820_000
    assert await led.balance(postings.client_hold("alice")) == 180_000
    with pytest.raises(LedgerError):
        await led.release_hold("tab:gw1:alice:1:close", "alice", 1)  # same key, other content
    with pytest.raises(InsufficientFunds):
        await led.release_hold("too-much", "alice", 180_001)
    assert await led.verify() == []


async def test_each_gateways_reserve_is_its_own_account(backend: Backend) -> None:
    """Two gateways (holders) reserve for one client: each charges and returns only its own reserve."""
    backend.needs("settle_batch")
    led = backend.ledger
    await led.deposit("dep-h", "alice", 100_000)
    await led.hold("tab:g1", "alice", 30_000, holder="gwone")
    await led.hold("tab:g2", "alice", 20_000, holder="gwtwo")
    assert await led.balance(postings.client_hold("alice", "gwone")) == 30_000
    assert await led.balance(postings.client_hold("alice", "gwtwo")) == 20_000
    assert await led.balance(postings.client_hold("alice")) == 0
    big = await backend.charge("h1", "alice", "gpa", 25_000)
    # gwtwo's reserve (20,000) cannot cover it even though gwone's could.
    assert set((await led.settle_batch("b-g2", [big], fee_bps=0, holder="gwtwo")).rejected) == {"h1"}
    assert (await led.settle_batch("b-g1", [big], fee_bps=0, holder="gwone")).paid == ["h1"]
    await led.release_hold("untab:g1", "alice", 5_000, holder="gwone")
    with pytest.raises(InsufficientFunds):
        await led.release_hold("untab:g2", "alice", 20_001, holder="gwtwo")
    await led.release_hold("untab:g2b", "alice", 20_000, holder="gwtwo")
    assert await led.balance(postings.client("alice")) == 100_000 - 25_000
    assert await led.balance(postings.client_hold("alice", "gwone")) == 0
    assert await led.balance(postings.provider_held("gpa")) == 25_000
    assert await led.verify() == []


async def test_release_due_makes_only_old_batches_withdrawable(backend: Backend) -> None:
    backend.needs("release_due")
    led = backend.ledger
    await _funded_tab(backend)
    await led.settle_batch("b1", [await backend.charge("q1", "alice", "gpa", 10_000)], fee_bps=1_000)
    now = time.time()
    assert await led.release_due(now - 60, window_s=3600) == 0  # inside the audit window
    assert await led.balance(postings.provider_held("gpa")) == 9_000
    assert await led.release_due(now + 7200, window_s=3600) == 9_000
    assert await led.balance(postings.provider_held("gpa")) == 0
    assert await led.balance(postings.provider_free("gpa")) == 9_000
    assert await led.release_due(now + 7200, window_s=3600) == 0  # released once
    await led.withdraw("payout", postings.provider_free("gpa"), 9_000)
    assert await led.balance(postings.provider_free("gpa")) == 0
    if backend.is_evm:
        assert await led.verify() == []
    else:  # the caller's clock ran two hours ahead of the journal's: SQL's verify says so
        (problem,) = await led.verify()
        assert "released" in problem and "before its 3600 s audit window ended" in problem


async def test_tampering_with_the_journal_or_balances_is_detected(tmp_path: Path) -> None:
    led = await SqlLedger.open(f"sqlite+aiosqlite:///{tmp_path / 'l.db'}")
    await led.deposit("d1", "alice", 500)
    await led.deposit("d2", "alice", 700)
    async with led.engine.begin() as conn:
        await conn.execute(text("UPDATE ledger_journal SET body = replace(body, '500', '900') WHERE key = 'd1'"))
    problems = await led.verify()
    assert any("does not chain" in p for p in problems), problems
    async with led.engine.begin() as conn:
        await conn.execute(text("UPDATE ledger_accounts SET balance = balance + 1 WHERE name = 'client:alice'"))
    assert any("created or lost" in p for p in await led.verify())
    await led.close()


async def test_account_history_reads_the_index_and_old_databases_gain_it(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    led = await SqlLedger.open(f"sqlite+aiosqlite:///{path}")
    for i in range(30):
        await led.deposit(f"d{i}", "alice" if i % 3 else "bob", 100 + i)
    newest = await led.history("client:alice", limit=5)
    assert [h["key"] for h in newest] == ["d29", "d28", "d26", "d25", "d23"]
    assert [h["delta"] for h in newest] == [129, 128, 126, 125, 123]
    assert len(await led.history("client:bob", limit=100)) == 10
    # A database written before the index existed: the index is filled once, on open.
    async with led.engine.begin() as conn:
        await conn.execute(text("DROP TABLE ledger_account_entries"))
    await led.close()
    led = await SqlLedger.open(f"sqlite+aiosqlite:///{path}")
    assert await led.history("client:alice", limit=5) == newest
    assert await led.verify() == []
    # An index row edited behind the ledger's back is found.
    async with led.engine.begin() as conn:
        await conn.execute(text("UPDATE ledger_account_entries SET delta = 1 WHERE seq = 30 AND account = 'client:alice'"))
    assert any("account index disagrees" in p for p in await led.verify())
    await led.close()


async def test_verify_checks_paid_once_records_and_release_times(url: str) -> None:
    """Rows edited behind the ledger's back: a batch's time moved back (its earnings then release
    early), a paid-once record deleted (its receipt could be charged again) or invented."""
    led = await SqlLedger.open(url)
    try:
        await led.deposit("dep", "alice", 100_000)
        await led.hold("tab", "alice", 50_000)
        await led.settle_batch("b1", [Charge("q1", "alice", "gpa", 10_000), Charge("q2", "alice", "gpa", 5_000)], 0)
        assert await led.release_due(time.time(), window_s=3600) == 0
        assert await led.verify() == []
        async with led.engine.begin() as conn:  # the batch "happened" two hours ago
            await conn.execute(text("UPDATE ledger_journal SET at = at - 7200 WHERE key = 'b1'"))
        assert await led.release_due(time.time(), window_s=3600) == 15_000  # released early...
        problems = await led.verify()
        assert any("(b1)" in p and "time was edited" in p for p in problems), problems  # ...and detected
        async with led.engine.begin() as conn:
            await conn.execute(text("UPDATE ledger_journal SET at = at + 7200 WHERE key = 'b1'"))
            await conn.execute(text("DELETE FROM ledger_paid WHERE request_id = 'q1'"))
            await conn.execute(text("INSERT INTO ledger_paid (request_id, batch) VALUES ('q9', 'b1')"))
        problems = await led.verify()
        assert any("'q1' was paid by b1 but its paid-once record is missing" in p for p in problems), problems
        assert any("paid-once record for request 'q9'" in p for p in problems), problems
        # The restored time chains again; the release came before the window it recorded.
        assert any("release:b1: earnings released" in p for p in problems), problems
        assert not any("does not chain" in p for p in problems), problems
        # The operator's command says the same, one line per problem, and fails.
        import subprocess
        import sys

        out = subprocess.run([sys.executable, "-m", "gpupool", "ledger", "verify", "--ledger", url],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 1 and "Traceback" not in out.stderr
        assert "'q1' was paid by b1 but its paid-once record is missing" in out.stderr
    finally:
        await led.close()


OPS = st.lists(st.tuples(st.sampled_from(["deposit", "hold", "settle", "cancel", "release", "withdraw"]),
                         st.integers(0, 3), st.integers(1, 50_000)), max_size=40)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_random_operation_sequences_keep_every_invariant(tmp_path: Path, ops: list) -> None:
    asyncio.run(_random_ops(SqlLedger.open(f"sqlite+aiosqlite:///{tmp_path / f'{uuid.uuid4().hex}.db'}"), ops))


async def _random_ops(opening: Awaitable[Any], ops: list) -> None:
    led = await opening
    deposits = withdrawals = 0
    holds: dict[str, str] = {}
    settled: list[str] = []
    for i, (op, who, amount) in enumerate(ops):
        client = f"c{who}"
        try:
            if op == "deposit":
                await led.deposit(f"d{i}", client, amount)
                deposits += amount
            elif op == "hold":
                await led.hold(f"r{i}", client, amount)
                holds[f"r{i}"] = client
            elif op == "settle" and holds:
                rid = sorted(holds)[amount % len(holds)]
                await led.settle(rid, provider=f"p{who}", cost=amount // 3, fee_bps=250)
                settled.append(rid)
                holds.pop(rid)
            elif op == "cancel" and holds:
                await led.cancel_hold(holds.popitem()[0])
            elif op == "release" and settled:
                await led.release(settled[amount % len(settled)])
            elif op == "withdraw":
                await led.withdraw(f"w{i}", postings.client(client), amount)
                withdrawals += amount
        except InsufficientFunds:
            pass
        except LedgerError as exc:
            assert "outside the hold" in str(exc), exc
            holds.pop(rid, None)  # type: ignore[possibly-undefined]
            await led.cancel_hold(rid)  # type: ignore[possibly-undefined]
    balances = await led.balances()
    assert all(v >= 0 for k, v in balances.items() if k != postings.WORLD)
    assert sum(v for k, v in balances.items() if k != postings.WORLD) == deposits - withdrawals
    assert await led.verify() == []
    await led.close()


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_random_operation_sequences_keep_every_invariant_on_chain(ops: list) -> None:
    """The same random sequences against the in-process EVM ledger (fewer: each is a fresh chain)."""
    from gpupool.ledger.evm import EvmLedger

    asyncio.run(_random_ops(EvmLedger.open("evm+tester://"), ops))


async def test_two_writers_on_one_database_stay_consistent(url: str) -> None:
    """Two ledgers (as two gateway replicas) settling concurrently against one database."""
    a, b = await SqlLedger.open(url), await SqlLedger.open(url)
    await a.deposit("seed", "alice", 10_000_000)
    rng = random.Random(5)
    costs = {f"r{i}": rng.randint(1, 900) for i in range(60)}

    async def work(led: SqlLedger, ids: list[str]) -> None:
        for rid in ids:
            await led.hold(rid, "alice", 1_000)
            await led.settle(rid, provider="gpz", cost=costs[rid], fee_bps=1_000)
            await led.settle(rid, provider="gpz", cost=costs[rid], fee_bps=1_000)  # replayed: no effect

    ids = sorted(costs)
    await asyncio.gather(work(a, ids[::2]), work(b, ids[1::2]))
    total = sum(costs.values())
    assert await a.balance(postings.client("alice")) == 10_000_000 - total
    assert await a.balance(postings.provider_held("gpz")) + await a.balance(postings.GATEWAY_FEES) == total
    assert await a.verify() == []
    await a.close()
    await b.close()
