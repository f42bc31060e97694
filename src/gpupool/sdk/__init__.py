"""The gpupool Python SDK: the official `openai` client, made to fail over between gateways.

    from gpupool.sdk import connect
    client = connect(["http://gw1:8000", "http://gw2:8000"], api_key="gp-...")
    client.chat.completions.create(model="tiny-llama", messages=[...])

    from gpupool import sdk
    vectors = sdk.map("minilm", texts, api_key="gp-...")   # many items over the pool, in input order
    vectors = sdk.map("tiny-clip", Path("photos"))           # a folder of images: one vector per image

Imports neither torch nor any provider code: a thin client install is enough.
"""

from gpupool.sdk.failover import AsyncFailoverTransport, FailoverTransport, connect, connect_async
from gpupool.sdk.map import MapError, amap, image_url, images_in, map

__all__ = ["AsyncFailoverTransport", "FailoverTransport", "MapError", "amap", "connect", "connect_async", "image_url",
           "images_in", "map"]
