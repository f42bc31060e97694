"""A provider's side of on-chain settlement: its secp256k1 key, bound to one contract.

Only used when a gateway's Welcome names a ledger contract. The provider then
announces its settlement address with its consent to be registered for this node
id, and signs every answer's cost, which the contract checks before paying
(`gpupool.ledger.settlement_key` has the digests). web3's key libraries are
imported only here, so providers for SQL-settled gateways do not need the `evm` extra.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gpupool.protocol import SettlementAddress

if TYPE_CHECKING:
    from gpupool.ledger.settlement_key import SettlementKey


@dataclass(frozen=True)
class Settlement:
    key: SettlementKey
    contract: str
    chain_id: int

    @classmethod
    def open(cls, key_file: Path, contract: str, chain_id: int) -> Settlement:
        try:
            from gpupool.ledger.settlement_key import SettlementKey
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError("this gateway settles on chain: install gpupool with the `evm` extra") from exc
        return cls(SettlementKey.load_or_create(key_file.expanduser()), contract, chain_id)

    def announce(self, node_id: str) -> SettlementAddress:
        return SettlementAddress(self.key.address, self.key.sign_registration(self.contract, self.chain_id, node_id))

    def sign(self, request_id: str, cost: int) -> bytes:
        return self.key.sign_receipt(self.contract, self.chain_id, request_id, cost)[1]
