"""Connection-level limits uvicorn lacks: a deadline for a request's headers.

uvicorn closes a keep-alive connection idle after a response (`timeout_keep_alive`) and answers 503 past
`limit_concurrency`, but a connection that never completes its headers (opened and left silent, or fed a
byte a second: slowloris) is kept forever, each holding a descriptor. `header_timeout_protocol` is
uvicorn's h11 protocol with one timer more: from the moment the connection waits for a request (opened,
or the previous response sent) until that request's headers are complete; when it fires first, the
connection is closed. uvicorn takes a protocol class for `http`, so this is a subclass, not a fork.
"""

from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class HeaderTimeoutH11Protocol(H11Protocol):
    header_timeout: float = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_overdue)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_overdue(self) -> None:
        self._header_timer = None
        # Still IDLE: no complete request line and headers since the timer started (h11 leaves IDLE
        # only once it has parsed them). A request being served or sending its body is left alone.
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def header_timeout_protocol(seconds: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol that closes a connection whose request headers take over `seconds`."""
    return type("HeaderTimeoutH11Protocol", (HeaderTimeoutH11Protocol,), {"header_timeout": seconds})
