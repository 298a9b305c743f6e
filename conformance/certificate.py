"""Certificates for the TLS scenarios: generated before a scenario's Secrets are rendered, and
read back from the handshake so the runner can say which certificate the proxy presented."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conformance.scenario import Certificate, CertificateSpec


def generate(spec: CertificateSpec) -> Certificate:
    """A self-signed certificate (EC P-256, valid from an hour ago for a day) for `spec`."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, spec.cn)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(n) for n in spec.names]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return Certificate(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


@dataclass(frozen=True)
class PeerCertificate:
    """What the runner compares: the subject CN and the DNS SANs."""

    cn: str
    san: frozenset[str]


def describe(der: bytes) -> PeerCertificate:
    cert = x509.load_der_x509_certificate(der)
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = cns[0].value if cns else ""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        san = frozenset(ext.value.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        san = frozenset()
    return PeerCertificate(cn=cn if isinstance(cn, str) else cn.decode(), san=san)
