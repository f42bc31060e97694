#pragma version ~=0.4.3
"""
@title gpupool ledger
@notice Escrow, receipt-checked batch settlement, held earnings, stakes with
        unbonding, and evidence-checked slashing for the gpupool network.
@dev    Amounts are integer micro-credits (µcr). Value is native coin at 1 wei = 1 µcr:
        a deposit carries exactly `amount` wei, a withdrawal pays it back out, so the
        contract's coin balance always equals the sum of its internal balances.
        Accounts are bytes32 keys (keccak256 of the client/provider/checker id);
        idempotency keys are keccak256 of the key string, namespaced on chain by
        operation and sender (see _first). See docs/ledger-evm.md.
"""

BPS: constant(uint256) = 10000
MAX_BATCH: constant(uint256) = 256
MAX_REFUNDS: constant(uint256) = 64
MAX_RELEASE_BATCHES: constant(uint256) = 64

# Rejection reasons reported per receipt by settle_batch (the rest of the batch is still paid).
ALREADY_PAID: constant(uint8) = 1
BAD_SIGNATURE: constant(uint8) = 2
INSUFFICIENT_HOLD: constant(uint8) = 3

# Withdrawable account kinds.
CLIENT: constant(uint8) = 0
PROVIDER: constant(uint8) = 1
CHECKER: constant(uint8) = 2
FEES: constant(uint8) = 3

struct Receipt:
    request: bytes32   # keccak256(request id)
    client: bytes32    # the hold account charged: the client's, or its reserve at one gateway
    provider: bytes32
    cost: uint256
    v: uint8           # the provider's secp256k1 signature over receipt_digest(...)
    r: bytes32
    s: bytes32

struct Hold:
    client: bytes32
    amount: uint256

struct Settled:
    provider: bytes32
    earned: uint256
    at: uint256        # block time of the settlement: release() waits min_delay after it

struct Unstake:
    provider: bytes32
    amount: uint256
    available_at_ms: uint256   # the operator's clock, as the SQL ledger
    not_before: uint256        # the chain's clock: block time + min_delay at unstake

event Batch:
    key: indexed(bytes32)
    index: uint256
    paid: uint256
    fees: uint256

event Rejected:
    request: indexed(bytes32)
    reason: uint8

event Released:
    total: uint256
    next_batch: uint256

event Slashed:
    key: indexed(bytes32)
    provider: indexed(bytes32)
    held: uint256
    staked: uint256
    bounty: uint256

owner: public(address)
min_delay: public(uint256)           # floor (seconds of chain time) for audit windows and unbonding
checkers: public(HashMap[address, bool])
settlement: public(HashMap[bytes32, address])   # provider key -> its registered secp256k1 address
client_address: public(HashMap[bytes32, address])  # client key -> the only address its funds may go to

used: public(HashMap[bytes32, bytes32])          # keccak256(operation, sender, key) -> digest of the content
paid: public(HashMap[bytes32, bytes32])          # request key -> provider it was paid to
evidence_used: public(HashMap[bytes32, bool])    # a paid receipt slashes at most once
holds: public(HashMap[bytes32, Hold])
settled: public(HashMap[bytes32, Settled])
unstakes: public(HashMap[bytes32, Unstake])

client_free: public(HashMap[bytes32, uint256])
client_hold: public(HashMap[bytes32, uint256])
provider_held: public(HashMap[bytes32, uint256])
provider_free: public(HashMap[bytes32, uint256])
staked: public(HashMap[bytes32, uint256])
unbonding: public(HashMap[bytes32, uint256])
checker_free: public(HashMap[bytes32, uint256])
fees: public(uint256)
slashed: public(uint256)
deposited: public(uint256)   # all value that ever came in
withdrawn: public(uint256)   # all value that ever went out

n_batches: public(uint256)
next_release: public(uint256)
batch_at: public(HashMap[uint256, uint256])
batch_earned: public(HashMap[uint256, HashMap[bytes32, uint256]])
batch_providers: HashMap[uint256, DynArray[bytes32, MAX_BATCH]]


@deploy
def __init__(min_delay: uint256):
    self.owner = msg.sender
    self.min_delay = min_delay


@internal
@view
def _only_owner():
    assert msg.sender == self.owner, "only the owner"


@internal
def _first(op: bytes32, key: bytes32, digest: bytes32) -> bool:
    # True the first time a key is used; a replay with the same content is a no-op,
    # the same key with different content is refused. Keys live in one space per
    # operation and sender: a provider or client withdrawing with its own key can never
    # consume the operator's settle_batch or slash key (which would jam settlement or
    # escape the slash), and no caller can consume another operation's key.
    k: bytes32 = keccak256(abi_encode(op, msg.sender, key))
    prior: bytes32 = self.used[k]
    if prior == empty(bytes32):
        self.used[k] = digest
        return True
    assert prior == digest, "key was already used for a different entry"
    return False


