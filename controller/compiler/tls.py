"""TLS Secrets -> validated certificates for the snapshot.

The compiler hands each Secret an Ingress names under `spec.tls` to `load_certificate`, which
checks it with `cryptography` (PEM parses, key matches the leaf certificate) and extracts the names
it covers; `check_validity` then applies the clock, and `validity_window` says how long that
answer holds (so the compiler knows when time alone changes its output). A failure is a reason
string that the compiler turns into a `SecretInvalid` problem; the proxy then uses its default
certificate for that host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

from controller.objects import TLS_SECRET_TYPE, Secret
from proxy.config import TLSCertificate

_SUPPORTED_KEYS = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)


@dataclass(frozen=True, slots=True)
class LoadedCertificate:
    certificate: TLSCertificate
    not_before: float  # Unix time


def _names(cert: x509.Certificate) -> tuple[str, ...]:
    """DNS names the certificate covers: SAN DNS names, the CN only when there is no SAN."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        names = san.value.get_values_for_type(x509.DNSName)
    else:
        names = [
            str(attr.value) for attr in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        ]
    return tuple(sorted({n.lower().rstrip(".") for n in names if n}))


def _public_der(key: object) -> bytes | None:
    public_key = getattr(key, "public_key", None)
    if public_key is None:
        return None
    pub = public_key()
    der: bytes = pub.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def load_certificate(secret: Secret | None, name: str) -> LoadedCertificate | str:
    """A validated certificate from a Secret, or the exact reason it cannot be used.

    Time-independent (so callers may cache it per Secret object); expiry is `check_validity`.
    """
    if secret is None:
        return f'secret "{name}" not found'
    if secret.type != TLS_SECRET_TYPE:
        return f'secret "{name}" has type {secret.type!r}, expected {TLS_SECRET_TYPE!r}'
    cert_pem = secret.data.get("tls.crt")
    key_pem = secret.data.get("tls.key")
    if not cert_pem:
        return f'secret "{name}" has no tls.crt'
    if not key_pem:
        return f'secret "{name}" has no tls.key'
    return load_pem_pair(cert_pem, key_pem, name, f'secret "{name}"')


def load_pem_pair(
    cert_pem: bytes, key_pem: bytes, name: str, source: str
) -> LoadedCertificate | str:
    """A validated certificate chain and key (PEM), or the exact reason they cannot be used.

    `source` names where they came from in messages (a Secret, or a pair of files).
    """
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError as exc:
        return f"{source}: tls.crt is not a PEM certificate ({exc})"
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        return f"{source}: tls.key is not an unencrypted PEM private key ({exc})"
    except Exception as exc:  # cryptography raises UnsupportedAlgorithm for odd keys
        return f"{source}: tls.key cannot be loaded ({exc})"
    if not isinstance(key, _SUPPORTED_KEYS):
        kind = (
            "DSA"
            if isinstance(key, dsa.DSAPrivateKey)
            else "Ed25519/Ed448"
            if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey)
            else type(key).__name__
        )
        return f"{source}: unsupported key type {kind} (RSA or EC expected)"
    leaf = chain[0]
    try:
        cert_key = _public_der(leaf)
    except Exception as exc:  # an unsupported public key algorithm in the certificate
        return f"{source}: certificate public key cannot be read ({exc})"
    if cert_key != _public_der(key):
        return f"{source}: tls.key does not match the certificate in tls.crt"
    try:
        cert_text = cert_pem.decode("ascii")
        key_text = key_pem.decode("ascii")
    except UnicodeDecodeError:
        return f"{source}: PEM data is not ASCII"
    return LoadedCertificate(
        certificate=TLSCertificate(
            name=name,
            cert_pem=cert_text,
            key_pem=key_text,
            hosts=_names(leaf),
            not_after=leaf.not_valid_after_utc.timestamp(),
        ),
        not_before=leaf.not_valid_before_utc.timestamp(),
    )


def load_ca_bundle(secret: Secret | None, name: str) -> tuple[str | None, str | None]:
    """(`ca.crt` PEM, None) of a `proxy-ssl-secret`, or (None, the exact reason)."""
    if secret is None:
        return None, f'secret "{name}" not found'
    data = secret.data.get("ca.crt")
    if not data:
        return None, f'secret "{name}" has no ca.crt'
    try:
        certificates = x509.load_pem_x509_certificates(data)
        text = data.decode("ascii")
    except ValueError as exc:  # UnicodeDecodeError is a ValueError too
        return None, f'secret "{name}": ca.crt is not a PEM certificate bundle ({exc})'
    if not certificates:
        return None, f'secret "{name}": ca.crt holds no certificate'
    return text, None


def check_validity(
    loaded: LoadedCertificate, now: datetime, source: str | None = None
) -> str | None:
    """None if the certificate is valid at `now`, else the reason (naming `source`, by
    default the Secret the certificate came from)."""
    ts = now.timestamp()
    cert = loaded.certificate
    source = f'secret "{cert.name}"' if source is None else source
    if ts > cert.not_after:
        expired = datetime.fromtimestamp(cert.not_after, UTC).isoformat()
        return f"{source}: certificate expired at {expired}"
    if ts < loaded.not_before:
        start = datetime.fromtimestamp(loaded.not_before, UTC).isoformat()
        return f"{source}: certificate not valid before {start}"
    return None


def validity_window(loaded: LoadedCertificate, now: datetime) -> tuple[float, float]:
    """The open interval of Unix times around `now` in which `check_validity` keeps giving the
    answer it gives at `now`: until `notBefore` for a certificate not valid yet, between
    `notBefore` and `notAfter` for a valid one, from `notAfter` on for an expired one.

    A result that checked certificates holds only inside the intersection of their windows;
    outside it (time passed a boundary, or the clock was stepped back over one) it must be
    compiled again."""
    ts = now.timestamp()
    not_before, not_after = loaded.not_before, loaded.certificate.not_after
    if ts < not_before:
        return (-math.inf, not_before)
    if ts > not_after:
        return (not_after, math.inf)
    return (not_before, not_after)


def covers(names: tuple[str, ...], host: str) -> bool:
    """Whether a certificate with these DNS names serves `host` (wildcards span one label)."""
    if host in names:
        return True
    if host.startswith("*."):
        return False
    label_end = host.find(".")
    return label_end > 0 and f"*{host[label_end:]}" in names
