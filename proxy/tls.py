"""TLS termination (SNI certificates, default certificate, ticket keys) and upstream TLS.

Data flow: each snapshot's `certificates` and `VirtualHost.tls_certificate` become, in every
worker, a `CertificateSet` (one `SSLContext` per certificate; exact hosts, one-label wildcards,
the default) built by `TLSTerminator.update` off the request path, and only when the
certificates or the TLS hosts changed. Contexts are cached by certificate content, so an
unchanged certificate keeps its context and a renewed Secret gets a new one. The HTTPS
listener's own context (`TLSTerminator.listener_context`) has an SNI callback that switches
every new handshake to the context the current set picks; open connections keep theirs.

Private keys reach OpenSSL through an anonymous in-memory file (`memfd`), never a file on disk,
and never appear in reprs or logs (`TLSCertificate.key_pem` is excluded from its repr).

Security defaults: TLS 1.2+ (`--tls-min-version 1.3` for 1.3 only), the Mozilla "intermediate"
cipher list, no compression, no renegotiation, ALPN `http/1.1`.

Session tickets: OpenSSL encrypts tickets (TLS 1.2 tickets and TLS 1.3 PSK tickets) with keys
it generates at random in memory when the listener context is created, and never rotates them
by itself. The keys belong to the context the handshake started on (the listener context, not
the per-certificate one the SNI callback switches to), so `TLSTerminator` rotates that
context's keys every `TICKET_KEY_LIFETIME` seconds with `SSL_CTRL_SET_TLSEXT_TICKET_KEYS`
(fresh random bytes, memory only). OpenSSL keeps a single key set: tickets issued before a
rotation are no longer accepted and those clients do a full handshake once.

Upstream TLS (`backend-protocol: HTTPS`): `upstream_tls(server_name, ca_pem)` gives one shared
`UpstreamTLS` per (SNI, CA) pair, used both to dial and as part of the pool key, so TLS and
plain connections to the same pod never mix. Without a CA the upstream certificate is not
verified (ingress-nginx's default, `proxy_ssl_verify off`); with one, the chain must lead to
it and the certificate must match the SNI name.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import hashlib
import logging
import os
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from proxy.config import ClientCertificate, Snapshot, TLSCertificate, VirtualHost
from proxy.libssl import LIB, ctx_pointer
from proxy.peercert import (
    VerifyingContext,
    request_certificate,
    restrict_resumption,
    verification_key,
)

logger = logging.getLogger("portico.tls")

# Mozilla "intermediate" profile, TLS 1.2 suites (TLS 1.3 suites are OpenSSL's defaults).
INTERMEDIATE_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
    )
)

DEFAULT_CERTIFICATE_NAME = "portico/default-certificate"

# Seconds between two rotations of the session ticket keys.
TICKET_KEY_LIFETIME: Final = 3600.0

_TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


@contextlib.contextmanager
def _memory_file(data: bytes) -> Iterator[str]:
    """A path to `data` that lives only in memory (memfd), for OpenSSL's file-based loaders."""
    fd = os.memfd_create("portico-tls", os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def server_context(
    certificate: TLSCertificate,
    min_version: str = "1.2",
    alpn: tuple[str, ...] = ("http/1.1",),
    client_auth: ClientCertificate | None = None,
) -> ssl.SSLContext:
    """A server SSLContext holding one certificate chain and key, with Portico's defaults;
    `alpn`: the protocols offered, preferred first; with `client_auth`, a `VerifyingContext`
    that asks for client certificates (peercert.py)."""
    if min_version not in _TLS_VERSIONS:
        raise ValueError(f"unsupported minimum TLS version {min_version!r}")
    context = (
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        if client_auth is None
        else VerifyingContext(ssl.PROTOCOL_TLS_SERVER)
    )
    context.minimum_version = _TLS_VERSIONS[min_version]
    context.set_ciphers(INTERMEDIATE_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_alpn_protocols(list(alpn))
    with (
        _memory_file(certificate.cert_pem.encode()) as cert_path,
        _memory_file(certificate.key_pem.encode()) as key_path,
    ):
        context.load_cert_chain(cert_path, key_path)
    if client_auth is not None and isinstance(context, VerifyingContext):
        context.load_verify_locations(cadata=client_auth.ca_pem)
        context.key = verification_key(client_auth.ca_pem, client_auth.verify, client_auth.depth)
        context.depth = client_auth.depth
    return context


def self_signed_certificate(days: int = 365) -> TLSCertificate:
    """The fallback default certificate: a fresh EC key and a self-signed certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Portico"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Portico Default Certificate"),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    not_after = now + datetime.timedelta(days=days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("portico.invalid")]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return TLSCertificate(
        name=DEFAULT_CERTIFICATE_NAME,
        cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
        hosts=("portico.invalid",),
        not_after=not_after.timestamp(),
    )


def covers(pattern: str, host: str) -> bool:
    """Whether a certificate name (exact or `*.` one-label wildcard) covers `host`."""
    if pattern == host:
        return True
    if pattern.startswith("*."):
        label, dot, parent = host.partition(".")
        return bool(label) and bool(dot) and parent == pattern[2:]
    return False


@dataclass(frozen=True, slots=True)
class CertificateSet:
    """Contexts by host for one snapshot: exact hosts, one-label wildcards, and the default."""

    exact: dict[str, ssl.SSLContext]
    wildcard: dict[str, ssl.SSLContext]  # keyed by parent domain: "*.a.com" -> "a.com"
    default: ssl.SSLContext
    # Some host asks for client certificates (the listener then resumes no sessions).
    verifying: bool = False

    def context_for(self, server_name: str | None) -> ssl.SSLContext:
        if not server_name:
            return self.default
        host = server_name.rstrip(".").lower()
        context = self.exact.get(host)
        if context is not None:
            return context
        _, _, parent = host.partition(".")
        return self.wildcard.get(parent, self.default)


def client_auth_of(vhost: VirtualHost) -> ClientCertificate | None:
    """The client-certificate verification of a host: the first rule's that asks for one
    (the compiler gives every rule of the host the same); None when none does."""
    rules = vhost.rules if vhost.fallback is None else (*vhost.rules, vhost.fallback)
    for rule in rules:
        step: ClientCertificate | None = rule.options.step(ClientCertificate)
        if step is not None and step.verify != "off":
            return step
    return None


def _content_key(
    certificate: TLSCertificate, min_version: str, client_auth: ClientCertificate | None = None
) -> bytes:
    """Identifies a context by what it holds (a renewed Secret under the same name differs)."""
    digest = hashlib.sha256()
    auth = (
        ("", "", "")
        if client_auth is None
        else (client_auth.ca_pem, client_auth.verify, str(client_auth.depth))
    )
    for part in (min_version, certificate.cert_pem, certificate.key_pem, *auth):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.digest()


def build_certificate_set(
    snapshot: Snapshot,
    default: TLSCertificate,
    min_version: str = "1.2",
    cache: dict[bytes, ssl.SSLContext] | None = None,
    alpn: tuple[str, ...] = ("http/1.1",),
) -> CertificateSet:
    """Contexts for every host an Ingress lists under `tls` with a certificate that covers it.

    The compiler only attaches a certificate to a host it covers; the check is repeated here so
    a bad snapshot can never serve a certificate for a name it does not hold. `cache` (content
    key -> context) is reused and left holding exactly the contexts of the new set.
    """
    by_name = {c.name: c for c in snapshot.certificates}
    old = {} if cache is None else dict(cache)
    used: dict[bytes, ssl.SSLContext] = {}

    def context(
        certificate: TLSCertificate, client_auth: ClientCertificate | None = None
    ) -> ssl.SSLContext:
        key = _content_key(certificate, min_version, client_auth)
        found = used.get(key) or old.get(key)
        if found is None:
            found = server_context(certificate, min_version, alpn, client_auth)
        used[key] = found
        return found

    exact: dict[str, ssl.SSLContext] = {}
    wildcard: dict[str, ssl.SSLContext] = {}
    chosen = default
    if snapshot.default_certificate is not None and snapshot.default_certificate in by_name:
        chosen = by_name[snapshot.default_certificate]
    verifying = False
    for vhost in snapshot.routes.virtual_hosts:
        name = vhost.tls_certificate
        client_auth = client_auth_of(vhost) if vhost.host else None
        verifying = verifying or client_auth is not None
        if not vhost.host or name is None or name not in by_name:
            if client_auth is not None:
                # A host asking for client certificates without its own: the default
                # certificate, and the verification (nginx's server block has both).
                if vhost.host.startswith("*."):
                    wildcard[vhost.host[2:]] = context(chosen, client_auth)
                else:
                    exact[vhost.host] = context(chosen, client_auth)
            continue
        certificate = by_name[name]
        if vhost.host.startswith("*."):
            if vhost.host in certificate.hosts:
                wildcard[vhost.host[2:]] = context(certificate, client_auth)
        elif any(covers(pattern, vhost.host) for pattern in certificate.hosts):
            exact[vhost.host] = context(certificate, client_auth)
    result = CertificateSet(exact, wildcard, context(chosen), verifying)
    if cache is not None:
        cache.clear()
        cache.update(used)
    return result


def _tls_shape(snapshot: Snapshot) -> tuple[object, ...]:
    """Everything a CertificateSet depends on; equal shapes give equal sets."""
    return (
        tuple(
            (vh.host, vh.tls_certificate, client_auth_of(vh))
            for vh in snapshot.routes.virtual_hosts
            if vh.tls_certificate is not None or client_auth_of(vh) is not None
        ),
        tuple((c.name, c.cert_pem, c.key_pem, c.hosts) for c in snapshot.certificates),
        snapshot.default_certificate,
    )


class TLSTerminator:
    """The TLS state of one worker's HTTPS listener: the current set and the listener context.

    `fallback` is the certificate served when neither a host certificate nor the snapshot's
    default certificate applies: the self-signed "Portico Default Certificate", generated once
    per worker.
    """

    def __init__(
        self,
        min_version: str = "1.2",
        fallback: TLSCertificate | None = None,
        alpn: tuple[str, ...] = ("http/1.1",),
    ) -> None:
        if min_version not in _TLS_VERSIONS:
            raise ValueError(f"unsupported minimum TLS version {min_version!r}")
        self.min_version = min_version
        # The protocols every context offers (ALPN), set in each: OpenSSL answers ALPN with the
        # context the SNI callback switched to.
        self.alpn = alpn
        self.fallback = fallback if fallback is not None else self_signed_certificate()
        self.current: CertificateSet | None = None
        self.rebuilds = 0
        self._shape: tuple[object, ...] | None = None
        self._cache: dict[bytes, ssl.SSLContext] = {}
        self._listener: ssl.SSLContext | None = None
        self._restricted = False
        self._tickets_rotated = 0.0

    def update(self, snapshot: Snapshot) -> bool:
        """Make `snapshot`'s certificates current; False (no work) when they did not change.

        Raises ValueError (or ssl.SSLError) for a certificate OpenSSL refuses; the previous
        set then stays current.
        """
        shape = _tls_shape(snapshot)
        if shape == self._shape and self.current is not None:
            return False
        try:
            certificates = build_certificate_set(
                snapshot, self.fallback, self.min_version, self._cache, self.alpn
            )
        except ssl.SSLError as exc:
            raise ValueError(f"cannot load a TLS certificate: {exc.reason or exc}") from None
        self.current = certificates
        self._shape = shape
        if self._listener is not None:
            self._restrict(certificates.verifying)
        self.rebuilds += 1
        logger.info(
            "tls.certificates",
            extra={
                "exact_hosts": len(certificates.exact),
                "wildcard_domains": len(certificates.wildcard),
                "contexts": len(self._cache),
                "default": snapshot.default_certificate or DEFAULT_CERTIFICATE_NAME,
            },
        )
        return True

    def listener_context(self) -> ssl.SSLContext:
        """The HTTPS listener's context: its SNI callback switches to the current set's choice.

        OpenSSL calls the callback for every ClientHello, with `server_name` None when the
        client sent no SNI, so the current set decides every handshake.
        """
        if self._listener is None:
            context = server_context(self.fallback, self.min_version, self.alpn)

            def pick(sock: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
                certificates = self.current
                if certificates is not None:
                    chosen = certificates.context_for(server_name)
                    sock.context = chosen
                    if isinstance(chosen, VerifyingContext):
                        request_certificate(sock, chosen)

            context.sni_callback = pick
            self._listener = context
            self._tickets_rotated = time.monotonic()
            self._restricted = False
            if self.current is not None:
                self._restrict(self.current.verifying)
        return self._listener

    def _restrict(self, verifying: bool) -> None:
        """Session resumption off while a host asks for client certificates (peercert.py);
        the ticket keys are renewed as it turns off, so no older ticket resumes either."""
        if self._listener is None or verifying == self._restricted:
            return
        self._restricted = verifying
        restrict_resumption(self._listener, verifying)
        if verifying:
            rotate_ticket_keys(self._listener)

    def maybe_rotate(self, now: float | None = None) -> bool:
        """Rotate the session ticket keys once they are TICKET_KEY_LIFETIME old."""
        if self._listener is None:
            return False
        now = time.monotonic() if now is None else now
        if now - self._tickets_rotated < TICKET_KEY_LIFETIME:
            return False
        self._tickets_rotated = now
        rotated = rotate_ticket_keys(self._listener)
        logger.info("tls.ticket_keys_rotated", extra={"rotated": rotated})
        return rotated


# ---- session ticket keys ---------------------------------------------------------------------
# The ssl module has no API for ticket keys; OpenSSL's SSL_CTX_ctrl does (reached through
# proxy/libssl.py); rotation is skipped (logged) when the context's SSL_CTX cannot be reached.

_SSL_CTRL_GET_TLSEXT_TICKET_KEYS: Final = 58
_SSL_CTRL_SET_TLSEXT_TICKET_KEYS: Final = 59
_TICKET_KEYS_SIZE: Final = 80  # 16 name + 32 HMAC + 32 AES bytes


def ticket_keys(context: ssl.SSLContext) -> bytes | None:
    """The context's current ticket key material (for tests), None if unreachable."""
    pointer = ctx_pointer(context)
    if pointer is None or LIB is None:
        return None
    buf = ctypes.create_string_buffer(_TICKET_KEYS_SIZE)
    if LIB.SSL_CTX_ctrl(pointer, _SSL_CTRL_GET_TLSEXT_TICKET_KEYS, _TICKET_KEYS_SIZE, buf) != 1:
        return None
    return buf.raw


def rotate_ticket_keys(context: ssl.SSLContext) -> bool:
    """Replace the context's ticket keys with fresh random ones; False if unsupported."""
    pointer = ctx_pointer(context)
    if pointer is None or LIB is None:
        return False
    buf = ctypes.create_string_buffer(os.urandom(_TICKET_KEYS_SIZE), _TICKET_KEYS_SIZE)
    ok = bool(
        LIB.SSL_CTX_ctrl(pointer, _SSL_CTRL_SET_TLSEXT_TICKET_KEYS, _TICKET_KEYS_SIZE, buf) == 1
    )
    ctypes.memset(buf, 0, _TICKET_KEYS_SIZE)
    return ok


# ---- upstream TLS ----------------------------------------------------------------------------


class UpstreamTLS:
    """How to speak TLS to the pods of a route; hashed by identity (part of the pool key)."""

    __slots__ = ("context", "server_name", "verify")

    def __init__(self, server_name: str, ca_pem: str | None, http2: bool = False) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
        # GRPCS routes offer h2 alone (proxy/h2upstream.py checks the pod chose it).
        context.set_alpn_protocols(["h2"] if http2 else ["http/1.1"])
        if ca_pem is None:
            # ingress-nginx's default (proxy_ssl_verify off): encrypted, not authenticated.
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        else:
            context.load_verify_locations(cadata=ca_pem)
            context.check_hostname = True
            context.verify_mode = ssl.CERT_REQUIRED
        self.context = context
        self.server_name = server_name
        self.verify = ca_pem is not None

    def __repr__(self) -> str:
        return f"UpstreamTLS(server_name={self.server_name!r}, verify={self.verify})"


_upstream: dict[tuple[str, str | None, bool], UpstreamTLS] = {}
_UPSTREAM_MAX: Final = 1024


def upstream_tls(server_name: str, ca_pem: str | None, http2: bool = False) -> UpstreamTLS:
    """The shared UpstreamTLS for this SNI name and CA, so pools carry over between snapshots.

    Raises ValueError when `ca_pem` holds no usable certificate.
    """
    key = (server_name, ca_pem, http2)
    found = _upstream.get(key)
    if found is None:
        try:
            found = UpstreamTLS(server_name, ca_pem, http2)
        except ssl.SSLError as exc:
            raise ValueError(f"invalid upstream CA bundle: {exc.reason or exc}") from None
        if len(_upstream) >= _UPSTREAM_MAX:
            _upstream.clear()
        _upstream[key] = found
    return found
