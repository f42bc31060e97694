"""TLS for gpupool's links: the gateway serves https:// and wss://, providers and checkers verify it.

    ctx = client_context(None)                  # the system's CA store (a public certificate)
    ctx = client_context(Path("ca.pem"))        # a private network's own CA (--ca-cert)
    why = certificate_problem(exc)              # one line for a person, or None if not a TLS failure

The gateway's side is only its certificate and key (`--tls-cert`, `--tls-key`), which
uvicorn loads; `server_files` checks them first so a typo is one clear line, not a
traceback from deep inside the ssl module. A bad file is a bad flag value: `ValueError`,
which the CLI prints as one line. See docs/operations.md ("Behind TLS").
"""

from __future__ import annotations

import ssl
from pathlib import Path

__all__ = ["certificate_problem", "client_context", "server_files"]


def client_context(ca_cert: Path | None) -> ssl.SSLContext:
    """Verify the peer's certificate and host name against `ca_cert`, or the system's CA store."""
    if ca_cert is not None and not Path(ca_cert).is_file():
        raise ValueError(f"--ca-cert {ca_cert}: no such file (the PEM certificate of the CA that signed "
                          "the gateway's certificate)")
    try:
        return ssl.create_default_context(cafile=str(ca_cert) if ca_cert else None)
    except ssl.SSLError as exc:
        raise ValueError(f"--ca-cert {ca_cert}: not a PEM CA certificate ({exc.reason or exc})") from exc


def certificate_problem(exc: BaseException) -> str | None:
    """A one-line reason when `exc` is a failed TLS handshake (untrusted, expired, wrong host), else None."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate not trusted: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    return None


def server_files(cert: Path | None, key: Path | None) -> tuple[str, str] | None:
    """(cert, key) as uvicorn wants them, None for plain HTTP; both or neither, both readable and matching."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ValueError("TLS needs both --tls-cert (the certificate chain, PEM) and --tls-key (its private key)")
    for flag, path in (("--tls-cert", cert), ("--tls-key", key)):
        if not Path(path).is_file():
            raise ValueError(f"{flag} {path}: no such file")
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(str(cert), str(key))
    except ssl.SSLError as exc:
        raise ValueError(f"--tls-cert {cert} / --tls-key {key}: {exc.reason or exc} "
                          "(PEM files, and the key must belong to the certificate)") from exc
    return str(cert), str(key)
