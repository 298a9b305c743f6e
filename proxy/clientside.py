"""The client side of an exchange: what an exchange needs from whatever speaks to the client.

An `Exchange` (proxy/exchange.py) never knows the client's protocol: it sends the response head
and body pieces, finishes, answers locally, and pauses or resumes reading the request body,
all through `ClientSide`. The HTTP/1.1 connection (`DownstreamProtocol`, proxy/downstream.py)
implements it today, for the one exchange it answers at a time; an HTTP/2 stream will implement
it for its own exchange. Framing (Content-Length, chunked, closing the connection, keep-alive)
is the client side's business, not the exchange's.

An abstract base class rather than a `typing.Protocol`: compiled (mypyc), a call through a
Protocol is a Python attribute lookup and call, a call through a base class a native one. The
same code with `ClientSide` a Protocol measured 4 % slower (tests/bench/hotpath.py, compiled,
5 interleaved runs, medians: small 6.67 -> 6.95 us, 64k 9.00 -> 9.20, chunked 11.00 -> 11.37).
Classes outside the compiled modules (a test's fake client) may implement it too
(`allow_interpreted_subclasses`, which measured free: small 6.68 either way).
"""

from __future__ import annotations

import asyncio

from mypy_extensions import mypyc_attr

from proxy.headers import ClientContext, RequestHead, ResponseHead


@mypyc_attr(allow_interpreted_subclasses=True)
class ClientSide:
    """The interface; every method is implemented by each client protocol."""

    __slots__ = ("ctx", "metrics_protocol", "read_at", "write_paused")

    # Who the client is (address, whether it is a trusted proxy, listener scheme and port).
    ctx: ClientContext | None
    # Loop time of the read that completed the latest request head (an exchange's start).
    read_at: float
    # The client does not take what is written to it (its send buffer is full): the exchange
    # must stop reading the response (proxy/flow.py).
    write_paused: bool
    # The client's protocol as a request metrics label (proxy/metrics.py PROTOCOLS): set once
    # per connection (or stream), one attribute read per exchange.
    metrics_protocol: str

    def send_interim(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """An informational (1xx) response: `100 Continue`, or one relayed from the pod."""
        raise NotImplementedError

    def send_head(
        self,
        status: int,
        parts: list[bytes],
        special: list[tuple[bytes, bytes, bytes]],
        head: RequestHead,
        added: bytes,
        replaced: frozenset[bytes],
    ) -> ResponseHead:
        """The final response head from the pod, as the upstream protocol classified its
        fields, with the route's response fields `added` (rendered) in place of the pod's
        `replaced` ones (see headers.render_response); raises ValueError when the pod's head
        cannot be relayed. The head may wait for the first body piece (one write for small
        responses)."""
        raise NotImplementedError

    def send_body(self, piece: bytes | memoryview) -> None:
        """One piece of the response body, as read from the pod."""
        raise NotImplementedError

    def send_answer(self, status: int, fields: bytes, close: bool, head_only: bool) -> bool:
        """A whole local answer (see proxy/replies.py) with extra header `fields` (rendered,
        b"" for none: the answer's own and the route's response fields); whether the
        connection stays open after it."""
        raise NotImplementedError

    def finish(self, exchange: object, reusable: bool, now: float) -> None:
        """The exchange is over (its answer complete, or abandoned); `reusable`: nothing of
        its request is left unread, so the client may send another. `now`: the loop time."""
        raise NotImplementedError

    def upgrade(
        self,
        exchange: object,
        headers: list[tuple[bytes, bytes]],
        rest: bytes,
        upstream: asyncio.Transport,
    ) -> None:
        """The pod switched protocols (101): from now on the client and `upstream` are one
        byte pipe; `rest`: the pod's bytes after its 101 head."""
        raise NotImplementedError

    def abort(self) -> None:
        """Cut the client off: the response cannot be completed."""
        raise NotImplementedError

    def protocol(self, head: RequestHead | None) -> bytes:
        """The client's protocol for the access log (nginx's $server_protocol)."""
        return b"HTTP/1.1" if head is None or head.version_11 else b"HTTP/1.0"

    def pause_reading(self) -> None:
        """Stop reading the request body (backpressure, see proxy/flow.py)."""
        raise NotImplementedError

    def resume_reading(self) -> None:
        """Read the request body again (a no-op unless paused by `pause_reading`)."""
        raise NotImplementedError
