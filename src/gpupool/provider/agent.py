"""The provider agent: dials out to gateways, announces a signed offer, serves work.

    agent = ProviderAgent(identity, backends, settings)
    await agent.run()          # until agent.request_drain() (SIGTERM) finishes

One `GatewayLink` per gateway URL keeps a WebSocket open with exponential backoff
and jitter between attempts. All links share one `Admission`, so the provider's
concurrency limit holds across gateways. On drain the provider tells every
gateway, refuses new work (retryable, so gateways move it elsewhere), finishes
what is in flight, then leaves.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sys
import time
from collections.abc import Mapping

import msgspec
import numpy as np
import websockets
from websockets.asyncio.client import ClientConnection, connect

from gpupool import __version__, protocol
from gpupool.config import ProviderSettings
from gpupool.errors import StartupError
from gpupool.identity import Identity
from gpupool.market.pricing import Price, cost
from gpupool.metrics import count_answer
from gpupool.provider.settlement import Settlement
from gpupool.tls import certificate_problem, client_context
from gpupool.protocol import (
    ModelOffer,
    Batch,
    Cancel,
    Challenge,
    Chunk,
    Done,
    Drain,
    EmbedPayload,
    Fail,
    HardwareAnswer,
    HardwareChallenge,
    Hello,
    LoadReport,
    Offer,
    Ping,
    Pong,
    Proof,
    Receipt,
    Run,
    Statement,
    Usage,
    Welcome,
)
from gpupool.provider.admission import Admission, OverCapacity
from gpupool.provider.backends import Backend, BackendError
from gpupool.provider.backends.base import GenDone, TextDelta
from gpupool.provider.hardware import probe
from gpupool.verify import hardware

log = logging.getLogger("gpupool.provider")
# How often receipts sent meanwhile are signed, together, in one Statement.
STATEMENT_INTERVAL_S = 0.05


class ProviderAgent:
    def __init__(self, identity: Identity, backends: Mapping[str, Backend], settings: ProviderSettings,
                 prices: Mapping[str, Price] | None = None):
        if not backends:
            raise ValueError("a provider must serve at least one model (--serve NAME=BACKEND[:SPEC])")
        self.identity = identity
        self.operator: Identity | None = None  # the operator key vouching for this node (--operator-key-file)
        self.prices = dict(prices or {})
        self.backends = dict(backends)
        self.settings = settings
        self.admission = Admission(settings.max_concurrency, settings.max_queue)
        self.draining = False
        self.answers: dict[tuple[str, str], int] = {}  # (model, outcome) -> answers sent (provider/metrics.py)
        self._drain_requested = asyncio.Event()
        self._links: list[GatewayLink] = []
        self._hardware = probe()

    def _priced(self, offer: ModelOffer) -> ModelOffer:
        price = self.prices.get(offer.name)
        if price is None:
            return offer
        return msgspec.structs.replace(offer, price_in=price.per_m_in, price_out=price.per_m_out)

    def make_offer(self) -> Offer:
        offer = Offer(
            node_id=self.identity.node_id,
            models=[self._priced(b.offer()) for b in self.backends.values()],
            hardware=self._hardware,
            region=self.settings.region,
            latitude=self.settings.latitude,
            longitude=self.settings.longitude,
            max_concurrency=self.settings.max_concurrency,
            issued_at=time.time(),
        )
        return protocol.sign_offer(offer, self.identity, self.operator)

    async def report_load(self) -> None:
        """Send the current load to every connected gateway."""
        report = self.load_report()
        await asyncio.gather(*(link.send_load(report) for link in self._links), return_exceptions=True)

    def load_report(self) -> LoadReport:
        return LoadReport(
            in_flight=self.admission.in_flight,
            queued=self.admission.queued,
            capacity=self.admission.capacity,
        )

    async def start_backends(self) -> None:
        """Load every model; one that fails (engine down, no such directory) is left out, with a
        line saying why, and the others are served. StartupError when none could be loaded."""
        failed: dict[str, str] = {}
        for backend in list(self.backends.values()):
            log.info("loading %s (%s%s)", backend.name, backend.kind, f" {backend.spec}" if backend.spec else "")
            try:
                await backend.start()
            except Exception as exc:  # noqa: BLE001 - any load failure is this model's, not the provider's
                failed[backend.name] = str(exc) or type(exc).__name__
                del self.backends[backend.name]
                await _close_quietly(backend)
                log.error("not serving %s: %s", backend.name, failed[backend.name])
        if failed and not self.backends:
            raise StartupError("no model could be loaded: " + "; ".join(f"{n}: {why}" for n, why in failed.items()))
        if failed:
            log.warning("serving %s; left out %s (fix it and restart the provider)",
                        ", ".join(self.backends), ", ".join(failed))
        else:
            log.info("loaded %s", ", ".join(self.backends))

    def request_drain(self) -> None:
        self._drain_requested.set()

    async def run(self) -> None:
        await self.start_backends()
        self._links = [GatewayLink(self, url) for url in self.settings.gateways]
        tasks = [asyncio.create_task(link.run(), name=f"link-{link.url}") for link in self._links]
        try:
            await self._drain_requested.wait()
            await self._drain()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for backend in self.backends.values():
                await backend.close()

    async def _drain(self) -> None:
        self.draining = True
        log.info("draining: refusing new work, finishing %d in flight", self.admission.in_flight)
        await asyncio.gather(*(link.send_drain() for link in self._links), return_exceptions=True)
        deadline = time.monotonic() + self.settings.drain_timeout_s
        while self.admission.in_flight + self.admission.queued > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.gather(*(link.flushed() for link in self._links), return_exceptions=True)
        left = self.admission.in_flight + self.admission.queued
        if left:
            log.warning("drain timeout: leaving with %d requests unfinished", left)
        else:
            log.info("drained")


async def _close_quietly(backend: Backend) -> None:
    try:
        await backend.close()
    except Exception:  # noqa: BLE001 - it never started: whatever it holds goes with the process
        pass


class GatewayLink:
    """One gateway connection: handshake, message loop, reconnect with backoff."""

    def __init__(self, agent: ProviderAgent, url: str):
        self.agent = agent
        self.url = url.rstrip("/")
        if not self.url.endswith("/v1/providers/ws"):
            self.url += "/v1/providers/ws"
        # wss://: the gateway's certificate is verified (the system's CAs, or --ca-cert); a bad
        # --ca-cert stops the start with one line rather than failing every reconnect.
        self._tls = client_context(agent.settings.ca_cert) if self.url.startswith("wss://") else None
        self._ws: ClientConnection | None = None
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._outbox: list[Chunk | Done | Fail] = []
        self._flusher: asyncio.Task[None] | None = None
        self._unstated: list[bytes] = []  # digests of receipts sent but not yet covered by a Statement
        self._to_state = asyncio.Event()  # set while `_unstated` has digests
        self._settlement: Settlement | None = None  # set when this gateway settles on chain
        self._statements = 0
        self._last_said = ""  # the last connection problem logged at WARNING

    async def run(self) -> None:
        backoff = 0.25
        while True:
            started = time.monotonic()
            try:
                async with connect(
                    self.url,
                    # wss://: the gateway's certificate is verified (system CAs, or --ca-cert)
                    ssl=self._tls,
                    max_size=protocol.MAX_FRAME_BYTES,
                    ping_interval=10,
                    ping_timeout=20,
                    open_timeout=10,
                    compression=None,  # small msgpack frames: deflate cost more CPU than it saved
                ) as ws:
                    self._ws = ws
                    await self._handshake(ws)
                    log.info("connected to %s", self.url)
                    self._last_said = ""
                    stating = asyncio.create_task(self._statement_loop())
                    try:
                        await self._serve(ws)
                    finally:
                        stating.cancel()
            except asyncio.CancelledError:
                raise
            except websockets.ConnectionClosed as exc:
                reason = exc.rcvd.reason if exc.rcvd else "connection lost"
                log.warning("gateway %s closed the connection: %s", self.url, reason)
                if exc.rcvd and exc.rcvd.code in (protocol.CLOSE_BAD_VERSION, protocol.CLOSE_BAD_SIGNATURE):
                    backoff = self.agent.settings.reconnect_max_s  # retrying fast won't help
            except (OSError, TimeoutError, websockets.InvalidHandshake, websockets.InvalidURI) as exc:
                tls_problem = certificate_problem(exc)
                if tls_problem:
                    # Not a network blip: retrying fast won't help, and the fix is the operator's.
                    log.error("cannot connect to gateway %s: %s (a private CA: pass --ca-cert FILE)",
                              self.url, tls_problem)
                    backoff = self.agent.settings.reconnect_max_s
                else:
                    # Once per distinct cause, then quiet until it changes: a gateway down for an
                    # hour is one line, not one per retry.
                    said = f"cannot reach gateway {self.url}: {exc}"
                    if said != self._last_said:
                        log.warning("%s (retrying, at most every %g s)", said, self.agent.settings.reconnect_max_s)
                    else:
                        log.debug("%s", said)
                    self._last_said = said
            finally:
                self._ws = None
                self._outbox.clear()  # answers for a dead connection: the gateway moved that work
                self._unstated.clear()
                for task in self._tasks.values():
                    task.cancel()
                self._tasks.clear()
            if self.agent.draining:
                return
            if time.monotonic() - started > 30:
                backoff = 0.25  # the connection was healthy for a while: start over
            delay = min(backoff, self.agent.settings.reconnect_max_s) * random.uniform(0.5, 1.0)
            await asyncio.sleep(delay)
            backoff = min(backoff * 2, self.agent.settings.reconnect_max_s)

    async def _handshake(self, ws: ClientConnection) -> None:
        ident = self.agent.identity
        await ws.send(protocol.encode(Hello(protocol.PROTOCOL_VERSION, ident.public_key, f"gpupool/{__version__}")))
        msg = protocol.decode(await asyncio.wait_for(ws.recv(), 15))
        if not isinstance(msg, Challenge):
            raise protocol.ProtocolError(f"expected challenge, got {type(msg).__name__}")
        proof = Proof(ident.sign(protocol.challenge_bytes(msg.nonce, msg.gateway_id)))
        await ws.send(protocol.encode(proof))
        await ws.send(protocol.encode(self.agent.make_offer()))
        msg = protocol.decode(await asyncio.wait_for(ws.recv(), 15))
        if not isinstance(msg, Welcome):
            raise protocol.ProtocolError(f"expected welcome, got {type(msg).__name__}")
        self._settlement = None
        if msg.contract:
            self._settlement = Settlement.open(self.agent.settings.settlement_key_file, msg.contract, msg.chain_id)
            await ws.send(protocol.encode(self._settlement.announce(ident.node_id)))
        if self.agent.draining:
            await self.send_drain()

    async def _send(self, msg: protocol.Message) -> None:
        ws = self._ws
        if ws is None:
            return
        try:
            await ws.send(protocol.encode(msg))
        except websockets.ConnectionClosed:
            pass  # the run loop notices and reconnects

    def _post(self, msg: Chunk | Done | Fail) -> None:
        """Queue an answer message; what is ready in the same loop turn leaves as one frame."""
        if not isinstance(msg, Chunk):
            count_answer(self.agent.answers, msg)
        self._outbox.append(msg)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # one loop turn: let other requests' ready messages join
        while self._outbox:
            # Bounded frames: a gateway disconnects a peer whose Batch is over its limit.
            n = protocol.MAX_BATCH_ITEMS
            items, self._outbox = self._outbox[:n], self._outbox[n:]
            digests = [protocol.receipt_digest(m.receipt) for m in items if isinstance(m, Done)]
            if digests:
                self._unstated += digests
                self._to_state.set()
            await self._send(items[0] if len(items) == 1 else Batch(items))

    async def _state(self) -> None:
        """Sign the receipts sent since the last statement: the gateway pays only for signed ones."""
        while self._unstated:  # several statements when more were sent than one may list
            n = protocol.MAX_STATEMENT_DIGESTS
            digests, self._unstated = self._unstated[:n], self._unstated[n:]
            self._statements += 1
            sig = self.agent.identity.sign(protocol.statement_bytes(self._statements, digests))
            await self._send(Statement(self._statements, digests, sig))

    async def _statement_loop(self) -> None:
        while True:
            # Asleep while there is nothing to sign: an idle provider (or checker) stays idle.
            await self._to_state.wait()
            await asyncio.sleep(STATEMENT_INTERVAL_S)  # gather the receipts of the next 50 ms
            self._to_state.clear()
            await self._state()

    async def flushed(self) -> None:
        """Wait until queued answer messages, and the statement covering them, have been written."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)
        await self._state()

    async def send_load(self, report: LoadReport) -> None:
        await self._send(report)

    async def send_drain(self) -> None:
        await self._send(Drain(reason="provider is shutting down"))

    async def _serve(self, ws: ClientConnection) -> None:
        # Hardware proof (verify/hardware.py): the product this connection last committed to,
        # kept until the gateway names the rows to open.
        solved: dict[str, hardware.Solution] = {}

        def solve(ch: HardwareChallenge) -> tuple[hardware.Solution, hardware.Commitment]:
            spec = hardware.Challenge(seed=ch.seed, n=ch.n, value_range=ch.value_range, claimed_memory_mb=0)
            # The GPU when a model backend already loaded torch with CUDA; else numpy (no torch import cost).
            torch = sys.modules.get("torch")
            on_gpu = torch is not None and torch.cuda.is_available()
            sol = hardware.solve(spec, "torch" if on_gpu else "numpy")
            return sol, hardware.commit(sol)

        async def prove(ch: HardwareChallenge) -> None:
            if not ch.open_rows:
                if not 0 < ch.n <= 1 << 16:
                    return  # absurd size: no answer (the gateway counts a timeout)
                sol, com = await asyncio.to_thread(solve, ch)  # seconds for big n: keep the loop free
                solved.clear()
                solved[ch.challenge_id] = sol
                await self._send(HardwareAnswer(ch.challenge_id, list(com.row_digests), sol.elapsed_s,
                                                device=sol.device))
            elif (sol := solved.pop(ch.challenge_id, None)) is not None:
                if not all(0 <= i < len(sol.product) for i in ch.open_rows):
                    return
                rows = [np.rint(sol.product[i]).astype("<i8").tobytes() for i in ch.open_rows]
                await self._send(HardwareAnswer(ch.challenge_id, rows=rows))

        async for frame in ws:
            msg = protocol.decode(frame)  # a bad frame from our gateway ends this connection
            if isinstance(msg, Run):
                if msg.request_id in self._tasks:
                    continue  # duplicate delivery: the first one answers
                task = asyncio.create_task(self._handle_run(msg))
                self._tasks[msg.request_id] = task
                task.add_done_callback(lambda _t, rid=msg.request_id: self._tasks.pop(rid, None))
            elif isinstance(msg, Cancel):
                task = self._tasks.get(msg.request_id)
                if task:
                    task.cancel()
            elif isinstance(msg, Ping):
                await self._send(Pong(msg.nonce, msg.sent_at))
            elif isinstance(msg, HardwareChallenge):
                key = f"hw:{msg.challenge_id}:{len(msg.open_rows)}"
                self._tasks[key] = asyncio.create_task(prove(msg))  # cancelled if the connection drops
                self._tasks[key].add_done_callback(lambda _t, k=key: self._tasks.pop(k, None))
            # Other messages from a gateway are ignored: newer gateways may send more.

    async def _handle_run(self, run: Run) -> None:
        agent = self.agent
        if agent.draining:
            self._post(Fail(run.request_id, "draining", "provider is draining", retryable=True))
            return
        backend = agent.backends.get(run.model)
        if backend is None:
            self._post(Fail(run.request_id, "model_not_served", f"{run.model!r} is not served here", True))
            return
        try:
            async with asyncio.timeout(run.deadline_ms / 1000):
                async with agent.admission.slot():
                    done = await self._execute(run, backend)
            self._post(done)
        except OverCapacity as exc:
            self._post(Fail(run.request_id, "over_capacity", str(exc), retryable=True))
        except BackendError as exc:
            self._post(Fail(run.request_id, exc.code, str(exc), exc.retryable))
        except TimeoutError:
            self._post(Fail(run.request_id, "deadline_exceeded", "deadline passed on the provider"))
        except asyncio.CancelledError:
            raise  # the gateway cancelled: it expects nothing more for this request
        except Exception as exc:  # noqa: BLE001 - one broken request must not kill the provider
            log.exception("request %s failed", run.request_id)
            self._post(Fail(run.request_id, "internal_error", f"{type(exc).__name__}: {exc}", True))
        finally:
            # To every gateway, not only this one: each decides from its last report how many
            # slots are free, and a run for another gateway (one that may have died meanwhile)
            # ending must free them in every gateway's view.
            await agent.report_load()

    async def _execute(self, run: Run, backend: Backend) -> Done:
        payload = run.payload
        if isinstance(payload, EmbedPayload):
            result = await backend.embed(payload)
            return self._done(run, Usage(result.prompt_tokens), "", result.vectors, vectors=result.vectors, dimensions=result.dimensions)
        seq = 0
        parts: list[str] = []
        async for event in backend.generate(payload):
            if isinstance(event, TextDelta):
                if event.text:
                    parts.append(event.text)
                    if run.stream:
                        self._post(Chunk(run.request_id, seq, event.text))
                        seq += 1
            elif isinstance(event, GenDone):
                text = "".join(parts)
                usage = Usage(event.prompt_tokens, event.completion_tokens)
                return self._done(run, usage, event.finish_reason, text.encode(), text=text,
                                  token_ids=event.token_ids, logprobs=event.logprobs)
        raise BackendError("internal_error", "backend ended without a result", retryable=True)

    def _done(self, run: Run, usage: Usage, finish: str, output: bytes, **result: object) -> Done:
        ident = self.agent.identity
        receipt = Receipt(
            request_id=run.request_id,
            node_id=ident.node_id,
            model=run.model,
            input_hash=protocol.payload_hash(run.payload),
            output_hash=protocol.output_hash(output),
            usage=usage,
            finish_reason=finish,
            issued_at=time.time(),
            tokens_hash=protocol.tokens_hash(result["token_ids"], result["logprobs"])  # type: ignore[arg-type]
            if result.get("token_ids") else b"",
        )
        # Unsigned here: the next Statement signs it together with every other receipt sent meanwhile.
        if self._settlement is not None:
            price = self.agent.prices.get(run.model, Price())
            result["settlement_sig"] = self._settlement.sign(run.request_id, cost(price, usage.prompt_tokens,
                                                                                     usage.completion_tokens))
        return Done(request_id=run.request_id, receipt=receipt, **result)  # type: ignore[arg-type]
