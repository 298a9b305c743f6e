"""An upstream response head as HTTP/2 fields (headers.response_fields), one row per rule.

Each row is a pod's head, classified the way proxy/upstream.py collects it, and the fields an
HTTP/2 client must get: RFC 9113 §8.3.2 (`:status` first), §8.2 (names in lower case), §8.2.2
(no connection-specific field), and the same end-to-end rules `render_response` applies for an
HTTP/1.1 client (RFC 9110 §7.6.1: hop-by-hop fields and those Connection names dropped; our
Server when the pod sends none; a route's added fields). Each row is also checked against
`render_response` itself: both protocols get the same end-to-end fields.
"""

from __future__ import annotations

import pytest

from proxy import headers as hdr


def _collect(
    fields: list[tuple[bytes, bytes]],
) -> tuple[list[bytes], list[tuple[bytes, bytes, bytes]]]:
    """`parts` and `special` as proxy/upstream.py builds them while parsing a head."""
    parts = [b""]
    special = []
    for name, value in fields:
        lname = hdr.RESPONSE_NAMES.special_name(name)
        if lname:
            special.append((lname, name, value))
        else:
            parts += (name, b": ", value, b"\r\n")
    return parts, special


def _from_rendered(rendered: bytes) -> list[tuple[bytes, bytes]]:
    """The fields of an HTTP/1.1 head rendered for a client, framing fields left out."""
    out = []
    for line in rendered.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.lower() not in {b"connection", b"transfer-encoding"}:
            out.append((name.lower(), value.strip()))
    return out


ROWS = [
    # (why, status, pod fields, HEAD request, added, replaced, expected fields after :status)
    (
        "RFC 9113 §8.2: names in lower case; values as sent",
        200,
        [(b"Content-Type", b"text/plain"), (b"Content-Length", b"5"), (b"Server", b"pod")],
        False,
        b"",
        frozenset(),
        [(b"content-type", b"text/plain"), (b"content-length", b"5"), (b"server", b"pod")],
    ),
    (
        "Portico's Server when the pod sends none (as for HTTP/1.1 clients)",
        200,
        [(b"X-A", b"1")],
        False,
        b"",
        frozenset(),
        [(b"x-a", b"1"), (b"server", b"portico")],
    ),
    (
        "RFC 9113 §8.2.2: Connection, Keep-Alive, Transfer-Encoding, Upgrade never sent",
        200,
        [
            (b"Connection", b"keep-alive"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Upgrade", b"h2c"),
            (b"Proxy-Connection", b"keep-alive"),
            (b"Server", b"pod"),
        ],
        False,
        b"",
        frozenset(),
        [(b"server", b"pod")],
    ),
    (
        "RFC 9110 §7.6.1: a field Connection names is dropped too",
        200,
        [(b"Connection", b"X-Secret, close"), (b"X-Secret", b"s"), (b"X-Kept", b"k")],
        False,
        b"",
        frozenset(),
        [(b"x-kept", b"k"), (b"server", b"portico")],
    ),
    (
        "A route's added fields follow the pod's (custom-headers, HSTS)",
        200,
        [(b"Strict-Transport-Security", b"max-age=1"), (b"Server", b"pod")],
        False,
        b"Strict-Transport-Security: max-age=31536000\r\nX-Added: yes\r\n",
        frozenset({b"strict-transport-security"}),
        [
            (b"server", b"pod"),
            (b"strict-transport-security", b"max-age=31536000"),
            (b"x-added", b"yes"),
        ],
    ),
    (
        "A pod's HSTS kept when no step replaces it",
        200,
        [(b"Strict-Transport-Security", b"max-age=1")],
        False,
        b"",
        frozenset(),
        [(b"strict-transport-security", b"max-age=1"), (b"server", b"portico")],
    ),
    (
        "Repeated fields stay separate, in order (RFC 9110 §5.3)",
        302,
        [(b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2"), (b"Location", b"/x")],
        False,
        b"",
        frozenset(),
        [
            (b"set-cookie", b"a=1"),
            (b"set-cookie", b"b=2"),
            (b"location", b"/x"),
            (b"server", b"portico"),
        ],
    ),
]


@pytest.mark.parametrize(
    ("why", "status", "pod", "head_request", "added", "replaced", "expected"),
    ROWS,
    ids=[row[0] for row in ROWS],
)
def test_response_fields(
    *,
    why: str,
    status: int,
    pod: list[tuple[bytes, bytes]],
    head_request: bool,
    added: bytes,
    replaced: frozenset[bytes],
    expected: list[tuple[bytes, bytes]],
) -> None:
    parts, special = _collect(pod)
    fields, head = hdr.response_fields(status, parts, special, head_request, added, replaced)
    assert fields[0] == (b":status", b"%d" % status)
    assert fields[1:] == expected
    parts, special = _collect(pod)
    rendered = hdr.render_response(
        status, parts, special, head_request, True, True, added, replaced
    )
    assert fields[1:] == _from_rendered(rendered.data)
    assert (head.framing, head.length) == (rendered.framing, rendered.length)


FRAMING = [
    # (why, status, pod fields, HEAD request, framing, length)
    (
        "Content-Length frames the body",
        200,
        [(b"Content-Length", b"5")],
        False,
        hdr.FRAME_LENGTH,
        5,
    ),
    ("no length: the body runs to the pod's end", 200, [], False, hdr.FRAME_CHUNKED, -1),
    ("HEAD: no body (RFC 9110 §9.3.2)", 200, [(b"Content-Length", b"5")], True, hdr.FRAME_NONE, -1),
    ("204: no body (RFC 9110 §15.3.5)", 204, [], False, hdr.FRAME_NONE, -1),
    (
        "304: no body (RFC 9110 §15.4.5)",
        304,
        [(b"Content-Length", b"5")],
        False,
        hdr.FRAME_NONE,
        -1,
    ),
]


@pytest.mark.parametrize(
    ("why", "status", "pod", "head_request", "framing", "length"),
    FRAMING,
    ids=[row[0] for row in FRAMING],
)
def test_response_fields_framing(
    *,
    why: str,
    status: int,
    pod: list[tuple[bytes, bytes]],
    head_request: bool,
    framing: int,
    length: int,
) -> None:
    parts, special = _collect(pod)
    _, head = hdr.response_fields(status, parts, special, head_request, b"", frozenset())
    assert (head.framing, head.length) == (framing, length)


@pytest.mark.parametrize(
    "pod",
    [
        [(b"Content-Length", b"1"), (b"Content-Length", b"2")],
        [(b"Transfer-Encoding", b"gzip")],
    ],
    ids=["two content-lengths", "a transfer-coding other than chunked"],
)
def test_response_fields_refuses_what_render_response_refuses(
    pod: list[tuple[bytes, bytes]],
) -> None:
    parts, special = _collect(pod)
    with pytest.raises(ValueError):
        hdr.response_fields(200, parts, special, False, b"", frozenset())
