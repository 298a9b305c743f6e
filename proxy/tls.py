"""TLS termination: one SSLContext per certificate, chosen by SNI, plus the default certificate.

A worker builds a `CertificateSet` from each snapshot (off the hot path) and the HTTPS listener's
context consults the current set in its SNI callback, so a renewed certificate is used for the
next handshake while open connections keep theirs. Private keys are handed to OpenSSL through an
anonymous in-memory file (`memfd`), never written to disk, and never appear in reprs or logs.

Security defaults: TLS 1.2+ (configurable to 1.3), the "intermediate" cipher list, no
compression, no renegotiation, ALPN `http/1.1`, session tickets (OpenSSL keeps their keys in
memory; a new set of contexts per snapshot rotates them).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from proxy.config import Snapshot, TLSCertificate

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


def server_context(certificate: TLSCertificate, min_version: str = "1.2") -> ssl.SSLContext:
    """A server SSLContext holding one certificate chain and key, with Portico's defaults."""
    if min_version not in _TLS_VERSIONS:
        raise ValueError(f"unsupported minimum TLS version {min_version!r}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _TLS_VERSIONS[min_version]
    context.set_ciphers(INTERMEDIATE_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    context.set_alpn_protocols(["http/1.1"])
    with (
        _memory_file(certificate.cert_pem.encode()) as cert_path,
        _memory_file(certificate.key_pem.encode()) as key_path,
    ):
        context.load_cert_chain(cert_path, key_path)
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

    def context_for(self, server_name: str | None) -> ssl.SSLContext:
        if not server_name:
            return self.default
        host = server_name.rstrip(".").lower()
        context = self.exact.get(host)
        if context is not None:
            return context
        _, _, parent = host.partition(".")
        return self.wildcard.get(parent, self.default)


def build_certificate_set(
    snapshot: Snapshot, default: TLSCertificate, min_version: str = "1.2"
) -> CertificateSet:
    """Contexts for every host an Ingress lists under `tls` with a certificate that covers it.

    The compiler only attaches a certificate to a host it covers; the check is repeated here so
    a bad snapshot can never serve a certificate for a name it does not hold.
    """
    by_name = {c.name: c for c in snapshot.certificates}
    contexts: dict[str, ssl.SSLContext] = {}

    def context(name: str) -> ssl.SSLContext:
        if name not in contexts:
            contexts[name] = server_context(by_name[name], min_version)
        return contexts[name]

    exact: dict[str, ssl.SSLContext] = {}
    wildcard: dict[str, ssl.SSLContext] = {}
    for vhost in snapshot.routes.virtual_hosts:
        name = vhost.tls_certificate
        if not vhost.host or name is None or name not in by_name:
            continue
        cert_hosts = by_name[name].hosts
        if vhost.host.startswith("*."):
            if vhost.host in cert_hosts:
                wildcard[vhost.host[2:]] = context(name)
        elif any(covers(pattern, vhost.host) for pattern in cert_hosts):
            exact[vhost.host] = context(name)
    return CertificateSet(exact, wildcard, server_context(default, min_version))


def listener_context(
    current: Callable[[], CertificateSet | None],
    default: TLSCertificate,
    min_version: str = "1.2",
) -> ssl.SSLContext:
    """The HTTPS listener's context: its SNI callback switches to the current set's choice.

    OpenSSL calls the callback for every ClientHello, with `server_name` None when the client
    sent no SNI, so the current set decides every handshake.
    """
    context = server_context(default, min_version)

    def pick(sock: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext) -> None:
        certificates = current()
        if certificates is not None:
            sock.context = certificates.context_for(server_name)

    context.sni_callback = pick
    return context
