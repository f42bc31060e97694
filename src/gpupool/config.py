"""Settings: one typed object per role, loaded once at the edge and passed in.

Precedence (last wins): defaults < TOML file (`--config`, section per role) <
environment (`GPUPOOL_<ROLE>_<FIELD>`, e.g. `GPUPOOL_GATEWAY_PORT=9000`) < flags.

    settings = load(GatewaySettings, config_file=None, overrides={"port": 9000})

The CLI's flags are checked against these fields by a test, so they cannot drift.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from gpupool.identity import default_home


def _opt(default: Any = None, help: str = "", flag: str = "", factory: Any = None) -> Any:
    """A settings field with the help text (and flag name) its CLI option shows."""
    meta = {"help": help, "flag": flag}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# Fields the provider and the checker share: one definition each, so their flags and help cannot drift.

def _gateways_opt() -> Any:
    return _opt(help="gateway URL: wss://HOST, ws://HOST:PORT, or its https:// / http:// address "
                "(converted); repeat for several", flag="gateway", factory=lambda: ["ws://127.0.0.1:8000"])


def _ca_cert_opt() -> Any:
    return _opt(None, "trust gateways whose certificate this CA (PEM) signed, instead of the "
                "system's CA store (a private network's own CA)")


def _reconnect_max_opt() -> Any:
    return _opt(30.0, "longest wait between reconnection attempts")


def _silence_opt() -> Any:
    return _opt(60.0, "longest a gateway may send nothing before its connection is checked with a ping (no "
                "answer within 10 s: dialled again); sooner when it pings more often (provider/silence.py)")


def _metrics_port_opt() -> Any:
    return _opt(0, "serve Prometheus metrics on http://METRICS_HOST:PORT/metrics (0: off)")


def _metrics_host_opt() -> Any:
    return _opt("127.0.0.1", "address the metrics server listens on (0.0.0.0: every interface)")


@dataclass
class GatewaySettings:
    host: str = _opt("127.0.0.1", "address to listen on")
    port: int = _opt(8000, "port to listen on; 0 picks a free one")
    tls_cert: Path | None = _opt(None, "serve https:// and wss:// with this certificate chain (PEM); "
                                 "with --tls-key")
    tls_key: Path | None = _opt(None, "the private key (PEM) of --tls-cert")
    db: str = _opt("", "database URL: sqlite+aiosqlite:///PATH or postgresql+asyncpg://... "
                   "(default: SQLite under ~/.gpupool)")
    key_file: Path = _opt(help="gateway identity key", factory=lambda: default_home() / "gateway.key")
    admin_token: str = _opt("", "bearer token for /admin/* (empty disables the admin API)")
    max_body_bytes: int = _opt(4 * 1024 * 1024, "largest accepted request body; larger gets 413")
    image_max_bytes: int = _opt(3 * 1024 * 1024, "largest image (bytes, decoded from its data URL) a request may "
                                "carry; the body with its images in base64 stays under --max-body-bytes, and "
                                "providers decode at most 4 MiB per image")
    image_max_pixels: int = _opt(16_777_216, "most pixels (width x height, read from the header) an image may "
                                 "have; more is refused before any pixel is decoded (decompression bombs)")
    header_timeout_s: float = _opt(10.0, "a client must send a request's headers (or finish a WebSocket "
                                   "upgrade request) within this time, or the connection is closed")
    body_timeout_s: float = _opt(60.0, "a client must send a request's whole body within this time after its "
                                 "headers, or the connection is closed")
    max_output_tokens: int = _opt(16384, "most completion tokens one request may ask for, whatever a provider "
                                  "offers (each model's own limit, from its offers, applies below this)")
    key_rpm: int = _opt(0, "default requests per minute per API key (0: unlimited); `gpupool keys create --rpm` "
                        "sets one key's")
    key_tpm: int = _opt(0, "default tokens per minute per API key, counted at admission as OpenAI does (prompt "
                        "estimate + max_tokens; 0: unlimited)")
    key_concurrency: int = _opt(0, "default requests at once per API key (0: only the fair share limits it)")
    rate_burst_s: float = _opt(10.0, "a key's request and token budgets hold this many seconds of its rate, "
                               "so short bursts pass")
    public_hosts: str = _opt("", "comma-separated host[:port] names providers and checkers dial this gateway by "
                             "(e.g. gw.example.com): a handshake signed for any other is refused, which stops "
                             "another gateway relaying it; empty: it must match the connection's Host header")
    trusted_proxies: str = _opt("", "comma-separated addresses of reverse proxies whose X-Forwarded-For gives the "
                                "client's address (for --anonymous-rate); empty: the connection's address")
    stream_event_interval_ms: float = _opt(10.0, "a stream sends at most one event this often: the words that "
                                           "arrive meanwhile leave together in the next one (one socket write "
                                           "instead of one per token; 0: an event per piece received)")
    over_share_stream_pace_ms: float = _opt(20.0, "while other keys are active, the streams of a key holding more "
                                            "than its equal share of the providers' slots send at most one event "
                                            "this often, so relaying its flood cannot take the gateway's CPU from "
                                            "the others (0: off; a key alone is never paced)")
    anonymous_rate: float = _opt(20.0, "requests per second per client address without an API key (public reads, "
                                 "the dashboard) and with a key that fails; over it, a delayed 429 (0: unlimited)")
    fair_share: bool = _opt(True, "under load, each key may use at most its fair share of a model's provider "
                            "slots while other keys wait (a key alone may use them all)")
    request_timeout_s: float = _opt(120.0, "default request deadline; clients may lower it "
                                    "with the X-Gpupool-Timeout header")
    max_attempts: int = _opt(3, "most providers one request may try (failover and hedging); providers lost "
                             "mid-request count less, up to twice this")
    hedging: bool = _opt(True, "send a second copy of a slow non-streaming request to another provider")
    hedge_percentile: float = _opt(0.95, "hedge when a provider is slower than this percentile "
                                   "of its expected time")
    hedge_min_s: float = _opt(0.05, "never hedge sooner than this")
    stream_continuation: bool = _opt(True, "continue a stream on another provider if its provider is lost")
    first_byte_timeout_s: float = _opt(30.0, "upper bound on waiting for a provider's first token "
                                       "before trying another")
    stream_stall_factor: float = _opt(8.0, "a stream silent for this many times its measured gap between tokens "
                                      "is continued on another provider, as a dropped one is (0: never)")
    stream_stall_min_s: float = _opt(1.0, "never call a stream (or a provider with work in flight) stalled before "
                                     "this many seconds of silence")
    breaker_failures: int = _opt(5, "consecutive failures that open a provider's circuit breaker")
    breaker_cooldown_s: float = _opt(10.0, "time an open breaker waits before a half-open probe")
    receipt_verify_rate: float = _opt(0.1, "share of receipt signatures checked inline (1.0 = all); "
                                      "hashes are always checked and audits always verify signatures")
    ping_interval_s: float = _opt(2.0, "how often providers are pinged (RTT measurement, liveness)")
    liveness_timeout_s: float = _opt(20.0, "a provider silent for this long is dropped")
    handshake_timeout_s: float = _opt(10.0, "time a connecting provider has to finish the handshake")
    max_pings_per_s: float = _opt(250.0, "most pings sent per second over all providers: with more providers "
                                  "than ping_interval_s allows at this rate, each is pinged less often (and "
                                  "dropped after 3 of those intervals of silence, if that exceeds liveness_timeout_s)")
    handshakes_per_s: float = _opt(250.0, "provider handshakes admitted per second (a reconnect storm after a "
                                   "restart queues, and past handshake_queue_s is refused, so it cannot starve "
                                   "client requests); 0: unlimited")
    handshake_queue_s: float = _opt(5.0, "longest a dialling provider waits for its turn before it is refused "
                                    "(it retries with backoff)")
    restart_grace_s: float = _opt(30.0, "after a start, a request for a model providers served before it (the "
                                  "store remembers) waits this long at most for one to reconnect, instead of a "
                                  "404; past it, a 503 with Retry-After")
    trials_per_s: float = _opt(50.0, "requests a second that may go to providers that never answered us, each "
                               "raced beside a proven provider's copy (a trial); past this rate such a pick "
                               "gives way to a proven provider: a join of many new providers cannot double "
                               "the work of every request (bench/scale); 0: unlimited")
    trial_share: float = _opt(0.1, "most of the requests that may carry a trial, as a share (with a burst of "
                              "10 after a quiet spell): a trial is a second copy at the gateway, so this bounds "
                              "what trials add to a request on average, at any traffic; 1: no bound")
    route_sample: int = _opt(6, "provider sessions a request's choice looks at when more serve its model (a "
                             "random sample of those trust allows, power-of-k choices as in routing/policy.py; "
                             "smaller pools are looked at whole)")
    hold_candidates: int = _opt(2, "the best-scoring providers of that sample a request may go to first; its "
                                "hold covers their prices (a failover beyond them only goes to providers no "
                                "dearer), so one expensive offer does not inflate every hold")
    max_session_slots: int = _opt(64, "most slots (max_concurrency, or a load report's capacity) one provider "
                                  "session counts for in the fair share: a provider's own word, capped")
    admitted_checkers: list[str] = _opt(help="node id of a checker this gateway admits (sends audit jobs, counts "
                                        "its verdicts); repeat per checker. Other checkers are refused",
                                        flag="checker", factory=list)
    checker_min_stake: int = _opt(0, "also admit any checker with at least this many µcr staked in the ledger "
                                  "(0: only --checker ids are admitted)")
    max_offer_models: int = _opt(64, "most models one provider's offer may list")
    max_provider_sessions: int = _opt(10_000, "most provider connections held at once; more are refused (a "
                                      "reconnecting node replaces its own)")
    max_model_name: int = _opt(128, "longest model name (characters) an offer may use")
    max_price_in: int = _opt(100_000_000, "highest input price (µcr per 1M tokens) an offer may ask; "
                             "a dearer offer is refused")
    max_price_out: int = _opt(100_000_000, "highest output price (µcr per 1M tokens) an offer may ask")
    max_price_image: int = _opt(10_000_000, "highest price per image (µcr) an offer may ask")
    max_statement_digests: int = _opt(4096, "most receipt digests one provider statement may list (at least "
                                      "1024: honest providers send up to that many)")
    max_queued_events: int = _opt(4096, "most answer frames (chunks) waiting for one request, and items in one "
                                  "batch frame (at least 1024: honest providers batch up to that many); a "
                                  "provider flooding more is disconnected")
    retention_days: float = _opt(30.0, "provider rows of nodes unseen, and peer events, older than this are "
                                 "deleted (hourly)")
    max_provider_rows: int = _opt(100_000, "provider rows kept in the database (one per node key that ever "
                                  "connected; keys cost nothing): beyond it, the longest-unseen go")
    max_peer_events: int = _opt(1_000_000, "peer event rows kept in the database; beyond it, the oldest go")
    known_model_ttl_s: float = _opt(300.0, "a model no connected provider offers is forgotten after this long "
                                    "(until then requests for it are 503 rather than 404)")
    ready_file: Path | None = _opt(None, "write {url, port} as JSON here once listening")
    listening_file: Path | None = _opt(None, "write {url, port} as JSON here as soon as the port listens, before "
                                       "the slow part of the start (connections wait until ready)")
    ledger: str = _opt("", "ledger URL: sqlite+aiosqlite:///PATH, postgresql+asyncpg://..., or "
                       "evm+http://HOST:PORT?contract=0x... (default: the gateway's database)")
    fee_bps: int = _opt(500, "gateway fee on each charge, in basis points (500 = 5%)")
    tab_size: int = _opt(1_000_000, "µcr reserved per client in one ledger write; requests draw on it in memory")
    settle_interval_s: float = _opt(0.2, "how often verified receipts are settled, as one ledger batch")
    tab_idle_s: float = _opt(5.0, "a client's unused reserve goes back after this long without requests")
    statement_wait_s: float = _opt(10.0, "a receipt its provider has not signed (in a statement) by then is "
                                   "never paid")
    suspension_expiry_s: float = _opt(86400.0, "a suspension not confirmed as fraud (no slash) ends after this "
                                      "long; 0: only an appeal or the operator lifts it")
    canary_interval_s: float = _opt(60.0, "about how often a known-answer request (canary) is sent to a "
                                    "provider; 0 disables canaries")
    audit_window_s: float = _opt(3600.0, "provider earnings stay held this long (open to audits and slashing) "
                                 "before they can be withdrawn")
    audit_probation_requests: int = _opt(50, "a new provider's first N answers are all audited (where a checker "
                                         "holds the model); then the adaptive rate, docs/verification.md")
    hardware_proof_interval_s: float = _opt(1200.0, "mean time between a provider's hardware proofs after the "
                                            "one at admission (jittered ±50%; 0: only at admission)")
    hardware_proof_max_n: int = _opt(512, "largest matrix side n in a hardware proof (n³ multiply-adds; sized to "
                                     "the claimed memory up to this); 0 turns hardware proofs off")
    fallback: list[str] = _opt(help="fallback lane for when the pool cannot serve: 'NAME=BASE_URL key_env=VAR "
                               "model=OURS[=UPSTREAM]@IN/OUT ...'; repeat per lane; TOML: [[gateway.fallback]] "
                               "tables (docs/fallback.md)", factory=list)
    fallback_first_token_budget_s: float = _opt(5.0, "with a fallback lane for the model, a stream the pool has not "
                                                "started (first token) by then is served by the lane")
    fallback_reserve_s: float = _opt(15.0, "with a fallback lane for the model, time kept back from a "
                                     "non-streaming request's deadline for the lane (at most half of it)")
    batch_max_file_bytes: int = _opt(100 * 1024 * 1024, "largest batch input file accepted by POST /v1/files "
                                     "(other requests keep --max-body-bytes)")
    batch_window_s: float = _opt(24 * 3600.0, "how long a batch may run before it expires (its completion_window, "
                                 "\"24h\"; shorter only to try expiry out)")
    batch_max_files: int = _opt(500, "batch input files an account may keep stored at once (delete some to upload "
                                "more)")
    batch_max_stored_bytes: int = _opt(2 * 1024 ** 3, "total bytes of batch input files an account may keep stored")
    batch_upload_bytes_per_s: float = _opt(2 * 1024 * 1024, "bytes of batch files per second an account may "
                                           "upload, after a burst of one largest file; and one upload at a time "
                                           "(over it: 429 with Retry-After)")
    batch_max_active: int = _opt(100, "batches an account may have running (not yet finished) at once")
    batch_reserve_slots: int = _opt(1, "slots per provider that batch work leaves free for interactive requests")
    redis_url: str = _opt("", "count each key's requests and tokens per minute across all the network's gateways "
                          "in this Redis (redis://HOST:PORT/DB); empty: each gateway counts alone. Unreachable at "
                          "start: the gateway does not start; failing later: each gateway counts alone until it "
                          "answers again (docs/operations.md)")
    public_url: str = _opt("", "the URL providers and other gateways reach this gateway at (listed by GET "
                           "/v1/gateways and registered in the shared database; default: the address it "
                           "listens on)")
    region: str = _opt("", "region label GET /v1/gateways lists for this gateway")
    peer_gateways: list[str] = _opt(help="URL of another gateway of this network, listed by GET /v1/gateways "
                                    "(providers learn it there); repeat. Gateways sharing a database also find "
                                    "each other there", flag="peer-gateway", factory=list)

    def db_url(self) -> str:
        return self.db or f"sqlite+aiosqlite:///{default_home() / 'gateway.db'}"

    def ledger_url(self) -> str:
        return self.ledger or self.db_url()


@dataclass
class ProviderSettings:
    gateways: list[str] = _gateways_opt()
    ca_cert: Path | None = _ca_cert_opt()
    serve: list[str] = _opt(help="NAME=BACKEND[:SPEC]; repeat for several models", factory=list)
    prices: list[str] = _opt(help="NAME=IN, NAME=IN/OUT or NAME=IN/OUT/IMAGE: price in µcr per 1M input (and "
                             "output) tokens, and per image for a model that reads images; repeat per model "
                             "(unpriced models are free)", flag="price", factory=list)
    region: str = _opt("local", "region label announced in the offer")
    latitude: float = _opt(0.0, "approximate latitude, announced in the offer")
    longitude: float = _opt(0.0, "approximate longitude, announced in the offer")
    max_concurrency: int = _opt(4, "requests run at once")
    max_queue: int = _opt(16, "requests allowed to wait beyond that; more are refused (retryable)")
    key_file: Path = _opt(help="provider identity key", factory=lambda: default_home() / "provider.key")
    operator_key_file: Path | None = _opt(None, "your operator key (created if missing): nodes you run with the same "
                                          "one, providers and checkers, are known as one operator, and a gateway "
                                          "never has one of them audit another")
    drain_timeout_s: float = _opt(30.0, "on SIGTERM, time to finish in-flight work before leaving")
    reconnect_max_s: float = _reconnect_max_opt()
    gateway_silence_s: float = _silence_opt()
    gateways_max: int = _opt(3, "connect to at most this many gateways: every --gateway, then the nearest by "
                             "measured RTT of the others they list at GET /v1/gateways (0: only --gateway)")
    gateway_discovery_s: float = _opt(60.0, "how often the gateways' lists of their peers are read again")
    settlement_key_file: Path = _opt(help="secp256k1 key that signs receipts for gateways settling on an EVM "
                                     "ledger (created when first needed)",
                                     factory=lambda: default_home() / "settlement.key")
    metrics_port: int = _metrics_port_opt()
    metrics_host: str = _metrics_host_opt()


@dataclass
class CheckerSettings:
    gateways: list[str] = _gateways_opt()
    ca_cert: Path | None = _ca_cert_opt()
    serve: list[str] = _opt(help="NAME=BACKEND[:SPEC]: a reference model to audit NAME with; repeat",
                            factory=list)
    key_file: Path = _opt(help="checker identity key (verdicts are signed with it)",
                          factory=lambda: default_home() / "checker.key")
    operator_key_file: Path | None = _opt(None, "your operator key (created if missing): a gateway never sends this "
                                          "checker audits of providers run with the same one")
    max_concurrency: int = _opt(32, "audit jobs accepted at once (each model runs them in order, "
                                    "embeddings in shared batches)")
    batch_window_s: float = _opt(1.0, "how long an embeddings audit waits for others to share its "
                                       "forward pass")
    reconnect_max_s: float = _reconnect_max_opt()
    gateway_silence_s: float = _silence_opt()
    metrics_port: int = _metrics_port_opt()
    metrics_host: str = _metrics_host_opt()


S = TypeVar("S")


def _convert(value: Any, annotation: Any) -> Any:
    """Coerce a TOML/env value to a field's annotated type."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if value is None or value == "":
            return None
        return _convert(value, args[0])
    if origin is list:
        (item,) = typing.get_args(annotation)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        # TOML tables in a list ([[gateway.fallback]]) stay dicts: their owner parses them.
        return [v if isinstance(v, dict) else _convert(v, item) for v in value]
    if annotation is bool:
        return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")
    if annotation in (int, float, str):
        return annotation(value)
    if annotation is Path:
        return Path(value).expanduser()
    return value


def load(
    cls: type[S],
    config_file: Path | None = None,
    overrides: dict[str, Any] | None = None,
    environ: typing.Mapping[str, str] | None = None,
) -> S:
    section = cls.__name__.removesuffix("Settings").lower()
    environ = os.environ if environ is None else environ
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    if config_file is not None:
        with open(config_file, "rb") as f:
            data = tomllib.load(f).get(section, {})
        for key, val in data.items():
            name = key.replace("-", "_")
            if name not in hints:
                raise ValueError(f"{config_file}: unknown setting [{section}] {key}")
            values[name] = _convert(val, hints[name])
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        env_name = f"GPUPOOL_{section.upper()}_{f.name.upper()}"
        if env_name in environ:
            values[f.name] = _convert(environ[env_name], hints[f.name])
    for key, val in (overrides or {}).items():
        if val is None or val == []:
            continue
        if key not in hints:
            raise ValueError(f"unknown setting {key!r} for {section}")
        values[key] = _convert(val, hints[key])
    return cls(**values)
