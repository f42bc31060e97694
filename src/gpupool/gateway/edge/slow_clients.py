"""Deadlines for slow clients on the gateway's HTTP server: headers and bodies must arrive in time.

uvicorn closes idle keep-alive connections, but a connection that sends its request
headers one byte a second (Slowloris), or starts a WebSocket upgrade and never
finishes the request, or sends a body that never ends, is held forever: 300 such
connections cost a file descriptor and a parser each, indefinitely. This subclass of
uvicorn's httptools protocol gives every request `header_timeout_s` from its first
byte (or from the connection's opening) to complete its headers, and
`body_timeout_s` after them to complete its body; a request that misses either gets
`408 Request Timeout` (when nothing else is being written on the connection) and the
connection is closed. A body cut off this way reaches the app as a client disconnect.

    config = uvicorn.Config(app, http=guarded_http(header_timeout_s=10, body_timeout_s=60), ...)

Once the headers of a WebSocket upgrade are in, the connection belongs to the
WebSocket protocol and the hub's handshake timeout takes over.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_TIMEOUT_RESPONSE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                     b"connection: close\r\ncontent-length: %d\r\n\r\n%s")
_TIMEOUT_BODY = (b'{"error": {"message": "the request was not received in time", '
                 b'"type": "invalid_request_error", "param": null, "code": "request_timeout"}}')


def guarded_http(header_timeout_s: float, body_timeout_s: float) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with a deadline on each request's headers and on its body."""

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm(header_timeout_s)  # the first request's clock starts with the connection

        def on_message_begin(self) -> None:
            super().on_message_begin()
            if self._deadline is None:  # a later request on a kept-alive connection
                self._arm(header_timeout_s)

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()
            if not (self.parser.should_upgrade() and self._should_upgrade()):
                self._arm(body_timeout_s)

        def on_message_complete(self) -> None:
            self._disarm()
            super().on_message_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self, seconds: float) -> None:
            self._disarm()
            if seconds > 0:
                self._deadline = self.loop.call_later(seconds, self._too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            if self.cycle is None or self.cycle.response_complete or not self.cycle.response_started:
                self.transport.write(_TIMEOUT_RESPONSE % (len(_TIMEOUT_BODY), _TIMEOUT_BODY))
                if self.cycle is not None and not self.cycle.response_complete:
                    # The app is still waiting for this body: it sees a disconnect, and anything it
                    # answers is dropped (the 408 is the answer).
                    self.cycle.disconnected = True
                    self.cycle.message_event.set()
            self.transport.close()

    return GuardedHttpToolsProtocol
