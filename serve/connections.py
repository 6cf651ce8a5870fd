"""Connection limits of `mbedge serve`, on top of uvicorn's own (keep-alive timeout, concurrency,
h11 header size, graceful-shutdown timeout, which `serve_cmd` passes through).

uvicorn has no timeout for a request's headers and no cap on open connections, so a client that
opens thousands of connections and sends partial headers (slowloris) holds them forever and
exhausts the open-file limit. `guarded_h11(limits)` is uvicorn's h11 protocol with both:

    connection_made ─ over max_connections? close the oldest connection still waiting for its
                      request's headers (never one with a request in progress); none: close this one
                    ─ header timer: no complete request head within header_timeout s → closed
    data_received   ─ a request head arrived → the timer stops; a keep-alive connection that starts
                      its next request starts the timer again

The body has its own deadline (requests.read_json: 408 after body_timeout s).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("mbedge.serve")


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int = 1000  # open connections; beyond it the oldest idle one is closed
    header_timeout: float = 10.0  # seconds from connecting (or from the end of the last answer) to a request head


def guarded_h11(limits: ConnectionLimits) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a header timeout and a cap on open connections."""
    waiting: dict[H11Protocol, None] = {}  # connections waiting for a request head, oldest first
    last_warning = [0.0]

    class GuardedH11(H11Protocol):
        _timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > limits.max_connections:
                oldest = next((c for c in waiting if c is not self), None)
                now = time.monotonic()
                if now - last_warning[0] > 10:
                    last_warning[0] = now
                    log.warning(
                        "%d open connections, the limit (--max-connections): closing the oldest idle ones.",
                        limits.max_connections,
                    )
                if oldest is None:
                    transport.close()
                    return
                oldest._close()
            self._wait_for_head()

        def _wait_for_head(self) -> None:
            waiting[self] = None
            if self._timer is None:
                self._timer = self.loop.call_later(limits.header_timeout, self._close)

        def _got_head(self) -> None:
            waiting.pop(self, None)
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _close(self) -> None:
            self._got_head()
            if not self.transport.is_closing():
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            idle = self.cycle is None or self.cycle.response_complete
            if idle and self._timer is None:  # a keep-alive connection starts its next request
                self._wait_for_head()
            before = self.cycle
            super().data_received(data)
            if self.cycle is not before:
                self._got_head()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                waiting[self] = None  # idle on keep-alive: uvicorn's timeout closes it; the cap may too

        def connection_lost(self, exc: Exception | None) -> None:
            self._got_head()
            super().connection_lost(exc)

    return GuardedH11
