"""Who is calling: a client's API key from its `Authorization` header (401 otherwise).

    client_key = ClientKeys(store, quotas)      # built once (web/context.py)
    key = await client_key(request)

A key that keeps coming back before its last Retry-After is refused here, before its
body is read (money/quota.py says why).
"""

from __future__ import annotations

from starlette.requests import Request

from gpupool import errors
from gpupool.gateway.money.quota import Quotas
from gpupool.gateway.store import ApiKey, Store


class ClientKeys:
    def __init__(self, store: Store, quotas: Quotas):
        self.store = store
        self.quotas = quotas

    async def __call__(self, request: Request) -> ApiKey:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise errors.AuthenticationFailed(
                "Missing API key: send 'Authorization: Bearer <key>' (create one with `gpupool keys create`)")
        key = await self.store.authenticate(token.strip())
        if key is None:
            raise errors.AuthenticationFailed("Incorrect API key provided")
        self.quotas.refuse_if_ignoring_retry_after(key)
        return key

    async def counted(self, request: Request) -> ApiKey:
        """The key, its request counted against its requests per minute (routes that run nothing
        on the pool: files and batches), or a 401/429."""
        key = await self(request)
        self.quotas.count_call(key)
        return key
