"""uvicorn's h11 protocol with a deadline for the request head (see `connection_limits.py`)."""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.h11_impl import H11Protocol


class HeadTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose next request head is not complete in `header_timeout` seconds.

    The clock starts when the connection opens and again after every answer; it
    stops when a new request's head has been read.
    """

    header_timeout = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._stop_if_new_request()

    def on_response_complete(self) -> None:
        self._arm()
        super().on_response_complete()  # may start a pipelined request at once
        self._stop_if_new_request()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._cancel()
        self._waiting_after = self.cycle  # the request cycle before the one we wait for
        self._head_timer = self.loop.call_later(self.header_timeout, self._expire)

    def _cancel(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _stop_if_new_request(self) -> None:
        if self._head_timer is not None and self.cycle is not self._waiting_after:
            self._cancel()

    def _expire(self) -> None:
        self._head_timer = None
        if self.cycle is self._waiting_after and not self.transport.is_closing():
            self.transport.close()
