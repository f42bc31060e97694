"""Pure money logic: which accounts move how many micro-credits for each operation.

    entry = settle_entry("req-1", client="k7", provider="gpab…", hold=5_000, cost=1_200, fee_bps=500)
    # 1,200 from the client's hold: 1,140 to the provider's held earnings, 60 gateway fee;
    # the unused 3,800 back to the client's balance.

Accounts are strings `kind:id[:sub]`. `world` is the outside: deposits come from it
and withdrawals go to it, so the sum over *all* accounts is always zero and the sum
over the others equals deposits minus withdrawals. Amounts are integer µcr
(1 credit = 1,000,000 µcr), never floats.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field

WORLD = "world"
GATEWAY_FEES = "gateway:fees"
SLASHED = "system:slashed"  # slashed stake not paid out as refunds or bounty
BPS = 10_000


class LedgerError(Exception):
    """An operation that would break a ledger rule (bad amount, unknown hold, ...)."""


class InsufficientFunds(LedgerError):
    """An account other than `world` would go below zero."""


def account(kind: str, ident: str, sub: str = "") -> str:
    if ":" in ident:
        raise LedgerError(f"account id may not contain ':' ({ident!r})")
    return f"{kind}:{ident}" + (f":{sub}" if sub else "")


def account_for(name: str) -> str:
    """A ledger account id from a key's name: lower case, [a-z0-9._-]; keys with one name share it.

    A name that is already such an id is used as it is. Any other name (upper case,
    spaces, symbols, over 64 characters) gets a short hash of the exact name appended,
    so distinct names never share an account ("Alice" and "alice!" spend from
    different ones).
    """
    slug = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-")
    if slug == name and 0 < len(slug) <= 64:
        return slug
    if not name:
        return "default"
    return f"{slug[:50] or 'key'}.{hashlib.sha256(name.encode()).hexdigest()[:12]}"


def client(ident: str) -> str:
    return account("client", ident)


def client_hold(ident: str, holder: str = "") -> str:
    """Funds reserved for the client's requests; `holder` (a gateway's id) keeps each gateway's tab apart."""
    return account("client", ident, f"hold-{holder}" if holder else "hold")


def provider_held(ident: str) -> str:
    return account("provider", ident, "held")  # earned, inside the audit window


def provider_free(ident: str) -> str:
    return account("provider", ident)  # withdrawable


def stake(ident: str) -> str:
    return account("stake", ident)


def unbonding(ident: str) -> str:
    return account("stake", ident, "unbonding")


def checker(ident: str) -> str:
    return account("checker", ident)


@dataclass(frozen=True)
class Posting:
    """`amount` µcr move from `source` to `target`."""

    source: str
    target: str
    amount: int


