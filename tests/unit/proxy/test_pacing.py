"""proxy/pacing.py rule by rule, on a clock the test moves: nginx's limit_rate allowance
(rate x (seconds since the request + 1) + limit_rate_after, as its write filter computes it),
what is held and when the pod is read again. The wire behaviour is in
tests/integration/test_limit_rate.py.

The fakes below stand in for the client side and the pod's connection, which compiled (mypyc)
are native classes a fake cannot pass for: these rules run on the sources (the test command's
pure-Python pass of tests/unit), and the compiled pacer is exercised through real sockets by
test_limit_rate.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

import pytest

import proxy.pacing
from proxy.clientside import ClientSide
from proxy.pacing import Pacer
from proxy.upstream import UpstreamProtocol

pytestmark = pytest.mark.skipif(
    not proxy.pacing.__file__.endswith(".py"),
    reason="compiled: the fakes cannot stand in for native classes (run on the sources)",
)

RATE = 1000  # bytes per second
START = 100.0


class Clock:
    """The loop's time and its call_at timers, moved by hand."""

    def __init__(self) -> None:
        self.now = START
        self.timers: list[tuple[float, Callable[[], None], asyncio.TimerHandle]] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        handle = asyncio.TimerHandle(when, callback, (), cast(Any, self))
        self.timers.append((when, callback, handle))
        return handle

    def advance(self, seconds: float) -> None:
        """Run every timer due by now + seconds, in order, at its own time."""
        end = self.now + seconds
        for _ in range(10_000):  # bounded: a timer that finds nothing to do must not spin
            due = [t for t in self.timers if t[0] <= end and not t[2].cancelled()]
            if not due:
                break
            entry = min(due, key=lambda t: t[0])
            self.timers.remove(entry)
            self.now = max(self.now, entry[0])
            entry[1]()
        else:
            raise AssertionError("timers spin")
        self.timers = [t for t in self.timers if not t[2].cancelled()]
        self.now = end

    def get_debug(self) -> bool:  # asyncio.TimerHandle asks its loop
        return False

    def _timer_handle_cancelled(self, handle: asyncio.TimerHandle) -> None:
        pass


class Client:
    def __init__(self) -> None:
        self.received = bytearray()
        self.write_paused = False
        self.metrics_protocol = "HTTP/1.1"

    def send_body(self, piece: bytes | memoryview) -> None:
        self.received += piece


class Conn:
    def __init__(self) -> None:
        self.reading = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self, now: float) -> None:
        self.reading = True


def pacer(after: int = 0) -> tuple[Pacer, Clock, Client, Conn]:
    clock, client, conn = Clock(), Client(), Conn()
    paced = Pacer(
        cast(asyncio.AbstractEventLoop, clock),
        cast(ClientSide, client),
        cast(UpstreamProtocol, conn),
        RATE,
        after,
        START,
    )
    return paced, clock, client, conn


def on_schedule(paced: Pacer, clock: Clock, client: Client, total: int) -> bool:
    """What the client got is nginx's allowance at this time (of `total`), to within one share
    (a timer sends a share at a time)."""
    allowed = min(int(RATE * (clock.now - START + 1.0)) + paced.after, total)
    return allowed - paced.share < len(client.received) <= allowed


def test_within_the_allowance_the_piece_goes_at_once() -> None:
    # nginx: one second's worth is allowed from the start of the request.
    paced, _, client, conn = pacer()
    paced.body(b"a" * 999)
    assert len(client.received) == 999 and conn.reading and not paced.holding


def test_past_the_allowance_the_rest_waits_and_the_pod_is_paused() -> None:
    paced, clock, client, conn = pacer()
    paced.body(b"a" * 3000)
    assert len(client.received) == 1000 and not conn.reading and paced.holding
    for _ in range(14):  # 2 s for the rest, then a share's worth before the pod is read
        clock.advance(0.2)
        assert on_schedule(paced, clock, client, 3000)
        assert conn.reading == (len(client.received) == 3000 and not paced.holding)
    # Nothing held, the allowance has grown again: the pod is read again.
    assert conn.reading and not paced.holding
    assert bytes(client.received) == b"a" * 3000


def test_limit_rate_after_bytes_go_at_full_speed() -> None:
    paced, clock, client, _ = pacer(after=5000)
    paced.body(b"b" * 6000)  # after + one second's worth
    assert len(client.received) == 6000
    paced.body(b"b" * 1000)
    assert len(client.received) == 6000
    clock.advance(1.0)
    assert on_schedule(paced, clock, client, 7000)
    clock.advance(0.6)
    assert len(client.received) == 7000


def test_pieces_keep_their_order() -> None:
    paced, clock, client, _ = pacer()
    for letter in b"abcd":
        paced.body(bytes([letter]) * 700)
    clock.advance(2.0)
    assert bytes(client.received) == b"a" * 700 + b"b" * 700 + b"c" * 700 + b"d" * 700


def test_a_slow_client_keeps_the_pod_paused() -> None:
    # proxy/flow.py: the client's drain resumes the pod; the pacer does not resume it while
    # the client's buffer is full.
    paced, clock, client, conn = pacer()
    paced.body(b"a" * 1500)
    client.write_paused = True
    clock.advance(2.0)
    assert len(client.received) == 1500 and not conn.reading and not paced.holding


def test_the_end_waits_for_the_last_share() -> None:
    paced, clock, client, _ = pacer()
    ended: list[float] = []
    paced.body(b"a" * 2500)
    assert paced.end(lambda: ended.append(clock.now))
    clock.advance(1.0)
    assert ended == []
    clock.advance(1.0)
    assert len(client.received) == 2500 and len(ended) == 1
    assert START + 1.5 <= ended[0] < START + 1.5 + paced.share / RATE


def test_an_end_with_nothing_held_is_now() -> None:
    paced, _, _, _ = pacer()
    paced.body(b"a" * 100)
    assert not paced.end(lambda: None)


def test_stop_drops_the_timer_and_what_waits() -> None:
    paced, clock, client, _ = pacer()
    paced.body(b"a" * 5000)
    paced.stop()
    clock.advance(10.0)
    assert len(client.received) == 1000 and not paced.holding and clock.timers == []


def test_memoryview_pieces_are_split_without_copy() -> None:
    paced, clock, client, _ = pacer()
    data = b"0123456789" * 300
    paced.body(memoryview(data))
    clock.advance(3.0)
    assert bytes(client.received) == data
