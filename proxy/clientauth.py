"""The client-certificate policy step (ingress-nginx's auth-tls-*): each request judged on what
its connection's TLS handshake found, and the ssl-client-* fields the pod is sent.

Data flow: `config.ClientCertificate` becomes a `VerifyClientCertificate`, built once per
snapshot (proxy/policy.py). The handshake side (proxy/tls.py, proxy/peercert.py) asked the
client for a certificate and left a `PeerCertificate` on the connection's `ClientContext`;
this step answers as nginx does (ngx_http_process_request, then the server's match-cn `if`):

- a certificate that did not verify: 400 (nginx's 495), except an unknown issuer with
  "optional_no_ca"; with "on", no certificate: 400 (nginx's 496); with `error_page`, both are
  a 302 to it instead (`error_page 495 496 = <url>`);
- `match_cn` not found in the subject DN (none without a certificate): 403;
- otherwise the pod is sent ssl-client-verify (SUCCESS, NONE, FAILED:<reason>),
  ssl-client-subject-dn, ssl-client-issuer-dn and, with `pass_certificate`, ssl-client-cert;
  the client's own fields of those names are removed (nginx's proxy_set_header), and an empty
  value is not sent.

A connection whose handshake was verified for another host's CA (the SNI named another host
than the request's Host) is answered 421, as nginx does; one that was not verified at all (no
SNI, another host's name, plain HTTP) counts as "no certificate" and never as verified.
"""

from __future__ import annotations

from typing import Final

from proxy.headers import ClientContext, RequestHead
from proxy.peercert import OPTIONAL_NO_CA_ERRORS, X509_V_OK, PeerCertificate, verification_key
from proxy.regex import HeaderPattern, compile_header_pattern
from proxy.replies import Answer
from proxy.steps import BOTH, RequestStep

CERTIFICATE_ERROR: Final = Answer(400, "ClientCertificateError")
NO_CERTIFICATE: Final = Answer(400, "ClientCertificateRequired")
CN_MISMATCH: Final = Answer(403, "ClientCertificateUnauthorized")
MISDIRECTED: Final = Answer(421, "MisdirectedRequest")
# The fields nginx sets for the pod; the client's own are never passed on.
CLIENT_FIELDS: Final = frozenset(
    {b"ssl-client-cert", b"ssl-client-verify", b"ssl-client-subject-dn", b"ssl-client-issuer-dn"}
)


class VerifyClientCertificate(RequestStep):
    """config.ClientCertificate (see the module docstring)."""

    __slots__ = ("error_answer", "key", "match_cn", "no_cert_answer", "none", "pass_cert", "verify")

    def __init__(
        self,
        ca_pem: str,
        verify: str,
        depth: int,
        error_page: str,
        pass_certificate: bool,
        match_cn: str,
        schemes: int = BOTH,
    ) -> None:
        super().__init__(schemes)
        self.verify = verify
        self.key = verification_key(ca_pem, verify, depth)
        self.pass_cert = pass_certificate
        self.match_cn: HeaderPattern | None = compile_header_pattern(match_cn) if match_cn else None
        self.error_answer = CERTIFICATE_ERROR
        self.no_cert_answer = NO_CERTIFICATE
        if error_page:
            location = b"Location: " + error_page.encode("ascii") + b"\r\n"
            self.error_answer = Answer(302, "ClientCertificateError", location)
            self.no_cert_answer = Answer(302, "ClientCertificateRequired", location)
        # A connection without verification: what nginx's variables hold then.
        self.none = PeerCertificate(self.key)

    def request(self, head: RequestHead, client: ClientContext) -> Answer | None:
        peer = client.certificate
        if peer is None:
            peer = self.none
        elif peer.key != self.key:
            if peer.presented:
                return MISDIRECTED
            peer = self.none
        if self.verify != "off":
            result = peer.result
            if result != X509_V_OK and not (
                self.verify == "optional_no_ca" and result in OPTIONAL_NO_CA_ERRORS
            ):
                return self.error_answer
            if self.verify == "on" and not peer.presented:
                return self.no_cert_answer
        if self.match_cn is not None and not self.match_cn.search(peer.subject):
            return CN_MISMATCH
        fields = b"ssl-client-verify: " + peer.verify + b"\r\n"
        if peer.subject:
            fields += b"ssl-client-subject-dn: " + peer.subject + b"\r\n"
        if peer.issuer:
            fields += b"ssl-client-issuer-dn: " + peer.issuer + b"\r\n"
        if self.pass_cert and peer.escaped:
            fields += b"ssl-client-cert: " + peer.escaped + b"\r\n"
        head.reshape(fields=fields, drop=CLIENT_FIELDS)
        return None