@external
@view
def receipt_digest(request: bytes32, signer: address, cost: uint256) -> bytes32:
    return keccak256(abi_encode(self, chain.id, request, signer, cost))


@internal
@view
def _signed_by(request: bytes32, signer: address, cost: uint256, v: uint8, r: bytes32, s: bytes32) -> bool:
    if signer == empty(address):
        return False
    digest: bytes32 = keccak256(abi_encode(self, chain.id, request, signer, cost))
    return ecrecover(digest, v, r, s) == signer


# ------------------------------------------------------------------ registry

@external
def set_checker(checker: address, allowed: bool):
    self._only_owner()
    self.checkers[checker] = allowed


@external
def register_provider(provider: bytes32, signer: address, v: uint8, r: bytes32, s: bytes32):
    # Set once, and only with the key's own consent: the operator cannot later swap in
    # a key of its own to forge receipts (and slashing evidence) for this provider.
    self._only_owner()
    assert self.settlement[provider] == empty(address), "provider already registered"
    digest: bytes32 = keccak256(abi_encode(self, chain.id, keccak256("gpupool.register"), provider))
    assert ecrecover(digest, v, r, s) == signer, "registration not signed by the settlement key"
    self.settlement[provider] = signer


@external
def bind_client(client: bytes32, wallet: address, v: uint8, r: bytes32, s: bytes32):
    # Set once, with the wallet's consent: from then on the client's free funds leave the
    # contract only to that wallet, and move only by provider-signed receipts (settle_batch).
    self._only_owner()
    assert self.client_address[client] == empty(address), "client already bound"
    digest: bytes32 = keccak256(abi_encode(self, chain.id, keccak256("gpupool.bind_client"), client))
    assert ecrecover(digest, v, r, s) == wallet, "binding not signed by the client's wallet"
    self.client_address[client] = wallet


# ------------------------------------------------------------------ clients

@external
@payable
def deposit(key: bytes32, client: bytes32, amount: uint256):
    assert amount > 0, "deposit must be positive"
    assert msg.value == amount, "a deposit carries exactly amount wei (1 wei = 1 ucr)"
    # Anyone may fund an escrow; _first gives each sender its own key space.
    if not self._first(keccak256("deposit"), key, keccak256(abi_encode(client, amount))):
        send(msg.sender, msg.value)  # a replay pays nothing in
        return
    self.client_free[client] += amount
    self.deposited += amount


@external
def withdraw(key: bytes32, kind: uint8, ident: bytes32, amount: uint256):
    assert amount > 0, "withdrawal must be positive"
    to: address = self.owner
    if kind == PROVIDER and self.settlement[ident] != empty(address):
        # A provider's earnings only ever go to its own settlement address.
        to = self.settlement[ident]
        assert msg.sender == self.owner or msg.sender == to, "only the owner or the provider"
    elif kind == CLIENT and self.client_address[ident] != empty(address):
        # A bound client's funds only ever go back to its own wallet.
        to = self.client_address[ident]
        assert msg.sender == self.owner or msg.sender == to, "only the owner or the client"
    else:
        self._only_owner()
    if not self._first(keccak256("withdraw"), key, keccak256(abi_encode(kind, ident, amount))):
        return
    if kind == CLIENT:
        assert self.client_free[ident] >= amount, "insufficient funds: client"
        self.client_free[ident] -= amount
    elif kind == PROVIDER:
        assert self.provider_free[ident] >= amount, "insufficient funds: provider"
        self.provider_free[ident] -= amount
    elif kind == CHECKER:
        assert self.checker_free[ident] >= amount, "insufficient funds: checker"
        self.checker_free[ident] -= amount
    else:
        assert kind == FEES, "not a withdrawable account"
        assert self.fees >= amount, "insufficient funds: gateway fees"
        self.fees -= amount
    self.withdrawn += amount
    send(to, amount)


@internal
@pure
def _hold_account(client: bytes32, holder: bytes32) -> bytes32:
    # Each gateway (holder) reserves into an account of its own, so a restarted gateway
    # can return exactly what it had reserved; no holder is the client's plain hold.
    if holder == empty(bytes32):
        return client
    return keccak256(concat(client, holder))


@external
def hold(key: bytes32, client: bytes32, holder: bytes32, amount: uint256):
    self._only_owner()
    assert amount > 0, "hold must be positive"
    if not self._first(keccak256("hold"), key, keccak256(abi_encode(client, holder, amount))):
        return
    assert self.client_free[client] >= amount, "insufficient funds: client"
    held: bytes32 = self._hold_account(client, holder)
    self.client_free[client] -= amount
    self.client_hold[held] += amount
    self.holds[key] = Hold(client=client, amount=amount)


