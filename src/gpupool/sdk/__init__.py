"""The gpupool Python SDK: the official `openai` client, made to fail over between gateways.

    from gpupool.sdk import connect
    client = connect(["http://gw1:8000", "http://gw2:8000"], api_key="gp-...")
    client.chat.completions.create(model="tiny-llama", messages=[...])

Imports neither torch nor any provider code: a thin client install is enough.
"""

from gpupool.sdk.failover import AsyncFailoverTransport, FailoverTransport, connect, connect_async

__all__ = ["AsyncFailoverTransport", "FailoverTransport", "connect", "connect_async"]
