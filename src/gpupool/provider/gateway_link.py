"""The provider's link to one gateway: serves Runs and hardware proofs, signs statements.

    link = GatewayLink(agent, "wss://gateway.example")
    await link.run()          # reconnects with backoff until the agent drains

A `PeerLink` (dial, handshake, reconnect; shared with the checker) whose session
runs each `Run` on the agent's backend under the agent's shared `Admission`, sends
the answers in batched frames, and every ~50 ms signs one `Statement` covering the
receipts sent meanwhile (the gateway pays only for signed ones). When the gateway's
Welcome names a settlement contract, each receipt also carries an EVM settlement
signature. The agent is read through `ServingNode`, so this module does not import
`provider.agent` (which imports it).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Protocol

import numpy as np
from websockets.asyncio.client import ClientConnection

from gpupool import __version__, protocol
from gpupool.config import ProviderSettings
from gpupool.market.pricing import Price, cost
from gpupool.metrics import count_answer
from gpupool.model_results import BackendError, GenDone, TextDelta
from gpupool.protocol import (
    Batch,
    Cancel,
    Chunk,
    Done,
    Drain,
    EmbedPayload,
    Fail,
    HardwareAnswer,
    HardwareChallenge,
    LoadReport,
    Receipt,
    Run,
    Statement,
    Usage,
    Welcome,
)
from gpupool.provider.admission import Admission, OverCapacity
from gpupool.provider.backends import Backend
from gpupool.provider.peer_link import LinkedNode, PeerLink
from gpupool.provider.settlement import Settlement
from gpupool.verify import hardware

log = logging.getLogger("gpupool.provider")
# How often receipts sent meanwhile are signed, together, in one Statement.
STATEMENT_INTERVAL_S = 0.05


class ServingNode(LinkedNode, Protocol):
    """What a `GatewayLink` reads from the provider agent it serves for."""

    settings: ProviderSettings
    prices: dict[str, Price]
    backends: dict[str, Backend]
    admission: Admission  # shared by all the agent's links: the concurrency limit holds across gateways
    answers: dict[tuple[str, str], int]  # (model, outcome) -> answers sent (provider/metrics.py)

    async def report_load(self) -> None: ...


class GatewayLink(PeerLink):
    """The provider's gateway connection: Runs in, answers and signed statements out."""

    def __init__(self, agent: ServingNode, url: str):
        super().__init__(agent, url, client=f"gpupool/{__version__}",
                         reconnect_max_s=agent.settings.reconnect_max_s, ca_cert=agent.settings.ca_cert,
                         silence_s=agent.settings.gateway_silence_s)
        self.agent = agent
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._outbox: list[Chunk | Done | Fail] = []
        self._flusher: asyncio.Task[None] | None = None
        self._unstated: list[bytes] = []  # digests of receipts sent but not yet covered by a Statement
        self._to_state = asyncio.Event()  # set while `_unstated` has digests
        self._settlement: Settlement | None = None  # set when this gateway settles on chain
        self._statements = 0

    async def _welcomed(self, ws: ClientConnection, welcome: Welcome) -> None:
        self._settlement = None
        if welcome.contract:
            self._settlement = Settlement.open(self.agent.settings.settlement_key_file, welcome.contract,
                                               welcome.chain_id)
            await ws.send(protocol.encode(self._settlement.announce(self.agent.identity.node_id)))
        if self.agent.draining:
            await self.send_drain()

    async def _session(self, ws: ClientConnection) -> None:
        stating = asyncio.create_task(self._statement_loop())
        try:
            await self._serve(ws)
        finally:
            stating.cancel()

    def _disconnected(self) -> None:
        self._outbox.clear()  # answers for a dead connection: the gateway moved that work
        self._unstated.clear()
        for task in self._tasks.values():
            task.cancel()
        self._tasks.clear()

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
            # Asleep while there is nothing to sign: an idle provider stays idle.
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

        async for msg in self._messages(ws):  # Pings are answered there
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
