"""Client certificates in the TLS handshake (ingress-nginx's auth-tls-*), and what one
connection's handshake found.

Data flow: `tls.py` builds a `VerifyingContext` for each HTTPS host whose routes carry a
`config.ClientCertificate` (its certificate, the CA, the depth); when the SNI callback switches a
handshake to one, `request_certificate` makes OpenSSL ask the client for a certificate. Once the
handshake is done, `tlsserver.py` reads the result with `peer_certificate` into a
`PeerCertificate` (one per connection, kept on its `headers.ClientContext`), which the policy
step of proxy/clientauth.py judges per request, as nginx does in ngx_http_process_request.

Why OpenSSL directly (through proxy/libssl.py): OpenSSL keeps the verify mode an SSL object got
from the context it was created with (the listener's), so switching contexts in the SNI callback
does not ask for a certificate; nginx calls SSL_set_verify there, and so does this module (the
ssl module has no API for it). Like nginx, the verify callback accepts every certificate during
the handshake (a failed verification is answered per request, 400 or the error page, not with a
TLS alert), and the result is read afterwards with SSL_get_verify_result. The SSL pointer is
taken from the ssl module's object and checked (its SSL_CTX must be the context's own) before
use; when anything does not fit, no certificate is asked for, and a host that needs one answers
400.

Session resumption: a resumed session carries the certificate and the verification result of
the handshake that created it, possibly on another host with another CA. While any host asks
for certificates, the listener issues no tickets and keeps no session cache
(`restrict_resumption`), and a resumed session is read as "no certificate" (fail closed).
"""

from __future__ import annotations

import ctypes
import hashlib
import ssl
import urllib.parse
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from proxy.libssl import LIB, ctx_pointer, ssl_pointer

X509_V_OK: Final = 0
# The verification errors nginx's `optional_no_ca` lets through (ngx_ssl_verify_error_optional):
# the issuer is unknown or self-signed, nothing else (an expired certificate still fails).
OPTIONAL_NO_CA_ERRORS: Final = frozenset({2, 18, 19, 20, 21, 27})
# SSL_VERIFY_PEER, without SSL_VERIFY_FAIL_IF_NO_PEER_CERT: "on" without a certificate is a
# 400 answered per request (nginx's 496), not a failed handshake.
_SSL_VERIFY_PEER: Final = 1
_SSL_CTRL_SET_SESS_CACHE_MODE: Final = 44
_SESS_CACHE_OFF: Final = 0
_SESS_CACHE_SERVER: Final = 2


class VerifyingContext(ssl.SSLContext):
    """A host's server context that asks for client certificates (see the module docstring)."""

    key: bytes  # identifies the verification (CA, mode, depth): `verification_key`
    depth: int


def verification_key(ca_pem: str, verify: str, depth: int) -> bytes:
    """What a connection's verification was done against; a request step compares its own."""
    digest = hashlib.sha256()
    for part in (ca_pem, verify, str(depth)):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.digest()


class PeerCertificate:
    """What one connection's handshake found, as nginx's $ssl_client_* variables give it.

    `key`: the verification it was done against; `presented`: the client sent a certificate;
    `result`: OpenSSL's verification result (0: verified); the rest is rendered for the pod's
    ssl-client-* fields (b"" when there is nothing to send)."""

    __slots__ = ("escaped", "issuer", "key", "presented", "result", "subject", "verify")

    def __init__(
        self,
        key: bytes,
        presented: bool = False,
        result: int = X509_V_OK,
        verify: bytes = b"NONE",
        subject: bytes = b"",
        issuer: bytes = b"",
        escaped: bytes = b"",
    ) -> None:
        self.key = key
        self.presented = presented
        self.result = result
        self.verify = verify
        self.subject = subject
        self.issuer = issuer
        self.escaped = escaped


def _field_text(text: str) -> bytes:
    """A DN as a field value: UTF-8, with control characters hex-escaped as RFC 4514 allows,
    so a certificate cannot end the field or the head."""
    return "".join(
        f"\\{ord(c):02x}" if ord(c) < 0x20 or ord(c) == 0x7F else c for c in text
    ).encode()


_ACCEPT_ALL_TYPE: Final = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)


def _accept_all(_ok: int, _store: int | None) -> int:
    # nginx's ngx_http_ssl_verify_callback: the handshake goes on whatever the verification
    # says; the result is judged per request.
    return 1


_ACCEPT_ALL: Final = _ACCEPT_ALL_TYPE(_accept_all)  # kept alive for OpenSSL


def request_certificate(sock: ssl.SSLSocket | ssl.SSLObject, context: VerifyingContext) -> bool:
    """Ask the client of this handshake for a certificate (from the SNI callback, once the
    connection is on `context`); False when OpenSSL cannot be reached (none is asked for)."""
    pointer = ssl_pointer(sock)
    if pointer is None or LIB is None:
        return False
    LIB.SSL_set_verify(pointer, _SSL_VERIFY_PEER, ctypes.cast(_ACCEPT_ALL, ctypes.c_void_p))
    LIB.SSL_set_verify_depth(pointer, context.depth)
    return True


def peer_certificate(sock: ssl.SSLSocket) -> PeerCertificate | None:
    """What the finished handshake of a connection on a VerifyingContext found; None on
    another context."""
    context = sock.context
    if not isinstance(context, VerifyingContext):
        return None
    der = sock.getpeercert(binary_form=True)
    if der is None or sock.session_reused:
        # Resumed: the certificate is the session's, maybe from another host (fail closed).
        return PeerCertificate(context.key)
    pointer = ssl_pointer(sock)
    result = -1 if pointer is None or LIB is None else int(LIB.SSL_get_verify_result(pointer))
    if result == X509_V_OK:
        verify = b"SUCCESS"
    else:
        reason = b"unknown"
        if result > 0 and LIB is not None:
            reason = LIB.X509_verify_cert_error_string(result) or reason
        verify = b"FAILED:" + reason
    try:
        cert = x509.load_der_x509_certificate(der)
        subject = _field_text(cert.subject.rfc4514_string())
        issuer = _field_text(cert.issuer.rfc4514_string())
        pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
    except ValueError:
        return PeerCertificate(context.key, True, -1, b"FAILED:unreadable certificate")
    # nginx's $ssl_client_escaped_cert: the PEM, URL-encoded as a URI component.
    escaped = urllib.parse.quote(pem, safe="").encode("ascii")
    return PeerCertificate(context.key, True, result, verify, subject, issuer, escaped)


def restrict_resumption(context: ssl.SSLContext, restricted: bool) -> None:
    """No session tickets and no session cache on the listener context while `restricted`
    (some host asks for client certificates), OpenSSL's defaults otherwise."""
    context.num_tickets = 0 if restricted else 2
    if restricted:
        context.options |= ssl.OP_NO_TICKET
    else:
        context.options &= ~ssl.OP_NO_TICKET
    pointer = ctx_pointer(context)
    if pointer is not None and LIB is not None:
        mode = _SESS_CACHE_OFF if restricted else _SESS_CACHE_SERVER
        LIB.SSL_CTX_ctrl(pointer, _SSL_CTRL_SET_SESS_CACHE_MODE, mode, None)