@external
def release_hold(key: bytes32, client: bytes32, holder: bytes32, amount: uint256):
    self._only_owner()
    assert amount > 0, "release must be positive"
    if not self._first(keccak256("release_hold"), key, keccak256(abi_encode(client, holder, amount))):
        return
    held: bytes32 = self._hold_account(client, holder)
    assert self.client_hold[held] >= amount, "insufficient funds: client hold"
    self.client_hold[held] -= amount
    self.client_free[client] += amount


@external
def settle(key: bytes32, hold_key: bytes32, request: bytes32, provider: bytes32, cost: uint256,
           fee_bps: uint256):
    # One request against its own hold, settled by the operator (no receipt check:
    # the receipt-checked path is settle_batch).
    self._only_owner()
    assert fee_bps <= BPS, "fee_bps must be between 0 and 10,000"
    h: Hold = self.holds[hold_key]
    assert h.amount > 0, "no hold for this request"
    assert cost <= h.amount, "cost outside the hold"
    assert self.client_address[h.client] == empty(address), "a bound client pays only by signed receipts"
    if not self._first(keccak256("settle"), key, keccak256(abi_encode(provider, cost, fee_bps))):
        return
    assert self.paid[request] == empty(bytes32), "request already paid"
    assert self.client_hold[h.client] >= h.amount, "insufficient funds: client hold"
    fee: uint256 = cost * fee_bps // BPS
    self.client_hold[h.client] -= h.amount
    self.client_free[h.client] += h.amount - cost
    self.provider_held[provider] += cost - fee
    self.fees += fee
    self.paid[request] = provider
    self.settled[request] = Settled(provider=provider, earned=cost - fee, at=block.timestamp)


@external
def cancel_hold(key: bytes32, hold_key: bytes32):
    self._only_owner()
    h: Hold = self.holds[hold_key]
    assert h.amount > 0, "no hold for this request"
    if not self._first(keccak256("cancel_hold"), key, keccak256(abi_encode(h.client, h.amount))):
        return
    assert self.client_hold[h.client] >= h.amount, "insufficient funds: client hold"
    self.client_hold[h.client] -= h.amount
    self.client_free[h.client] += h.amount


@external
def settle_batch(key: bytes32, fee_bps: uint256, receipts: DynArray[Receipt, MAX_BATCH]):
    # One transaction for a whole batch: every receipt's signature is checked against
    # its provider's registered key, and a request paid before (in any batch) is refused.
    self._only_owner()
    assert fee_bps <= BPS, "fee_bps must be between 0 and 10,000"
    digest: bytes32 = keccak256(abi_encode(keccak256("settle_batch"), fee_bps))
    for rc: Receipt in receipts:
        digest = keccak256(concat(digest, rc.request, rc.client, rc.provider, convert(rc.cost, bytes32)))
    if not self._first(keccak256("settle_batch"), key, digest):
        return
    b: uint256 = self.n_batches
    self.n_batches = b + 1
    self.batch_at[b] = block.timestamp
    total: uint256 = 0
    total_fees: uint256 = 0
    for rc: Receipt in receipts:
        if self.paid[rc.request] != empty(bytes32):
            log Rejected(request=rc.request, reason=ALREADY_PAID)
            continue
        if not self._signed_by(rc.request, self.settlement[rc.provider], rc.cost, rc.v, rc.r, rc.s):
            log Rejected(request=rc.request, reason=BAD_SIGNATURE)
            continue
        if self.client_hold[rc.client] < rc.cost:
            log Rejected(request=rc.request, reason=INSUFFICIENT_HOLD)
            continue
        fee: uint256 = rc.cost * fee_bps // BPS
        earned: uint256 = rc.cost - fee
        self.client_hold[rc.client] -= rc.cost
        self.provider_held[rc.provider] += earned
        self.paid[rc.request] = rc.provider
        total += rc.cost
        total_fees += fee
        if earned > 0:
            if self.batch_earned[b][rc.provider] == 0:
                self.batch_providers[b].append(rc.provider)
            self.batch_earned[b][rc.provider] += earned
    self.fees += total_fees
    log Batch(key=key, index=b, paid=total, fees=total_fees)


@external
def release_due(cutoff: uint256):
    # Held earnings of batches settled at or before `cutoff` become withdrawable; the
    # chain's own clock bounds the cutoff, so the audit window is never shortened.
    self._only_owner()
    cut: uint256 = cutoff
    if block.timestamp < self.min_delay:
        cut = 0
    else:
        cut = min(cut, block.timestamp - self.min_delay)
    i: uint256 = self.next_release
    n: uint256 = self.n_batches
    total: uint256 = 0
    for _: uint256 in range(MAX_RELEASE_BATCHES):
        if i >= n or self.batch_at[i] > cut:
            break
        for p: bytes32 in self.batch_providers[i]:
            # A slash may have taken held earnings already: release what is left.
            amount: uint256 = min(self.batch_earned[i][p], self.provider_held[p])
            self.provider_held[p] -= amount
            self.provider_free[p] += amount
            total += amount
        i += 1
    self.next_release = i
    log Released(total=total, next_batch=i)


