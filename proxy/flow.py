"""Backpressure between the two sides of an exchange: when reading stops and starts again.

Bytes are never queued without bound: each side reads only as fast as the other takes.

- The client does not take the response (its transport's write buffer is full:
  `pause_writing`): stop reading the pod's response. Its connection's read deadline stops
  too; the client is timed instead, as one that stops sending (`client_body_timeout`).
  Reading resumes when the client's buffer drains, with a fresh read deadline.
- The pod does not take the request body (its transport's buffer is full): stop reading the
  client's body; the pod is timed by `send_timeout` until its buffer drains.
- No upstream connection yet (dialling, or between attempts): the body read meanwhile is kept,
  up to BUFFER_LIMIT; beyond it, stop reading the client until a connection takes it.
- A connection taken for an exchange whose client is not reading starts paused.
- A response paced by limit-rate (proxy/pacing.py): reading stops while the client is ahead
  of the schedule; the client's buffer draining does not resume it then, the pacer's timer
  does (once the client's buffer has room too).

The mechanisms stay with their owners (the client side's pause bits, the upstream
connection's deadlines); this module decides when each is used. A tunnel (after 101) couples
its two transports the same way, inside proxy/tunnel.py.
"""

from __future__ import annotations

from proxy.clientside import ClientSide
from proxy.pacing import Pacer
from proxy.upstream import UpstreamProtocol

# Body bytes buffered while no upstream connection is ready; beyond it the client is paused.
BUFFER_LIMIT = 64 * 1024


def attached(client: ClientSide, conn: UpstreamProtocol) -> None:
    """`conn` now carries the exchange: what was buffered goes out with its head, and a
    client that is not reading keeps the response waiting."""
    client.resume_reading()
    if client.write_paused:
        conn.pause_reading()


def buffered(client: ClientSide, pending_bytes: int) -> bool:
    """`pending_bytes` of body wait for a connection: whether that is past the limit (the
    client is then paused, and the request can no longer be replayed)."""
    if pending_bytes > BUFFER_LIMIT:
        client.pause_reading()
        return True
    return False


def client_stalled(conn: UpstreamProtocol | None) -> None:
    """The client's write buffer is full: stop reading the response from `conn`."""
    if conn is not None:
        conn.pause_reading()


def client_drained(conn: UpstreamProtocol | None, now: float, pacer: Pacer | None) -> None:
    """The client's write buffer drained: read the response again, unless its pace holds it."""
    if conn is not None and (pacer is None or not pacer.holding):
        conn.resume_reading(now)


def upstream_stalled(client: ClientSide) -> None:
    """The pod's write buffer is full: stop reading the request body from the client."""
    client.pause_reading()


def upstream_drained(client: ClientSide) -> None:
    """The pod's write buffer drained: read the request body again."""
    client.resume_reading()
