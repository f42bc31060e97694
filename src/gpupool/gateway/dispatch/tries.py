"""One request's tries: which providers were asked, what went wrong, and so which error the client gets.

    tries = Tries()
    ... tries.tried.add(node_id); tries.failures.append("over_capacity: busy")
    if tries.exhausted(max_attempts): raise tries.error(model)

Shared by the router (it never picks a provider already tried), the dispatcher and
streams (they record each failure).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gpupool import errors
from gpupool.gateway.peers.session import ProviderSession
from gpupool.protocol import Fail


@dataclass
class Tries:
    """Providers tried for one request and what went wrong, to pick the right final error."""

    tried: set[str] = field(default_factory=set)
    over_capacity: int = 0
    lost: int = 0  # providers that vanished mid-request: the request was not at fault, so they count less
    failures: list[str] = field(default_factory=list)
    # Providers that blamed the request, with their Fail: judged once another provider answers.
    client_faults: list[tuple[ProviderSession, Fail]] = field(default_factory=list)
    # The request's serving set as its hold was sized on (router.shortlist): later tries take
    # its untried ones first, then only providers no dearer (the hold covers no more).
    serving: list[ProviderSession] | None = None

    def client_fault_error(self) -> errors.InvalidRequest:
        fail = self.client_faults[-1][1]
        return errors.InvalidRequest(fail.message, code=fail.code)

    def exhausted(self, max_attempts: int) -> bool:
        """No more tries: `max_attempts` real failures, or twice that when providers keep vanishing."""
        return len(self.tried) - self.lost >= max_attempts or len(self.tried) >= 2 * max_attempts

    def error(self, model: str, why_not_others: str = "") -> errors.GpupoolError:
        if self.failures and self.over_capacity == len(self.failures):
            return errors.NoCapacity(
                f"all {len(self.tried)} providers tried for {model!r} are at capacity; retry shortly"
            )
        detail = "; ".join(self.failures[-3:]) or "no provider available"
        if why_not_others:
            detail += f"; others: {why_not_others}"
        return errors.NoProvider(f"no provider could serve {model!r} ({detail})")
