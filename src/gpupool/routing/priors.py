"""Per-model priors: the speed routing assumes of a provider it has not measured yet, and the
answer length it assumes for a request.

An unmeasured provider (without a usable claim) is assumed as fast as the model's median
measured provider (`routing.speed.pool_prior`): a fixed prior either starves newcomers or
sends them everything. The prior is kept per model, since one pool serves models of very
different speeds, from the estimates measured on that model only, so a refresh costs
O(providers measured on it), at most every `REFRESH_S` per model and never per request.

While few providers of a model are measured (a young or small pool), a provider's first
measurement refreshes the prior at once: otherwise the next requests compare the measured
provider against the others at the built-in default speed, and the default is usually far
from the truth (in a 3-provider pool this sent one-at-a-time requests to a far provider).
In a big pool the refresh waits `SOON_S`, since nearly every request there meets a new one.

Time estimates rank providers by a request's *typical* answer length for its model (a running
mean of the completion tokens answers had, capped by the request's max_tokens), as the
simulator does: ranked at max_tokens (often a default in the hundreds), a 4-token answer's
estimate is dominated by decode time, and the RTT between a near and a far provider drowns
in speed-measurement noise. Hedge and stall timers keep using max_tokens (a long answer must
not look stalled because most answers are short).
"""

from __future__ import annotations

import random
from dataclasses import replace

from gpupool.routing.speed import SpeedEstimate, pool_prior
from gpupool.routing.weights import RoutingWeights

REFRESH_S = 2.0
SOON_S = 0.25
# Up to this many measured providers of a model, a first measurement refreshes the prior at once.
AT_ONCE_UP_TO = 32
# The prior is the median of at most this many measured providers, drawn at random beyond it (as
# the simulator draws 1,000): a refresh costs the same at 1,000 or 10,000 providers.
SAMPLE = 1000
# Weight of one answer in the running mean of answer lengths; models tracked at most (model
# names come from offers: past this, the table starts over rather than grow).
LENGTH_ALPHA = 0.1
MAX_MODELS = 10_000


class SpeedPriors:
    """`weights(model, now)`: the routing weights with `model`'s prior; `measured(...)` after each answer."""

    def __init__(self, base: RoutingWeights, rng: random.Random | None = None):
        self.base = base
        self.rng = rng or random.Random()
        self._measured: dict[str, dict[str, SpeedEstimate]] = {}  # model -> node id -> estimate
        self._weights: dict[str, tuple[float, RoutingWeights]] = {}  # model -> (refresh due at, weights)

    def weights(self, model: str, now: float) -> RoutingWeights:
        hit = self._weights.get(model)
        if hit is not None and now < hit[0]:
            return hit[1]
        estimates = list(self._measured.get(model, {}).values())
        if len(estimates) > SAMPLE:
            estimates = self.rng.sample(estimates, SAMPLE)
        weights = replace(self.base, prior_speed=pool_prior(estimates, self.base.prior_speed, min_measured=1))
        self._weights[model] = (now + REFRESH_S, weights)
        return weights

    def measured(self, model: str, node_id: str, estimate: SpeedEstimate, now: float) -> None:
        by_node = self._measured.setdefault(model, {})
        first = node_id not in by_node
        by_node[node_id] = estimate
        hit = self._weights.get(model)
        if first and hit is not None:
            due = now if len(by_node) <= AT_ONCE_UP_TO else now + SOON_S
            self._weights[model] = (min(hit[0], due), hit[1])

    def forget(self, node_id: str) -> None:
        """The router dropped what it knew of `node_id` (a bounded table): drop its estimates too."""
        for model in list(self._measured):
            by_node = self._measured[model]
            by_node.pop(node_id, None)
            if not by_node:
                del self._measured[model]
                self._weights.pop(model, None)


class AnswerLengths:
    """`typical(model)`: the completion tokens an answer for `model` usually has (None: none seen)."""

    def __init__(self) -> None:
        self._mean: dict[str, float] = {}

    def typical(self, model: str) -> int | None:
        mean = self._mean.get(model)
        return None if mean is None else max(1, round(mean))

    def observed(self, model: str, completion_tokens: int) -> None:
        mean = self._mean.get(model)
        if mean is None and len(self._mean) >= MAX_MODELS:
            self._mean.clear()
        self._mean[model] = float(completion_tokens) if mean is None else \
            mean + LENGTH_ALPHA * (completion_tokens - mean)
