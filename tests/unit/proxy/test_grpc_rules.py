"""gRPC rules of proxy/grpc.py: grpc-timeout, Portico's statuses, the fields the pod gets.

Sources: the gRPC HTTP/2 protocol (doc/PROTOCOL-HTTP2.md: "Timeout" grammar, trailers-only
responses, percent-encoded grpc-message), the gRPC project's HTTP-to-gRPC status mapping
(doc/http-grpc-status-mapping.md), issue 19 item 5 (12 / 14 / 14 / 4).
"""

from __future__ import annotations

import pytest

from proxy.grpc import grpc_status, is_grpc, parse_timeout, request_fields, response_fields
from proxy.headers import ClientContext, parse_request

TIMEOUT_ROWS = [
    # (grpc-timeout, seconds or None: malformed, ignored), PROTOCOL-HTTP2.md "Timeout"
    (b"1S", 1.0),
    (b"250m", 0.25),
    (b"2M", 120.0),
    (b"1H", 3600.0),
    (b"500u", 0.0005),
    (b"1000000n", 0.001),
    (b"99999999S", 99999999.0),  # 8 digits at most
    (b"123456789S", None),  # 9 digits
    (b"S", None),
    (b"10", None),
    (b"10s", None),  # units are case-sensitive
    (b"-1S", None),
    (b"1.5S", None),
]


@pytest.mark.parametrize(("value", "seconds"), TIMEOUT_ROWS)
def test_grpc_timeout(value: bytes, seconds: float | None) -> None:
    assert parse_timeout(value) == (pytest.approx(seconds) if seconds is not None else None)


STATUS_ROWS = [
    # (local HTTP status, reason, grpc-status): issue 19 item 5, http-grpc-status-mapping.md
    (404, "NoRoute", b"12"),
    (503, "NoEndpoints", b"14"),
    (502, "UpstreamConnectFailed", b"14"),
    (502, "UpstreamNotHTTP2", b"14"),
    (504, "UpstreamTimeout", b"4"),
    (504, "GrpcTimeout", b"4"),
    (408, "BodyTimeout", b"4"),
    (413, "BodyTooLarge", b"8"),
    (401, "AuthRequired", b"16"),
    (403, "Forbidden", b"7"),
    (429, "RateLimited", b"14"),
    (308, "SSLRedirect", b"2"),  # anything else: UNKNOWN
]


@pytest.mark.parametrize(("status", "reason", "code"), STATUS_ROWS)
def test_local_answers_are_trailers_only_grpc(status: int, reason: str, code: bytes) -> None:
    fields = dict(grpc_status(status, reason))
    assert fields[b":status"] == b"200"
    assert fields[b"content-type"] == b"application/grpc"
    assert fields[b"grpc-status"] == code
    assert fields[b"grpc-message"]


def test_grpc_message_percent_encoded() -> None:
    fields = dict(grpc_status(502, "ünïcode\r\n%"))
    assert fields[b"grpc-message"] == b"%C3%BCn%C3%AFcode%0D%0A%25"


@pytest.mark.parametrize(
    ("content_type", "grpc"),
    [
        (b"application/grpc", True),
        (b"application/grpc+proto", True),
        (b"Application/GRPC+json", True),
        (b"application/grpc-web", False),  # HTTP/1.1-friendly: answered as HTTP
        (b"application/grpc-web+proto", False),
        (b"application/json", False),
    ],
)
def test_is_grpc(content_type: bytes, grpc: bool) -> None:
    assert is_grpc(content_type) is grpc


def test_request_fields_for_the_pod() -> None:
    """The pod gets the head parse_request shaped (X-Forwarded-*, request id), as HTTP/2
    fields: Host as :authority, `te: trailers`, no connection-specific field."""
    ctx = ClientContext("198.51.100.7", "https", 443, ())
    parts = [b"", b" ", b"", b""]
    parts += [b"content-type", b": ", b"application/grpc", b"\r\n"]
    parts += [b"x-custom-bin", b": ", b"AAEC", b"\r\n"]
    special = [(b"host", b"api.example"), (b"transfer-encoding", b"chunked")]
    head = parse_request(b"POST", b"/pkg.Svc/Call", "1.1", parts, special, ctx)
    fields = request_fields(head, b"http")
    assert fields[:5] == [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":authority", b"api.example"),
        (b":path", b"/pkg.Svc/Call"),
        (b"te", b"trailers"),
    ]
    names = [name for name, _ in fields]
    assert all(name == name.lower() for name in names)
    rest = dict(fields[5:])
    assert rest[b"content-type"] == b"application/grpc"
    assert rest[b"x-custom-bin"] == b"AAEC"
    assert rest[b"x-forwarded-for"] == b"198.51.100.7"
    assert rest[b"x-forwarded-proto"] == b"https"
    assert b"x-request-id" in rest
    for hop in (b"host", b"transfer-encoding", b"connection", b"keep-alive"):
        assert hop not in rest


def test_response_fields_drop_connection_specific() -> None:
    fields = response_fields(
        ((b":status", b"200"), (b"connection", b"close"), (b"grpc-status", b"0"))
    )
    assert fields == [(b":status", b"200"), (b"grpc-status", b"0")]