@external
def release(key: bytes32, request: bytes32):
    self._only_owner()
    s: Settled = self.settled[request]
    assert s.provider != empty(bytes32), "request has no settled earnings to release"
    assert block.timestamp >= s.at + self.min_delay, "still held (chain time)"
    if not self._first(keccak256("release"), key, keccak256(abi_encode(s.provider, s.earned))):
        return
    assert self.provider_held[s.provider] >= s.earned, "insufficient funds: provider held"
    self.provider_held[s.provider] -= s.earned
    self.provider_free[s.provider] += s.earned


# ------------------------------------------------------------------ stakes

@external
def stake(key: bytes32, provider: bytes32, amount: uint256):
    self._only_owner()
    assert amount > 0, "stake must be positive"
    if not self._first(keccak256("stake"), key, keccak256(abi_encode(provider, amount))):
        return
    assert self.provider_free[provider] >= amount, "insufficient funds: provider"
    self.provider_free[provider] -= amount
    self.staked[provider] += amount


@external
def unstake(key: bytes32, provider: bytes32, amount: uint256, available_at_ms: uint256):
    self._only_owner()
    assert amount > 0, "unstake must be positive"
    if not self._first(keccak256("unstake"), key, keccak256(abi_encode(provider, amount, available_at_ms))):
        return
    assert self.staked[provider] >= amount, "insufficient funds: stake"
    self.staked[provider] -= amount
    self.unbonding[provider] += amount
    self.unstakes[key] = Unstake(provider=provider, amount=amount, available_at_ms=available_at_ms,
                                 not_before=block.timestamp + self.min_delay)


@external
def complete_unstake(key: bytes32, unstake_key: bytes32, now_ms: uint256):
    self._only_owner()
    u: Unstake = self.unstakes[unstake_key]
    assert u.amount > 0, "no such unstake"
    assert now_ms >= u.available_at_ms, "still unbonding"
    assert block.timestamp >= u.not_before, "still unbonding (chain time)"
    if not self._first(keccak256("unbonded"), key, keccak256(abi_encode(u.provider, u.amount))):
        return
    assert self.unbonding[u.provider] >= u.amount, "insufficient funds: unbonding"
    self.unbonding[u.provider] -= u.amount
    self.provider_free[u.provider] += u.amount


@external
def slash(key: bytes32, provider: bytes32, refund_clients: DynArray[bytes32, MAX_REFUNDS],
          refund_amounts: DynArray[uint256, MAX_REFUNDS], checker: bytes32, bounty_bps: uint256,
          request: bytes32, cost: uint256, v: uint8, r: bytes32, s: bytes32):
    # Evidence: the provider's own signature over a receipt this contract paid to it.
    # Whether the answer was wrong is the authorised checker's judgement; the contract
    # makes sure the slashed provider really signed and was paid for that request.
    assert msg.sender == self.owner or self.checkers[msg.sender], "only the owner or an authorised checker"
    assert bounty_bps <= BPS, "bounty_bps must be between 0 and 10,000"
    assert len(refund_clients) == len(refund_amounts), "refund lists differ in length"
    assert self.paid[request] == provider, "evidence: receipt was not paid to this provider"
    assert self._signed_by(request, self.settlement[provider], cost, v, r, s), "evidence: bad provider signature"
    if not self._first(keccak256("slash"), key, keccak256(abi_encode(provider, checker, bounty_bps, request,
                                                 cost, refund_clients, refund_amounts))):
        return
    assert not self.evidence_used[request], "evidence already used"
    self.evidence_used[request] = True
    held: uint256 = self.provider_held[provider]
    stk: uint256 = self.staked[provider]
    pool: uint256 = held + stk
    owed: uint256 = 0
    for amount: uint256 in refund_amounts:
        owed += amount
    assert owed <= pool, "refunds exceed what can be slashed"
    for i: uint256 in range(len(refund_clients), bound=MAX_REFUNDS):
        self.client_free[refund_clients[i]] += refund_amounts[i]
    remaining: uint256 = pool - owed
    bounty: uint256 = remaining * bounty_bps // BPS
    self.checker_free[checker] += bounty
    self.slashed += remaining - bounty
    self.provider_held[provider] = 0
    self.staked[provider] = 0
    log Slashed(key=key, provider=provider, held=held, staked=stk, bounty=bounty)
