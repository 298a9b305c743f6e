"""Certificates for the TLS scenarios: generated before a scenario's Secrets are rendered, and
read back from the handshake so the runner can say which certificate the proxy presented; and
a CA with the server certificates it signs, for the HTTPS echo pods."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conformance.scenario import Certificate, CertificateSpec


def _builder(subject: str, issuer: str, public_key: ec.EllipticCurvePublicKey) -> Any:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
    )


def _pem(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Certificate:
    return Certificate(
        cert_pem=cert.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    return x509.SubjectAlternativeName([x509.DNSName(n) for n in names])


def generate(spec: CertificateSpec) -> Certificate:
    """A self-signed certificate (EC P-256, valid from an hour ago for a day) for `spec`."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = _builder(spec.cn, spec.cn, key.public_key())
    cert = builder.add_extension(_san(spec.names), critical=False).sign(key, hashes.SHA256())
    return _pem(cert, key)


def generate_ca(cn: str) -> Certificate:
    """A CA certificate that `issue` signs leaf certificates with."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = _builder(cn, cn, key.public_key())
    cert = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True).sign(
        key, hashes.SHA256()
    )
    return _pem(cert, key)


def issue(ca: Certificate, names: list[str]) -> Certificate:
    """A server certificate for the DNS `names` (CN: the first), signed by `ca`."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError("the CA key must be an EC key (made by generate_ca)")
    key = ec.generate_private_key(ec.SECP256R1())
    issuer = ca_cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    builder = _builder(names[0], str(issuer), key.public_key())
    cert = (
        builder.add_extension(_san(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    return _pem(cert, key)


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
