"""`proxy.h2server.HeaderClock`: when a client owes the rest of a header block (issue 19 item 3,
nginx's client_header_timeout on a partial frame), from the frame boundaries of what it sent."""

from __future__ import annotations

import pytest

from proxy.h2codec import PREFACE
from proxy.h2server import HeaderClock


def frame(kind: int, flags: int, payload: bytes, stream: int = 1) -> bytes:
    return (
        len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big") + payload
    )


SETTINGS = frame(0x4, 0, b"", 0)
HEADERS_WHOLE = frame(0x1, 0x4 | 0x1, b"h" * 20)  # END_HEADERS | END_STREAM
HEADERS_OPEN = frame(0x1, 0x1, b"h" * 20)  # END_STREAM, no END_HEADERS: CONTINUATION owed
CONTINUATION_END = frame(0x9, 0x4, b"c" * 20)
DATA = frame(0x0, 0, b"d" * 100)


@pytest.mark.parametrize(
    ("reads", "owed"),
    [
        pytest.param([b""], True, id="preface-owed-from-the-start"),
        pytest.param([PREFACE[:10]], True, id="preface-in-pieces"),
        pytest.param([PREFACE + SETTINGS], False, id="preface-and-settings-whole"),
        pytest.param([PREFACE + SETTINGS + HEADERS_WHOLE], False, id="whole-header-block"),
        pytest.param([PREFACE + SETTINGS + HEADERS_OPEN], True, id="continuation-owed"),
        pytest.param(
            [PREFACE + SETTINGS + HEADERS_OPEN, CONTINUATION_END[:5]],
            True,
            id="continuation-header-split",
        ),
        pytest.param(
            [PREFACE + SETTINGS + HEADERS_OPEN, CONTINUATION_END[:15]],
            True,
            id="continuation-payload-partial",
        ),
        pytest.param(
            [PREFACE + SETTINGS + HEADERS_OPEN, CONTINUATION_END[:15], CONTINUATION_END[15:]],
            False,
            id="continuation-ends-the-block",
        ),
        pytest.param([PREFACE + SETTINGS + HEADERS_WHOLE[:12]], True, id="headers-payload-partial"),
        pytest.param([PREFACE + SETTINGS + DATA[:4]], True, id="frame-header-split"),
        # A DATA payload that comes slowly is the body timeout's, not the header timeout's.
        pytest.param([PREFACE + SETTINGS + DATA[:50]], False, id="data-payload-partial"),
        pytest.param([PREFACE + SETTINGS + DATA[:50], DATA[50:]], False, id="data-whole"),
    ],
)
def test_header_block_owed(reads: list[bytes], owed: bool) -> None:
    clock = HeaderClock(1.0)
    for i, data in enumerate(reads):
        clock.read(data, 2.0 + i)
    assert bool(clock.since) is owed


def test_the_clock_starts_with_the_block_and_is_not_pushed_by_its_pieces() -> None:
    clock = HeaderClock(1.0)
    clock.read(PREFACE + SETTINGS, 2.0)
    assert clock.since == 0.0
    clock.read(HEADERS_OPEN, 3.0)
    for i, byte in enumerate(CONTINUATION_END[:-1]):
        clock.read(bytes((byte,)), 4.0 + i)
        assert clock.since == 3.0
    clock.read(CONTINUATION_END[-1:], 50.0)
    assert clock.since == 0.0
