"""Node identity: ed25519 keys, node ids derived from public keys, sign/verify.

    ident = Identity.load_or_create(Path("~/.gpupool/provider.key").expanduser())
    sig = ident.sign(b"data")
    assert verify_signature(ident.public_key, sig, b"data")

Keys are stored as raw 32-byte private seeds in files with 0600 permissions.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

_RAW = serialization.Encoding.Raw


def default_home() -> Path:
    """Where keys and local state live: $GPUPOOL_HOME, else ~/.gpupool."""
    return Path(os.environ.get("GPUPOOL_HOME", "~/.gpupool")).expanduser()


def node_id_for(public_key: bytes) -> str:
    """A short, stable, printable id: 'gp' + the first 20 bytes of sha256(pubkey) in hex."""
    return "gp" + hashlib.sha256(public_key).hexdigest()[:40]


def verify_signature(public_key: bytes, signature: bytes, data: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, data)
        return True
    except (InvalidSignature, ValueError):
        return False


@dataclass(frozen=True)
class Identity:
    private_key: Ed25519PrivateKey = field(repr=False)
    public_key: bytes
    node_id: str

    @classmethod
    def generate(cls) -> Identity:
        return cls._from_private(Ed25519PrivateKey.generate())

    @classmethod
    def _from_private(cls, key: Ed25519PrivateKey) -> Identity:
        pub = key.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw)
        return cls(private_key=key, public_key=pub, node_id=node_id_for(pub))

    @classmethod
    def load_or_create(cls, path: Path) -> Identity:
        """Load the key at `path`, creating it (0600, parent 0700) if it does not exist."""
        path = path.expanduser()
        if path.exists():
            seed = path.read_bytes()
            if len(seed) != 32:
                raise ValueError(f"{path} is not a gpupool key (expected 32 bytes, got {len(seed)})")
            return cls._from_private(Ed25519PrivateKey.from_private_bytes(seed))
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        ident = cls.generate()
        seed = ident.private_key.private_bytes(
            _RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        # Create with 0600 from the start so the seed is never world-readable.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(seed)
        return ident

    def sign(self, data: bytes) -> bytes:
        return self.private_key.sign(data)
