"""Slow and surplus clients: deadlines for a request's headers and body, and a cap on open connections.

uvicorn's h11 protocol gives a new connection unlimited time to send its headers, and a kept-alive
one too once the first byte of its next request has come (that byte cancels the keep-alive timer);
nothing caps how many connections are open at once. `limited_protocol` returns that protocol with:

- a header deadline: a request's line and headers must be complete within `header_timeout_s` of the
  connection opening (or of the previous answer on a kept-alive one), else 408 and the connection
  is closed, whatever trickles in meanwhile;
- a body deadline: the body must be complete within `body_timeout_s` of the headers, else the
  connection is closed;
- a connection cap: a connection beyond `max_connections` gets 503 and is closed at once, and the log
  says so once per burst of refusals, not once per refusal. The refused connection is half-closed
  after its 503 and what the client still sends is read and dropped until it closes (at most
  REFUSAL_LINGER_S): closed with unread data, the kernel would reset it and the 503 would be lost.
  At most `max_refusing` refusals linger at once; beyond them (a flood) connections are reset at once.

h11 itself refuses headers over 16 KiB (400). Raw answers written here carry the same nosniff header
as the application's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("masksmith.serve")
REFUSAL_LINGER_S = 1.0
MAX_REFUSING = 64  # refused connections answered 503 at once; more are reset without an answer


@dataclass(frozen=True)
class ConnectionLimits:
    """How long a client may take to send a request, and how many connections may be open."""

    max_connections: int
    header_timeout_s: float
    body_timeout_s: float
    max_refusing: int = MAX_REFUSING


def raw_response(status: int, reason: str, message: str) -> bytes:
    """A complete HTTP/1.1 answer with a JSON error, closing the connection (written before or without h11)."""
    body = json.dumps({"error": message}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\nx-content-type-options: nosniff\r\n\r\n")
    return head.encode("latin-1") + body


class RefusalLog:
    """Logs refused connections once per burst: the first refusal, then at most one line (with the count)
    every `interval_s` seconds while refusals go on."""

    def __init__(self, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.interval_s = interval_s
        self._clock = clock
        self._last: float | None = None
        self._unreported = 0

    def refused(self, limit: int) -> None:
        """Count one refused connection, and log when the last line is old enough."""
        self._unreported += 1
        now = self._clock()
        if self._last is not None and now - self._last < self.interval_s:
            return
        log.warning("connection limit of %d open connections reached: refused %d new connection(s) with 503 "
                    "(this line repeats at most every %g s while refusals go on)", limit, self._unreported,
                    self.interval_s)
        self._last, self._unreported = now, 0


def limited_protocol(limits: ConnectionLimits) -> type[H11Protocol]:
    """uvicorn's h11 protocol with header and body deadlines and a connection cap (pass it as Config(http=...))."""
    refusals = RefusalLog()
    refusing: set[asyncio.Protocol] = set()  # refused connections still open (their 503 on its way)

    class LimitedH11Protocol(H11Protocol):
        """H11Protocol, plus a deadline for what the connection waits for from its client, and the cap."""

        def __init__(self, *args: Any, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self._deadline: asyncio.TimerHandle | None = None
            self._waiting_for: str | None = None
            self._closing = False  # its last answer is sent: input is dropped until it closes

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) - len(refusing) > limits.max_connections:
                refusals.refused(limits.max_connections)
                if len(refusing) >= limits.max_refusing:
                    transport.abort()
                    return
                refusing.add(self)  # not counted as open: it leaves within REFUSAL_LINGER_S
                self._answer_and_close(503, "Service Unavailable", "too many open connections; retry shortly")
                return
            self._watch()

        def data_received(self, data: bytes) -> None:
            if self._closing:
                return  # read and dropped: see _answer_and_close
            super().data_received(data)
            self._watch()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._watch()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_deadline()
            refusing.discard(self)
            super().connection_lost(exc)

        def _answer_and_close(self, status: int, reason: str, message: str) -> None:
            """Send a last answer, half-close, drop what the client still sends until it closes (or the linger ends).

            Closing at once with unread input would make the kernel reset the connection, losing the answer.
            """
            self._stop_deadline()
            self.transport.write(raw_response(status, reason, message))
            self.transport.write_eof()
            self._closing = True
            self._deadline = self.loop.call_later(REFUSAL_LINGER_S, self.transport.close)

        def send_400_response(self, msg: str) -> None:
            # A malformed request (h11's verdict): answered and closed, as uvicorn does, with our headers.
            self._stop_deadline()
            self.transport.write(raw_response(400, "Bad Request", msg))
            self.transport.close()

        def _stop_deadline(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            self._waiting_for = None

        def _watch(self) -> None:
            """Arm the deadline of what the connection waits for now (headers, body or nothing), once per phase."""
            state = self.conn.their_state
            waiting = "headers" if state is h11.IDLE else "body" if state is h11.SEND_BODY else None
            if self.transport.is_closing():
                waiting = None
            if waiting == self._waiting_for:
                return  # bytes trickling in do not move a deadline
            self._stop_deadline()
            if waiting is not None:
                seconds = limits.header_timeout_s if waiting == "headers" else limits.body_timeout_s
                self._waiting_for = waiting
                self._deadline = self.loop.call_later(seconds, self._expired, waiting, seconds)

        def _expired(self, waiting: str, seconds: float) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            if self.cycle is None or self.cycle.response_complete:  # no answer under way: say why
                self._answer_and_close(408, "Request Timeout",
                                       f"the request {waiting} did not arrive within {seconds:g} s")
            else:
                self.transport.close()

    return LimitedH11Protocol
