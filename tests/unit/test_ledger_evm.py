"""What only the EVM ledger does: receipt signatures checked on chain, replay refused across
batches, slashing only with the provider's own signed receipt, one transaction per batch,
settlement keys on disk, and the gas each receipt costs."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from gpupool.ledger import InsufficientFunds, LedgerError
from gpupool.ledger import postings
from gpupool.ledger.evm import EvmLedger, deploy
from gpupool.ledger.settlement_key import SettlementKey, signed_charge

from .ledger_backends import anvil_url  # noqa: F401 - fixture


@pytest.fixture
async def led() -> AsyncIterator[EvmLedger]:
    ledger = await EvmLedger.open("evm+tester://")
    yield ledger
    await ledger.close()


async def _provider(led: EvmLedger, name: str) -> SettlementKey:
    key = SettlementKey.generate()
    await led.register_provider(name, key.address, key.sign_registration(led.address, led.chain_id, name))
    return key


async def _tab(led: EvmLedger, client: str = "alice", amount: int = 500_000) -> None:
    await led.deposit(f"dep:{client}", client, amount)
    await led.hold(f"tab:{client}", client, amount)


async def test_forged_and_tampered_receipts_are_rejected_and_the_rest_is_paid(led: EvmLedger) -> None:
    key = await _provider(led, "gpa")
    await _tab(led)
    good = signed_charge(key, led.address, led.chain_id, "good", "alice", "gpa", 10_000)
    forged = signed_charge(SettlementKey.generate(), led.address, led.chain_id, "forged", "alice", "gpa", 10_000)
    tampered = replace(signed_charge(key, led.address, led.chain_id, "tampered", "alice", "gpa", 1_000), cost=90_000)
    unsigned = replace(good, request_id="unsigned", signature=b"")
    other_chain = signed_charge(key, "0x" + "11" * 20, led.chain_id, "elsewhere", "alice", "gpa", 10_000)
    result = await led.settle_batch("b1", [forged, good, tampered, unsigned, other_chain], fee_bps=0)
    assert result.paid == ["good"]
    assert set(result.rejected) == {"forged", "tampered", "unsigned", "elsewhere"}
    assert all("signature" in why for why in result.rejected.values())
    assert await led.paid(["forged", "good", "tampered", "unsigned", "elsewhere"]) == {"good"}  # what the chain says
    assert await led.balance(postings.provider_held("gpa")) == 10_000
    assert await led.balance(postings.client_hold("alice")) == 490_000


async def test_unregistered_provider_is_never_paid_and_registration_is_set_once(led: EvmLedger) -> None:
    await _tab(led)
    stranger = SettlementKey.generate()
    charge = signed_charge(stranger, led.address, led.chain_id, "q", "alice", "gpnew", 5_000)
    assert (await led.settle_batch("b1", [charge], fee_bps=0)).paid == []
    with pytest.raises(LedgerError, match="not signed by the settlement key"):  # consent of the key is required
        await led.register_provider("gpnew", stranger.address, SettlementKey.generate().sign_registration(
            led.address, led.chain_id, "gpnew"))
    await led.register_provider("gpnew", stranger.address,
                                stranger.sign_registration(led.address, led.chain_id, "gpnew"))
    assert await led.settlement_address("gpnew") == stranger.address
    other = SettlementKey.generate()
    with pytest.raises(LedgerError, match="already registered"):  # the operator cannot swap in its own key
        await led.register_provider("gpnew", other.address, other.sign_registration(led.address, led.chain_id, "gpnew"))


async def test_receipt_replay_across_batches_and_changed_batch_content_are_refused(led: EvmLedger) -> None:
    key = await _provider(led, "gpa")
    await _tab(led)
    charges = [signed_charge(key, led.address, led.chain_id, f"q{i}", "alice", "gpa", 1_000) for i in range(3)]
    assert (await led.settle_batch("b1", charges, fee_bps=1_000)).paid == ["q0", "q1", "q2"]
    fresh = signed_charge(key, led.address, led.chain_id, "q3", "alice", "gpa", 1_000)
    again = await led.settle_batch("b2", [charges[1], fresh, fresh], fee_bps=1_000)
    # q3 twice in one batch: paid once, the second copy rejected (as SqlLedger does).
    assert again.paid == ["q3"] and again.rejected == {"q1": "already paid", "q3": "already paid"}
    assert await led.balance(postings.client_hold("alice")) == 496_000
    assert await led.balance(postings.provider_held("gpa")) == 3_600
    assert await led.balance(postings.GATEWAY_FEES) == 400
    with pytest.raises(LedgerError, match="different entry"):
        await led.settle_batch("b1", charges[:2], fee_bps=1_000)


async def test_one_transaction_per_batch_and_gas_per_receipt(led: EvmLedger) -> None:
    keys = {p: await _provider(led, p) for p in ("gpa", "gpb")}
    await _tab(led, amount=10_000_000)
    charges = [signed_charge(keys[p], led.address, led.chain_id, f"r{i}", "alice", p, 1_000 + i)
               for i, p in enumerate(["gpa", "gpb"] * 50)]
    before = await led.w3.eth.block_number
    result = await led.settle_batch("b100", charges, fee_bps=500)
    after = await led.w3.eth.block_number
    assert len(result.paid) == 100
    assert after == before + 1  # one block ...
    block = await led.w3.eth.get_block(after)
    assert len(block["transactions"]) == 1  # ... holding one transaction
    receipt = await led.w3.eth.get_transaction_receipt(block["transactions"][0])
    per_receipt = receipt["gasUsed"] / 100
    print(f"settle_batch of 100 receipts: {receipt['gasUsed']} gas, {per_receipt:.0f} gas per receipt")
    assert 20_000 < per_receipt < 60_000  # a new storage slot per receipt (replay guard) dominates
    with pytest.raises(LedgerError, match="at most 256"):
        await led.settle_batch("too-big", charges * 3, fee_bps=0)


async def test_slash_needs_a_paid_receipt_signed_by_the_provider(led: EvmLedger) -> None:
    key = await _provider(led, "gpa")
    await _tab(led, "carol", 100_000)
    paid = signed_charge(key, led.address, led.chain_id, "q1", "carol", "gpa", 40_000)
    await led.settle_batch("b1", [paid], fee_bps=0)
    await led.release_due(1e12, 0)
    await led.stake("s1", "gpa", 40_000)
    await led.settle_batch("b2", [signed_charge(key, led.address, led.chain_id, "q2", "carol", "gpa", 30_000)], 0)
    refunds = {"carol": 30_000}
    with pytest.raises(LedgerError, match="needs evidence"):
        await led.slash("x", "gpa", refunds, "chk", 5_000)
    forged = signed_charge(SettlementKey.generate(), led.address, led.chain_id, "q1", "carol", "gpa", 40_000)
    with pytest.raises(LedgerError, match="bad provider signature"):
        await led.slash("x", "gpa", refunds, "chk", 5_000, evidence=forged)
    with pytest.raises(LedgerError, match="bad provider signature"):  # signed, but for another cost
        await led.slash("x", "gpa", refunds, "chk", 5_000, evidence=replace(paid, cost=1))
    unpaid = signed_charge(key, led.address, led.chain_id, "never-paid", "carol", "gpa", 40_000)
    with pytest.raises(LedgerError, match="not paid to this provider"):
        await led.slash("x", "gpa", refunds, "chk", 5_000, evidence=unpaid)
    # An account that is not an authorised checker cannot slash, even with valid evidence.
    accounts = await led.w3.eth.accounts
    outsider = await EvmLedger.connect(led.w3, led.address, sender=accounts[3])
    with pytest.raises(LedgerError, match="authorised checker"):
        await outsider.slash("x", "gpa", refunds, "chk", 5_000, evidence=paid)
    await led.set_checker(accounts[3])
    entry = await outsider.slash("x", "gpa", refunds, "chk", 5_000, evidence=paid)
    # Held 30,000 + stake 40,000 = 70,000: 30,000 refunded, half of the other 40,000 to the checker.
    assert entry.deltas() == {postings.provider_held("gpa"): -30_000, postings.stake("gpa"): -40_000, postings.client("carol"): 30_000,
                              postings.checker("chk"): 20_000, postings.SLASHED: 20_000}
    assert await led.balance(postings.provider_held("gpa")) == 0 and await led.balance(postings.stake("gpa")) == 0
    assert await led.balance(postings.client("carol")) == 30_000
    assert await led.balance(postings.checker("chk")) == 20_000 and await led.balance(postings.SLASHED) == 20_000
    await outsider.slash("x", "gpa", refunds, "chk", 5_000, evidence=paid)  # replay: nothing more moves
    assert await led.balance(postings.checker("chk")) == 20_000
    with pytest.raises(LedgerError, match="evidence already used"):
        await led.slash("y", "gpa", {}, "chk", 0, evidence=paid)
    assert await led.verify() == []


async def test_provider_withdraws_its_earnings_to_its_own_address(led: EvmLedger) -> None:
    key = await _provider(led, "gpa")
    await _tab(led)
    await led.settle_batch("b1", [signed_charge(key, led.address, led.chain_id, "q", "alice", "gpa", 50_000)], 0)
    await led.release_due(1e12, 0)
    # Paid out by the operator, the earnings still go to the provider's address, not the operator's.
    await led.withdraw("payout-0", postings.provider_free("gpa"), 5_000)
    assert await led.w3.eth.get_balance(key.address) == 5_000
    # The provider signs its own withdrawal locally (private key path); it needs gas money first.
    await led.w3.eth.send_transaction({"from": led.chain.sender, "to": key.address, "value": 10**18})
    own = await EvmLedger.connect(led.w3, led.address, private_key=key.private.to_hex())
    await own.withdraw("payout-1", postings.provider_free("gpa"), 15_000)
    assert await led.balance(postings.provider_free("gpa")) == 30_000
    assert await led.w3.eth.get_balance(led.address) == 500_000 - 20_000
    with pytest.raises(InsufficientFunds):
        await own.withdraw("payout-2", postings.provider_free("gpa"), 30_001)
    with pytest.raises(LedgerError, match="only the owner"):  # a provider cannot touch a client's escrow
        await own.withdraw("steal", postings.client("alice"), 1)
    assert await led.verify() == []


async def test_deposit_replay_refunds_the_value_and_verify_checks_the_code(led: EvmLedger) -> None:
    await led.deposit("d1", "alice", 7_000)
    await led.deposit("d1", "alice", 7_000)
    assert await led.w3.eth.get_balance(led.address) == 7_000 == await led.balance(postings.client("alice"))
    with pytest.raises(LedgerError, match="different entry"):
        await led.deposit("d1", "alice", 8_000)
    assert await led.verify() == []
    accounts = await led.w3.eth.accounts
    fake = EvmLedger(led.chain, accounts[5], led.chain_id)  # an address without the ledger's code
    assert any("not the gpupool ledger contract" in p for p in await fake.verify())


def test_settlement_key_file_is_private_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "settlement.key"
    key = SettlementKey.load_or_create(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert SettlementKey.load_or_create(path).address == key.address


async def test_deploy_and_open_by_url_on_anvil_with_a_chain_time_floor(anvil_url: str) -> None:  # noqa: F811
    address = await deploy(anvil_url, min_delay=3600)
    led = await EvmLedger.open(f"evm+{anvil_url}?contract={address}")
    key = await _provider(led, "gpa")
    await _tab(led)
    await led.settle_batch("b1", [signed_charge(key, led.address, led.chain_id, "q", "alice", "gpa", 9_000)], 0)
    # The operator asks for no audit window; the contract's floor of an hour still holds.
    assert await led.release_due(1e12, window_s=0) == 0
    assert await led.balance(postings.provider_held("gpa")) == 9_000
    with pytest.raises(LedgerError, match="contract="):
        await EvmLedger.open(f"evm+{anvil_url}")
    await led.close()


async def test_owner_powers_are_limited_held_earnings_and_bound_clients(anvil_url: str) -> None:  # noqa: F811
    """The deploy default holds earnings for the audit window even against the owner's own
    `release`; a client bound to its wallet is paid back only to that wallet and charged only
    through provider-signed receipts."""
    led = await EvmLedger.open(f"evm+{anvil_url}?contract={await deploy(anvil_url)}")
    try:
        assert await led._view("min_delay") == 3600  # the gateway's default audit window
        await led.deposit("d-carol", "carol", 50_000)
        await led.hold("r1", "carol", 20_000)
        await led.settle("r1", "gpa", 12_000, fee_bps=0)
        with pytest.raises(LedgerError, match="still held"):
            await led.release("r1")  # the owner cannot release a request's earnings early
        assert await led.balance(postings.provider_held("gpa")) == 12_000

        wallet = SettlementKey.generate()
        with pytest.raises(LedgerError, match="not signed by the client's wallet"):
            await led.bind_client("bob", wallet.address, SettlementKey.generate().sign_client_binding(
                led.address, led.chain_id, "bob"))
        await led.bind_client("bob", wallet.address, wallet.sign_client_binding(led.address, led.chain_id, "bob"))
        assert await led.client_address("bob") == wallet.address
        mine = SettlementKey.generate()  # the owner cannot re-bind bob to a wallet of its own
        with pytest.raises(LedgerError, match="already bound"):
            await led.bind_client("bob", mine.address, mine.sign_client_binding(led.address, led.chain_id, "bob"))
        await led.deposit("d-bob", "bob", 30_000)
        await led.hold("r2", "bob", 10_000)
        with pytest.raises(LedgerError, match="signed receipts"):
            await led.settle("r2", "gpa", 10_000, fee_bps=0)  # no receipt: the owner cannot charge bob
        await led.release_hold("r2-back", "bob", 10_000)
        owner_before = await led.w3.eth.get_balance(led.chain.sender)
        await led.withdraw("w-bob", postings.client("bob"), 30_000)  # sent by the owner...
        assert await led.w3.eth.get_balance(wallet.address) == 30_000  # ...paid to bob's wallet only
        assert await led.w3.eth.get_balance(led.chain.sender) < owner_before  # the owner only paid gas
        assert await led.verify() == []
    finally:
        await led.close()


async def _squat_scenario(led: EvmLedger) -> None:
    """A provider with its own settlement key tries to squat the operator's next batch key and
    the key of the slash that would punish it, by withdrawing 1 µcr under each first."""
    key = await _provider(led, "gpa")
    await _tab(led, "carol", 200_000)
    first = signed_charge(key, led.address, led.chain_id, "q1", "carol", "gpa", 40_000)
    await led.settle_batch("batch:gw:1", [first], fee_bps=0)
    await led.release_due(1e12, 0)
    await led.w3.eth.send_transaction({"from": led.chain.sender, "to": key.address, "value": 10**18})
    own = await EvmLedger.connect(led.w3, led.address, private_key=key.private.to_hex())
    for squatted in ("batch:gw:2", "slash:gpa:1"):
        await own.withdraw(squatted, postings.provider_free("gpa"), 1)
    second = signed_charge(key, led.address, led.chain_id, "q2", "carol", "gpa", 30_000)
    assert (await led.settle_batch("batch:gw:2", [second], fee_bps=0)).paid == ["q2"]
    assert (await led.settle_batch("batch:gw:2", [second], fee_bps=0)).paid == ["q2"]  # a replay still a no-op
    await led.stake("s1", "gpa", 20_000)
    await led.slash("slash:gpa:1", "gpa", {"carol": 30_000}, "chk", 0, evidence=second)
    assert await led.balance(postings.provider_held("gpa")) == 0 and await led.balance(postings.stake("gpa")) == 0
    assert await led.balance(postings.client("carol")) == 30_000  # the refund (the rest is in her tab)
    # The provider's own withdrawal keys are its own: reusing one with other content is refused,
    # the same content is a no-op, and the operator's payout under the same key is a new entry.
    with pytest.raises(LedgerError, match="different entry"):
        await own.withdraw("batch:gw:2", postings.provider_free("gpa"), 2)
    await own.withdraw("batch:gw:2", postings.provider_free("gpa"), 1)
    await led.withdraw("batch:gw:2", postings.provider_free("gpa"), 1)
    assert await led.balance(postings.provider_free("gpa")) == 40_000 - 20_000 - 3
    assert await led.verify() == []


async def test_a_provider_cannot_squat_settlement_or_slash_keys(led: EvmLedger) -> None:
    await _squat_scenario(led)


async def test_a_provider_cannot_squat_settlement_or_slash_keys_on_anvil(anvil_url: str) -> None:  # noqa: F811
    led = await EvmLedger.open(f"evm+{anvil_url}?contract={await deploy(anvil_url, min_delay=0)}")
    try:
        await _squat_scenario(led)
    finally:
        await led.close()
