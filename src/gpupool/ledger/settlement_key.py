"""Providers' secp256k1 settlement keys and the receipt digest the ledger contract checks.

A provider's node identity is ed25519 (gpupool.identity); the EVM contract can only
verify secp256k1 (ecrecover), so each provider also holds a settlement key and
registers its address in the contract once. For every answer the provider signs

    receipt_digest(contract, chain_id, request_id, provider_address, cost)
      = keccak256(abi.encode(address contract, uint256 chain_id, bytes32 keccak256(request_id),
                             address provider_address, uint256 cost))

and the contract recomputes the same digest in `settle_batch` and `slash`. Binding the
contract address and chain id means a receipt cannot be replayed on another deployment.

    key = SettlementKey.load_or_create(Path("~/.gpupool/settlement.key").expanduser())
    charge = signed_charge(key, contract, chain_id, "req-1", client="alice", provider="gp1", cost=7_000)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from eth_abi import encode
from eth_keys import keys
from eth_utils import keccak, to_checksum_address

from gpupool.ledger.interface import Charge

REGISTER_TAG = keccak(text="gpupool.register")
BIND_CLIENT_TAG = keccak(text="gpupool.bind_client")


def id_key(ident: str) -> bytes:
    """The bytes32 the contract uses for a string id (client, provider, checker, request, op key)."""
    return keccak(text=ident)


def receipt_digest(contract: str, chain_id: int, request_id: str, signer: str, cost: int) -> bytes:
    return keccak(encode(["address", "uint256", "bytes32", "address", "uint256"],
                         [contract, chain_id, id_key(request_id), signer, cost]))


def registration_digest(contract: str, chain_id: int, provider: str) -> bytes:
    """What a settlement key signs to consent to being `provider`'s key in `contract`."""
    return keccak(encode(["address", "uint256", "bytes32", "bytes32"],
                         [contract, chain_id, REGISTER_TAG, id_key(provider)]))


def client_binding_digest(contract: str, chain_id: int, client: str) -> bytes:
    """What a client's wallet signs to consent to holding `client`'s funds in `contract`."""
    return keccak(encode(["address", "uint256", "bytes32", "bytes32"],
                         [contract, chain_id, BIND_CLIENT_TAG, id_key(client)]))


def split_signature(signature: bytes) -> tuple[int, bytes, bytes]:
    """65 bytes r || s || v (v = 27/28, as ecrecover wants) -> (v, r, s)."""
    if len(signature) != 65:
        raise ValueError(f"a signature is 65 bytes, got {len(signature)}")
    return signature[64], signature[:32], signature[32:64]


@dataclass(frozen=True)
class SettlementKey:
    private: keys.PrivateKey

    @classmethod
    def generate(cls) -> SettlementKey:
        return cls(keys.PrivateKey(os.urandom(32)))

    @classmethod
    def load_or_create(cls, path: Path) -> SettlementKey:
        """The key in `path` (32 raw bytes, hex), created with mode 0600 if it does not exist."""
        if path.exists():
            return cls(keys.PrivateKey(bytes.fromhex(path.read_text().strip())))
        path.parent.mkdir(parents=True, exist_ok=True)
        key = cls.generate()
        # O_EXCL + 0600: never readable by others, never overwrites a key raced into place.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key.private.to_hex()[2:] + "\n")
        return key

    @property
    def address(self) -> str:
        return to_checksum_address(self.private.public_key.to_canonical_address())

    def sign_digest(self, digest: bytes) -> bytes:
        """65-byte r || s || v signature, v in {27, 28}."""
        sig = self.private.sign_msg_hash(digest)
        return sig.r.to_bytes(32, "big") + sig.s.to_bytes(32, "big") + bytes([sig.v + 27])

    def sign_receipt(self, contract: str, chain_id: int, request_id: str, cost: int) -> tuple[bytes, bytes]:
        """(digest, signature) for one answer's receipt."""
        digest = receipt_digest(contract, chain_id, request_id, self.address, cost)
        return digest, self.sign_digest(digest)

    def sign_registration(self, contract: str, chain_id: int, provider: str) -> bytes:
        return self.sign_digest(registration_digest(contract, chain_id, provider))

    def sign_client_binding(self, contract: str, chain_id: int, client: str) -> bytes:
        return self.sign_digest(client_binding_digest(contract, chain_id, client))


def signed_charge(key: SettlementKey, contract: str, chain_id: int, request_id: str, client: str,
                  provider: str, cost: int) -> Charge:
    """A `Charge` carrying the receipt digest and the provider's signature, as `EvmLedger.settle_batch` needs."""
    digest, signature = key.sign_receipt(contract, chain_id, request_id, cost)
    return Charge(request_id, client, provider, cost, receipt=digest, signature=signature)
