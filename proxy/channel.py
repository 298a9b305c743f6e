"""The worker channel: framed messages between the controller's publisher and one worker.

Each worker process gets one end of a Unix socketpair. Frames are a 4-byte big-endian length, a
1-byte message type and the payload. The controller sends `SETTINGS` once, then `SNAPSHOT` (a
full encoded snapshot) or `ENDPOINTS` (an encoded endpoints-only update) whenever routing
changes, and `DRAIN` to shut the worker down gracefully. The worker answers every snapshot or
update with `ACK` or `NACK` (the version, and for a NACK the reason) and sends `READY` once its
listeners accept connections (with what its request path runs, as JSON: `proxy.native.report()`),
then `STATS` (its counters, as JSON) every second: the controller aggregates them into metrics
and treats their absence as a stalled event loop.

This module is the only wire contract besides `proxy.config`; the controller imports it, never
the other way round.
"""

from __future__ import annotations

import asyncio
import enum
import json
import struct
from dataclasses import dataclass
from typing import Final

_HEADER: Final = struct.Struct("!IB")
MAX_FRAME: Final = 1 << 30  # a 10,000-Ingress snapshot is a few MiB; anything near 1 GiB is a bug


class MessageType(enum.IntEnum):
    SETTINGS = 1
    SNAPSHOT = 2
    ENDPOINTS = 3
    ACK = 4
    NACK = 5
    READY = 6
    DRAIN = 7
    STATS = 8  # worker -> controller, every second: counters (JSON); doubles as a heartbeat


class ChannelClosed(ConnectionError):
    """The other end went away (EOF) or sent a frame that cannot be read."""


@dataclass(frozen=True, slots=True)
class Message:
    type: MessageType
    payload: bytes = b""


@dataclass(frozen=True, slots=True)
class Reply:
    """The decoded payload of an ACK or NACK: which version, and why a NACK refused it."""

    version: int
    reason: str | None = None

    def encode(self) -> bytes:
        return json.dumps({"version": self.version, "reason": self.reason}).encode()

    @classmethod
    def decode(cls, payload: bytes) -> Reply:
        raw = json.loads(payload)
        return cls(int(raw["version"]), raw.get("reason"))


def frame(message: Message) -> bytes:
    return _HEADER.pack(len(message.payload), message.type) + message.payload


async def read_message(reader: asyncio.StreamReader) -> Message:
    """Read one frame; raises ChannelClosed on EOF or a malformed frame."""
    try:
        header = await reader.readexactly(_HEADER.size)
        length, kind = _HEADER.unpack(header)
        if length > MAX_FRAME:
            raise ChannelClosed(f"frame of {length} bytes exceeds the limit")
        payload = await reader.readexactly(length)
        return Message(MessageType(kind), payload)
    except (asyncio.IncompleteReadError, ConnectionError) as exc:
        raise ChannelClosed(str(exc) or "channel closed") from exc
    except ValueError as exc:  # unknown message type
        raise ChannelClosed(f"bad frame: {exc}") from exc


async def send_message(writer: asyncio.StreamWriter, message: Message) -> None:
    writer.write(frame(message))
    await writer.drain()
