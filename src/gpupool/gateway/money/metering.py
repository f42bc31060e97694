"""Reserve and charge one provider request: the money path shared by the HTTP routes and batches.

A client's request (gateway/web/inference.py) and a batch shard (gateway/batches/runner.py) pay
the same way: before dispatch, hold the most the request can cost on any provider
that may serve it; after, charge the serving provider's price for the usage in its
signed receipt (capped by the hold) and let the auditor consider the answer.

    metering = Metering(billing, auditor)
    serving = router.serving("minilm")           # the request's serving set, looked up once
    async with await metering.reserve("alice", serving, "minilm", tokens_in=900, max_tokens_out=0) as hold:
        out = await dispatcher.complete(rid, "minilm", payload, deadline)
        charged = metering.charge(hold, rid, "minilm", out.session, out.done, "alice", payload)
"""

from __future__ import annotations

from collections.abc import Sequence

from gpupool.gateway.trust.audits import Auditor
from gpupool.gateway.money.billing import Billing, Hold
from gpupool.gateway.payload_size import image_count
from gpupool.gateway.peers.session import ProviderSession
from gpupool.market import pricing
from gpupool.protocol import Done, Payload


def price_of(session: ProviderSession, model: str, request_id: str = "") -> pricing.Price:
    """The provider's price for `model`; with `request_id`, the price that run was dispatched under
    (an Offer re-sent while it ran does not change what it costs)."""
    offer = session.offer_at_dispatch(request_id, model) if request_id else session.models[model]
    if offer is None:
        raise KeyError(model)
    return pricing.Price(offer.price_in, offer.price_out, offer.price_image)


class Metering:
    def __init__(self, billing: Billing, auditor: Auditor):
        self.billing = billing
        self.auditor = auditor

    @staticmethod
    def bound(serving: Sequence[ProviderSession], model: str, tokens_in: int, max_tokens_out: int,
              max_price: int | None = None, images: int = 0) -> int:
        """The most this request may cost on any of the providers serving `model` (`serving`)."""
        prices = [price_of(s, model) for s in serving]
        return pricing.hold_bound(prices, tokens_in, max_tokens_out, max_price, images)

    async def reserve(self, account: str, serving: Sequence[ProviderSession], model: str, tokens_in: int,
                      max_tokens_out: int, max_price: int | None = None, images: int = 0) -> Hold:
        """Hold the most this request can cost on any provider it may go to (402 if unaffordable)."""
        # An embedding's cost is all input: the 402 says so instead of "lower max_tokens".
        fix = "lower max_tokens" if max_tokens_out else "send fewer or shorter inputs"
        bound = self.bound(serving, model, tokens_in, max_tokens_out, max_price, images)
        return await self.billing.reserve(account, bound, fix)

    @staticmethod
    def cost(hold: Hold, model: str, session: ProviderSession, done: Done, images: int = 0) -> int:
        """What `charge` will charge for this answer (its receipt's usage at the provider's price, and
        its images: the receipt's input hash commits to each image's hash, so to their number)."""
        u = done.receipt.usage
        price = price_of(session, model, done.receipt.request_id)
        return pricing.charge_for(price, u.prompt_tokens, u.completion_tokens, hold.amount, images)

    def charge(self, hold: Hold, rid: str, model: str, session: ProviderSession, done: Done, account: str,
               payload: Payload, text: str = "") -> int:
        """Charge a served request from its receipt, and let the auditor consider it for an audit.

        `payload` and `text` are what the receipt covers: for a continued stream, the last
        provider's run (its receipt's request id), not the client's whole request."""
        images = image_count(payload)
        cost = self.cost(hold, model, session, done, images)
        charged = hold.charge(rid, session.node_id, cost, done.receipt, session.public_key, done.settlement_sig)
        if images:  # what /v1/account shows of this charge
            price = price_of(session, model, done.receipt.request_id)
            hold.images, hold.image_cost = images, pricing.image_share(price, images, charged)
        self.auditor.after_served(done.receipt.request_id, model, session, payload, done, text, account, charged)
        return charged