@dataclass(frozen=True)
class Entry:
    key: str  # idempotency key: the same key is applied once
    kind: str
    postings: tuple[Posting, ...]
    memo: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for p in self.postings:
            if not isinstance(p.amount, int) or p.amount < 0:
                raise LedgerError(f"amounts are non-negative integers (got {p.amount!r})")
            if p.source == p.target:
                raise LedgerError(f"posting from {p.source} to itself")

    def deltas(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.postings:
            if p.amount:
                out[p.source] = out.get(p.source, 0) - p.amount
                out[p.target] = out.get(p.target, 0) + p.amount
        return out

    def canonical(self) -> bytes:
        body = {"key": self.key, "kind": self.kind, "memo": self.memo,
                "postings": [[p.source, p.target, p.amount] for p in self.postings]}
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def chain_hash(prev: str, entry: Entry, at_ms: int | None = None) -> str:
    """Each journal row commits to the one before it: editing history breaks the chain.

    `at_ms` (the row's time, in ms) is committed too, because time moves money: held
    earnings are released by it. Rows written before times were committed pass `None`.
    """
    when = b"" if at_ms is None else b"\x00" + str(at_ms).encode()
    return hashlib.sha256(prev.encode() + b"\x00" + entry.canonical() + when).hexdigest()


GENESIS = "0" * 64


def fee_of(cost: int, fee_bps: int) -> int:
    """The gateway's fee on a charge, rounded down (the provider never gets less than cost - fee)."""
    if not 0 <= fee_bps <= BPS:
        raise LedgerError("fee_bps must be between 0 and 10,000")
    return cost * fee_bps // BPS


def _positive(amount: int, what: str) -> None:
    if not isinstance(amount, int) or amount <= 0:
        raise LedgerError(f"{what} must be a positive integer of µcr (got {amount!r})")


# ---------------------------------------------------------------- operations


def deposit_entry(key: str, client_id: str, amount: int) -> Entry:
    _positive(amount, "deposit")
    return Entry(key, "deposit", (Posting(WORLD, client(client_id), amount),))


def withdraw_entry(key: str, acct: str, amount: int) -> Entry:
    _positive(amount, "withdrawal")
    return Entry(key, "withdraw", (Posting(acct, WORLD, amount),))


def hold_entry(request_id: str, client_id: str, amount: int, holder: str = "") -> Entry:
    """Reserve the request's maximum cost (or a gateway's tab) before dispatch."""
    _positive(amount, "hold")
    memo: dict[str, object] = {"request_id": request_id, "client": client_id, "amount": amount}
    if holder:
        memo["holder"] = holder
    return Entry(f"hold:{request_id}", "hold", (Posting(client(client_id), client_hold(client_id, holder), amount),),
                 memo)


def settle_entry(request_id: str, client_id: str, provider_id: str, hold: int, cost: int, fee_bps: int) -> Entry:
    """Charge `cost` from the hold (never more than held), pay provider (held) and fee, release the rest."""
    if not 0 <= cost <= hold:
        raise LedgerError(f"cost {cost} outside the hold of {hold}")
    fee = fee_of(cost, fee_bps)
    return Entry(f"settle:{request_id}", "settle", (
        Posting(client_hold(client_id), provider_held(provider_id), cost - fee),
        Posting(client_hold(client_id), GATEWAY_FEES, fee),
        Posting(client_hold(client_id), client(client_id), hold - cost),
    ), {"request_id": request_id, "client": client_id, "provider": provider_id, "cost": cost, "fee": fee,
        "earned": cost - fee})


def release_hold_entry(key: str, client_id: str, amount: int, holder: str = "") -> Entry:
    """Part of a client's reserved funds (a gateway's tab) goes back to its balance."""
    _positive(amount, "release")
    return Entry(key, "release_hold", (Posting(client_hold(client_id, holder), client(client_id), amount),),
                 {"client": client_id, "amount": amount})


def settle_batch_entry(key: str, charges: list[tuple[str, str, str, int]], fee_bps: int,
                       holder: str = "") -> Entry:
    """Many requests charged in one entry: `(request_id, client, provider, cost)` each.

    Postings are summed per (client, provider) pair, so a batch of thousands of
    receipts is a handful of postings; the memo keeps every charge for audits,
    refunds and the client's history.
    """
    per_pair: dict[tuple[str, str], int] = {}
    fees: dict[str, int] = {}
    earned: dict[str, int] = {}
    rows: list[list[object]] = []
    for request_id, client_id, provider_id, cost in charges:
        if not isinstance(cost, int) or cost < 0:
            raise LedgerError(f"cost must be a non-negative integer of µcr (got {cost!r})")
        fee = fee_of(cost, fee_bps)
        per_pair[(client_id, provider_id)] = per_pair.get((client_id, provider_id), 0) + cost - fee
        fees[client_id] = fees.get(client_id, 0) + fee
        earned[provider_id] = earned.get(provider_id, 0) + cost - fee
        rows.append([request_id, client_id, provider_id, cost, fee])
    postings = [Posting(client_hold(c, holder), provider_held(p), amount)
                for (c, p), amount in sorted(per_pair.items())]
    postings += [Posting(client_hold(c, holder), GATEWAY_FEES, fee) for c, fee in sorted(fees.items())]
    return Entry(key, "settle_batch", tuple(p for p in postings if p.amount),
                 {"charges": rows, "earned": dict(sorted(earned.items())), "fee_bps": fee_bps})


def release_batch_entry(batch_key: str, earned: dict[str, int], window_s: float | None = None) -> Entry:
    """A settled batch's earnings leave the audit window: held -> withdrawable, per provider.

    `window_s` (the audit window it waited) goes in the memo, so `verify` can check the
    release came no sooner than that after the batch."""
    memo: dict[str, object] = {"batch": batch_key, "released": earned}
    if window_s is not None:
        memo["window_s"] = window_s
    return Entry(f"release:{batch_key}", "release", tuple(
        Posting(provider_held(p), provider_free(p), amount) for p, amount in sorted(earned.items()) if amount),
        memo)


def cancel_hold_entry(request_id: str, client_id: str, hold: int) -> Entry:
    """The request ended without a valid receipt: the whole hold goes back."""
    return Entry(f"settle:{request_id}", "release_hold",
                 (Posting(client_hold(client_id), client(client_id), hold),),
                 {"request_id": request_id, "client": client_id, "cost": 0})


def release_entry(request_id: str, provider_id: str, earned: int) -> Entry:
    """After the audit window without a failed audit, held earnings become withdrawable."""
    return Entry(f"release:{request_id}", "release",
                 (Posting(provider_held(provider_id), provider_free(provider_id), earned),),
                 {"request_id": request_id, "provider": provider_id})


def stake_entry(key: str, provider_id: str, amount: int) -> Entry:
    _positive(amount, "stake")
    return Entry(key, "stake", (Posting(provider_free(provider_id), stake(provider_id), amount),))


def unstake_entry(key: str, provider_id: str, amount: int, available_at: float) -> Entry:
    _positive(amount, "unstake")
    return Entry(key, "unstake", (Posting(stake(provider_id), unbonding(provider_id), amount),),
                 {"provider": provider_id, "available_at": available_at, "amount": amount})


def unbonded_entry(key: str, provider_id: str, amount: int) -> Entry:
    return Entry(key, "unbonded", (Posting(unbonding(provider_id), provider_free(provider_id), amount),))


def slash_entry(key: str, provider_id: str, held: int, staked: int, refunds: dict[str, int], checker_id: str,
                bounty_bps: int) -> Entry:
    """Take the provider's held earnings and stake; refund clients first, then the checker's bounty.

    The refunds come out of what is taken (held earnings first, then stake); the
    checker gets `bounty_bps` of what remains; the rest goes to `system:slashed`.
    """
    pool = held + staked
    owed = sum(refunds.values())
    if owed > pool:
        raise LedgerError(f"refunds of {owed} exceed the {pool} that can be slashed")
    postings: list[Posting] = []
    sources = [(provider_held(provider_id), held), (stake(provider_id), staked)]

    def take(amount: int, target: str) -> None:
        for i, (src, left) in enumerate(sources):
            part = min(left, amount)
            if part:
                postings.append(Posting(src, target, part))
                sources[i] = (src, left - part)
                amount -= part
        assert amount == 0

    for client_id, amount in sorted(refunds.items()):
        take(amount, client(client_id))
    remaining = pool - owed
    bounty = remaining * bounty_bps // BPS
    take(bounty, checker(checker_id))
    take(remaining - bounty, SLASHED)
    return Entry(key, "slash", tuple(postings), {"provider": provider_id, "refunds": refunds, "bounty": bounty})
