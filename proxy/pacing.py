"""Response bandwidth (limit-rate, limit-rate-after): the pace at which a proxied response body
goes to the client, as nginx's limit_rate and limit_rate_after.

The exchange of a route with a rate (`Route.limit_rate`, decided once per snapshot) hands each
response body piece to its `Pacer` instead of the client side. nginx's write filter lets a
request's response have `rate x (seconds since the request started + 1) + limit_rate_after`
bytes so far (one second's worth ahead); Portico keeps the same allowance. A piece within it goes
out at once; past it, what is left of the piece waits here, the pod's connection stops being read
(proxy/flow.py: the same pause as for a client that does not read), and one loop timer
(`call_at`, never a sleeping task per piece) sends the next share once the allowance has grown by
it, then reads the pod again when nothing is held. So at most one read of the response is held,
whatever the rate, and the pod is slowed with the client. The response's end waits for the last
share. Local answers are not paced (nginx's limit_rate matters for proxied bodies only).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

from proxy.clientside import ClientSide
from proxy.upstream import UpstreamProtocol

# A timer sends at least this many seconds' worth of the rate at once (10 wake-ups a second at
# most), and never less than MIN_SHARE bytes.
SHARE_SECONDS: Final = 0.1
MIN_SHARE: Final = 512


class Pacer:
    """The schedule of one response's body: what was sent, what waits, the timer."""

    __slots__ = (
        "after",
        "client",
        "conn",
        "done",
        "held",
        "held_bytes",
        "loop",
        "rate",
        "sent",
        "share",
        "start",
        "timer",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        client: ClientSide,
        conn: UpstreamProtocol | None,
        rate: int,
        after: int,
        start: float,
    ) -> None:
        self.loop = loop
        self.client = client
        # The pod's connection, paused while the client is ahead of the schedule; None once
        # the response is read whole (the connection went back to the pool or was closed).
        self.conn = conn
        self.rate = rate  # bytes per second, above 0
        self.after = after  # bytes sent before the rate applies
        self.start = start  # loop time the request started (nginx's r->start_sec)
        self.sent = 0  # body bytes handed to the client
        self.held: list[bytes | memoryview] = []  # body pieces waiting for the allowance
        self.held_bytes = 0
        self.share = max(int(rate * SHARE_SECONDS), MIN_SHARE)
        self.timer: asyncio.TimerHandle | None = None
        # The end of the response, run once the held pieces are sent; None: not ended yet.
        self.done: Callable[[], None] | None = None

    @property
    def holding(self) -> bool:
        """Whether the pacer keeps the pod's connection paused (the client's write buffer
        draining must not resume it)."""
        return self.timer is not None

    def allowance(self, now: float) -> int:
        """Body bytes the response may send at `now` beyond those sent (nginx's `limit`)."""
        return int(self.rate * (now - self.start + 1.0)) + self.after - self.sent

    def body(self, piece: bytes | memoryview) -> None:
        """A piece of the pod's response body: sent now, in part, or held."""
        if self.timer is not None:
            self._hold(piece)  # behind what already waits
            return
        allowed = self.allowance(self.loop.time())
        size = len(piece)
        if size < allowed:
            self.sent += size
            self.client.send_body(piece)
            return
        if allowed > 0:
            self.sent += allowed
            self.client.send_body(piece if size == allowed else piece[:allowed])
        if size > allowed > 0:
            self._hold(piece[allowed:])
        elif size > allowed:
            self._hold(piece)
        # At or past the allowance: the pod waits until the schedule catches up.
        conn = self.conn
        if conn is not None:
            conn.pause_reading()
        self._wait()

    def end(self, done: Callable[[], None]) -> bool:
        """The pod's response is complete: True when pieces still wait (`done` then runs after
        the last one is sent), False to end it now."""
        self.conn = None
        if not self.held:
            return False
        self.done = done
        return True

    def stop(self) -> None:
        """The exchange ended (or was cut): drop the timer and what waits."""
        timer = self.timer
        if timer is not None:
            timer.cancel()
            self.timer = None
        self.held = []
        self.held_bytes = 0
        self.conn = None
        self.done = None

    def _hold(self, piece: bytes | memoryview) -> None:
        self.held.append(piece)
        self.held_bytes += len(piece)

    def _wait(self) -> None:
        """Wake up when the allowance has grown by a share (or by all that waits)."""
        share = min(self.held_bytes, self.share) if self.held_bytes else self.share
        # Half a byte more than needed: the float's rounding must not leave the allowance one
        # byte short at `when` (a timer that finds nothing to send would spin).
        when = self.start - 1.0 + (self.sent - self.after + share + 0.5) / self.rate
        self.timer = self.loop.call_at(when, self._tick)

    def _tick(self) -> None:
        self.timer = None
        now = self.loop.time()
        allowed = self.allowance(now)
        held = self.held
        while held and allowed > 0:
            piece = held[0]
            size = len(piece)
            if size <= allowed:
                del held[0]
                self.held_bytes -= size
                self.sent += size
                allowed -= size
                self.client.send_body(piece)
            else:
                held[0] = piece[allowed:]
                self.held_bytes -= allowed
                self.sent += allowed
                self.client.send_body(piece[:allowed])
                allowed = 0
        if held:
            self._wait()
            return
        done = self.done
        if done is not None:
            self.done = None
            done()
            return
        if allowed <= 0:
            self._wait()  # the clock's rounding can leave the allowance just short
            return
        conn = self.conn
        if conn is not None and not self.client.write_paused:
            conn.resume_reading(now)
