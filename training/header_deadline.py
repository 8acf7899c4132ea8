"""uvicorn's HTTP/1.1 protocol with a deadline for each request's line and headers.

uvicorn (0.55, h11) times a connection only while it idles between requests
(`timeout_keep_alive`, armed after a response): a client that opens a connection and sends
its headers a byte at a time holds a connection slot for as long as it likes. Here every
request's headers must be complete within `header_timeout` seconds of the connection opening
or of the previous response; otherwise the client gets 408 and the connection is closed.
The body has its own timer (serve.BodyGuard).
"""
from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol

TIMED_OUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\n"
             b"connection: close\r\ncontent-length: %d\r\n\r\n%s")


class HeaderDeadlineProtocol(H11Protocol):
    """H11Protocol that answers 408 and closes when headers take over `header_timeout` s."""

    header_timeout = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:   # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._arm()

    def handle_events(self) -> None:
        before = self.cycle
        super().handle_events()
        if self.cycle is not before:           # a request line and its headers arrived
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and (self.cycle is None or
                                                self.cycle.response_complete):
            self._arm()                        # the next request's headers, on keep-alive

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_too_slow(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        message = f"the request headers took over {self.header_timeout:g} s".encode()
        self.transport.write(TIMED_OUT % (len(message), message))
        self.transport.close()


def with_header_timeout(seconds: float) -> type[HeaderDeadlineProtocol]:
    """The protocol class for uvicorn.Config(http=...) with this header deadline."""
    return type("HeaderDeadlineProtocol", (HeaderDeadlineProtocol,), {"header_timeout": seconds})
