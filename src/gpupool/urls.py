"""Gateway URLs as people type them: providers and checkers dial WebSocket, clients use HTTP.

    ws_url("http://gw:8000")   -> "ws://gw:8000"      (what --gateway of provider/checker needs)
    http_url("wss://gw")       -> "https://gw"        (what the HTTP commands need)

Both accept either form, so `--gateway` takes the address a person has at hand.
"""

from __future__ import annotations

from urllib.parse import urlsplit

_TO_WS = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
_TO_HTTP = {"ws": "http", "wss": "https", "http": "http", "https": "https"}


def _convert(url: str, table: dict[str, str], default: str) -> str:
    url = url.strip()
    if "://" not in url:
        url = f"{default}://{url}"  # "gw.example:8000": the plain scheme
    scheme, rest = url.split("://", 1)
    if scheme.lower() not in table:
        raise ValueError(f"gateway URL {url!r}: use http://, https://, ws:// or wss://")
    if not urlsplit(url).hostname:
        raise ValueError(f"gateway URL {url!r} names no host")
    return f"{table[scheme.lower()]}://{rest}".rstrip("/")


def ws_url(url: str) -> str:
    return _convert(url, _TO_WS, "ws")


def http_url(url: str) -> str:
    return _convert(url, _TO_HTTP, "http")
