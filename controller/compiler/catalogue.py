"""The ingress-nginx annotation catalogue: what Portico does with each annotation, as data.

Every annotation ingress-nginx documents on its annotations page (release v1.15.1), plus the few
its parsers read without documenting them, is one `Entry`: `supported` (Portico behaves the
same), `different` (supported, with a difference the entry names), `unsupported` (no effect yet:
what to use instead, or the Portico issue that adds it) or `refused` (snippets: the Ingress is
not served). A name under the prefix that is in no row is unknown (a typo, a removed annotation,
a ConfigMap key written as an annotation): `nearest` suggests the catalogued name meant.

Three readers keep to this one table: the compiler (`screening.py` turns it into problems and
the fail-closed decision), `portico compat-report`, and `docs/annotations.md`, which `markdown()`
generates (`portico docs annotations > docs/annotations.md`; a test fails when the file
differs). A test also keeps the `supported`/`different` rows equal to what
`annotations.py` parses, and the names equal to the list taken from ingress-nginx in
`tests/data/ingress-nginx-annotations.txt`.

`Entry` is not specific to annotations: the keys of the ingress-nginx controller ConfigMap
(`CONFIGMAP_KEYS`) use the same rows, read by `--nginx-configmap` (controller/configmap.py,
whose applied keys are exactly the `supported`/`different` rows: a test) and by
`portico compat-report --configmap`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Final, Literal

from controller.kinds import edit_distance, within_budget

NGINX_PREFIX: Final = "nginx.ingress.kubernetes.io/"
PORTICO_PREFIX: Final = "portico.dev/"

Status = Literal["supported", "different", "unsupported", "refused"]
STATUSES: Final[tuple[Status, ...]] = ("supported", "different", "unsupported", "refused")

# Categories in the order the documentation lists them.
CATEGORIES: Final = (
    "access-control",
    "snippets",
    "routing",
    "redirects",
    "tls",
    "upstream",
    "backend-tls",
    "timeouts",
    "buffering-and-limits",
    "load-balancing",
    "session-affinity",
    "canary",
    "rate-limiting",
    "cors",
    "error-pages",
    "observability",
    "modsecurity",
    "mirroring",
    "fastcgi",
)

# The Portico issues that add what is not supported yet.
ISSUE_PROTECTION: Final = 18  # auth, client certificates, rate limits, CORS, affinity, canary

FAIL_CLOSED_NOTE: Final = (
    "Until Portico enforces it, every request for the routes of an Ingress carrying it is "
    "answered 403 by Portico (fail closed; reason `AccessControlNotEnforced` in the access log) "
    "and never reaches its pods. --serve-without-access-control serves it anyway, unprotected."
)


@dataclass(frozen=True, slots=True)
class Entry:
    """One ingress-nginx annotation (or ConfigMap key) and what Portico does with it."""

    name: str  # without the prefix
    status: Status
    category: str
    # supported: what Portico does; different: the difference and why; unsupported: what to use
    # instead; refused: why.
    detail: str
    access_control: bool = False
    # The Portico equivalent: the same name under portico.dev/ for supported annotations, or a
    # flag that does the same for every Ingress.
    portico: str = ""
    issue: int | None = None  # the Portico issue that will support it
    documented: bool = True  # False: ingress-nginx reads it but its annotations page omits it

    @property
    def fails_closed(self) -> bool:
        """An Ingress carrying it is not served (some values excepted: see screening.py)."""
        return self.access_control and self.status == "unsupported"

    def describe(self, *, note: bool = True) -> str:
        """The detail as users read it: the plan appended, and the fail-closed rule unless
        `note` is False (the documentation states it once)."""
        text = self.detail
        if self.status == "unsupported":
            if self.issue is not None:
                text += f" Planned in Portico issue {self.issue}."
            if self.fails_closed and note:
                text += " " + FAIL_CLOSED_NOTE
        return text


def _supported(name: str, category: str, detail: str, *, status: Status = "supported") -> Entry:
    return Entry(name, status, category, detail, portico=PORTICO_PREFIX + name)


def _different(name: str, category: str, detail: str) -> Entry:
    return _supported(name, category, detail, status="different")


def _unsupported(
    name: str,
    category: str,
    detail: str,
    issue: int | None = None,
    *,
    access: bool = False,
    portico: str = "",
    documented: bool = True,
) -> Entry:
    return Entry(name, "unsupported", category, detail, access, portico, issue, documented)


def _enforced(entry: Entry) -> Entry:
    """A supported access-control row: an invalid value fails closed (screening.py)."""
    return replace(entry, access_control=True)


def _checked(name: str, detail: str, *, status: Status = "supported", extra: str = "") -> Entry:
    """A supported access-control annotation: it stays access control (an unreadable value
    fails closed)."""
    return Entry(
        name,
        status,
        "access-control",
        detail + extra,
        access_control=True,
        portico=PORTICO_PREFIX + name,
    )


def _client_tls(name: str, status: Status, detail: str) -> Entry:
    """A client-certificate annotation (auth-tls-*): supported, access control."""
    return _checked(name, detail, status=status)


_AUTH_INVALID = (
    "An auth-* value that does not read denies the routes (503, InvalidExternalAuth), "
    "where ingress-nginx ignores some (auth-signin, ...)."
)


def _refused(name: str, detail: str) -> Entry:
    return Entry(
        name,
        "refused",
        "snippets",
        detail + " Portico never runs nginx configuration text, so the Ingress carrying it is "
        "refused as a whole (none of its routes are served): a snippet often holds access rules "
        "such as `deny all;`, and serving without them could expose what they protect. "
        "ingress-nginx also rejects snippets unless `allow-snippet-annotations` is on.",
        access_control=name == "auth-snippet",
    )


_HTTPS_REDIRECT = (
    "Plain-HTTP requests get a 308 to https:// with the request's path and query kept as they "
    "are; ingress-nginx drops a trailing `/` from the target (`/` goes to `https://host`) and "
    "never redirects `/.well-known/acme-challenge/` (both listed with the defaults)."
)

_URL_REDIRECT = (
    "The URL must be http:// or https:// with a host, of the characters ingress-nginx accepts "
    "there (letters, digits, `-._~/:,?&=`); an empty value is no redirect. Another value is an "
    "InvalidAnnotation problem and the routes answer 503 (`InvalidRedirect`) rather than "
    "forward to the pods (ingress-nginx refuses the whole Ingress for other characters and "
    "forwards when the scheme is not http(s))."
)

_ZERO_TIMEOUT = (
    "`0` is an invalid value, reported, and the default applies (nginx would time out at "
    "once: no working Ingress uses it)."
)

_SOURCE_RANGES = (
    "The address checked is the client's as nginx's realip module finds it: the peer (or the "
    "PROXY protocol's source address with --proxy-protocol); for a peer in --trusted-proxies, "
    "X-Forwarded-For read from the right, past trusted addresses. A value that is not a list of "
    "networks fails closed: every request is answered 503, as ingress-nginx denies the location. "
    "--allow-source-ranges and --deny-source-ranges give the lists of Ingresses without them."
)

_ENTRIES: Final[tuple[Entry, ...]] = (
    # ---- access control ---------------------------------------------------------------------
    _enforced(
        _different(
            "auth-type",
            "access-control",
            "`basic`: every request needs `Authorization: Basic` credentials of a user of "
            "auth-secret whose password matches its htpasswd hash (bcrypt `$2a$`/`$2b$`/`$2y$`, "
            "`$apr1$`, `$1$`, `$5$`, `$6$`, DES crypt, `{SHA}`, `{SSHA}`, `{PLAIN}`, as nginx and "
            "its C library check them, compared in constant time); others get 401 with "
            '`WWW-Authenticate: Basic realm="<auth-realm>"`, and the Authorization field is not '
            "sent to the pods (as ingress-nginx clears it). Results are cached per worker, so "
            "bcrypt is not paid on every request. Difference: `digest` (nginx's auth_digest) is "
            "not implemented: it is an InvalidAnnotation problem and the routes answer 503 (fail "
            "closed); any other value too. Without auth-type the other auth annotations do "
            "nothing, as in ingress-nginx.",
        )
    ),
    _enforced(
        _supported(
            "auth-secret",
            "access-control",
            "The Secret with the users of auth-type: `name` in the Ingress's namespace or "
            "`namespace/name`. A Secret in another namespace (ingress-nginx's default "
            "allow-cross-namespace-resources false), a missing one, or an auth-file Secret "
            "without an `auth` key locks the routes: 503 (`AuthSecretUnavailable` / "
            "`InvalidAuth`) and a SecretInvalid problem, never served open. A Secret without any "
            "user Portico can check answers 401 to every request (as nginx), with a problem.",
        )
    ),
    _enforced(
        _different(
            "auth-secret-type",
            "access-control",
            "`auth-file` (default): the Secret's `auth` key is an htpasswd file (`user:hash` "
            "lines). `auth-map`: one key per user, the value its hash. Difference: in an auth-map, "
            "only values with a scheme prefix (bcrypt, `$apr1$`, `$1$`, `$5$`, `$6$`, `{SHA}`, "
            "`{SSHA}`) are read, because Portico keeps no other Secret data in memory; a DES or "
            "`{PLAIN}` entry there never matches (use auth-file for those).",
        )
    ),
    _enforced(
        _supported(
            "auth-realm",
            "access-control",
            'The realm of the 401 challenge (`WWW-Authenticate: Basic realm="..."`); letters, '
            "digits, spaces and `-._~/:`, as ingress-nginx validates it; another value fails "
            "closed (503). Default: empty.",
        )
    ),
    _checked(
        "auth-url",
        "External authentication: each request is first asked about to this URL (the "
        "oauth2-proxy pattern), without its body, with the client's fields and X-Original-URL, "
        "X-Original-Method, X-Auth-Request-Redirect, X-Sent-From, X-Real-IP, X-Forwarded-For. "
        "2xx lets it through; 401 answers 401 (or redirects to auth-signin); 403 answers 403; "
        "any other status, a connect failure or a timeout (the proxy-wide upstream connect and "
        "read timeouts) answers 500, never passes. The URL may hold $host, $http_host, "
        "$scheme, $pass_access_scheme, $request_uri, $escaped_request_uri and $request_method; "
        "an HTTPS "
        "auth service's certificate is not verified (nginx's default). " + _AUTH_INVALID,
    ),
    _checked(
        "auth-method",
        "The method of the auth-url request (GET without it, as nginx's subrequests); with it, "
        "X-Original-URI and X-Scheme are sent too. " + _AUTH_INVALID,
    ),
    _checked(
        "auth-signin",
        "A request auth-url answers 401 is redirected (302) here, with the original URL in the "
        "`rd` parameter (auth-signin-redirect-param) unless the URL already sets it, and "
        "auth-url's Set-Cookie. May hold the variables auth-url may. " + _AUTH_INVALID,
    ),
    _checked(
        "auth-signin-redirect-param",
        "The query parameter of auth-signin carrying the original URL (`rd`). " + _AUTH_INVALID,
    ),
    _checked(
        "auth-response-headers",
        "Fields of auth-url's 2xx answer sent to the pod, replacing the client's fields of "
        "those names (removed when auth-url sends none, so a client cannot supply them). "
        + _AUTH_INVALID,
    ),
    _checked(
        "auth-request-redirect",
        "The X-Auth-Request-Redirect value sent to auth-url (the request target without it). "
        + _AUTH_INVALID,
    ),
    _checked(
        "auth-proxy-set-headers",
        'A ConfigMap ("namespace/name") of fields sent to auth-url; values are sent as '
        "written (an entry naming an nginx variable is a problem and is not sent); a missing "
        "ConfigMap denies the routes (503). " + _AUTH_INVALID,
    ),
    _checked(
        "auth-cache-key",
        "Caches auth-url's answers (per worker) under this key, literal text and $remote_user, "
        "$http_authorization, $http_<name>, $cookie_<name>, $host, $request_uri, $uri, "
        "$remote_addr, $scheme; other variables are invalid. " + _AUTH_INVALID,
    ),
    _checked(
        "auth-cache-duration",
        "How long auth-url's answers are cached per status, with auth-cache-key "
        "(`200 202 401 5m` by default; entries separated by commas). " + _AUTH_INVALID,
    ),
    _checked(
        "auth-always-set-cookie",
        "auth-url's Set-Cookie goes with every response, not only 2xx/3xx ones. " + _AUTH_INVALID,
    ),
    _checked(
        "auth-keepalive",
        "Keep-alive connections to auth-url (0, the default: one connection per request).",
        status="different",
        extra=" Portico keeps every idle connection for auth-keepalive-timeout rather than at "
        "most this many, and keeps them with HTTP/2 clients too.",
    ),
    _checked(
        "auth-keepalive-share-vars",
        "Validated; Portico's auth request is not an nginx subrequest and has no variables "
        "to share, which is what `false` (the default) gives.",
    ),
    _checked(
        "auth-keepalive-requests",
        "Requests per keep-alive connection to auth-url.",
        status="different",
        extra=" Validated only: Portico reuses a connection until it is idle for "
        "auth-keepalive-timeout or the auth service closes it.",
    ),
    _checked(
        "auth-keepalive-timeout",
        "Seconds an idle keep-alive connection to auth-url is kept (60).",
    ),
    _checked(
        "enable-global-auth",
        '"false" keeps the ConfigMap\'s global-auth-url off this Ingress; an Ingress with '
        "auth-url uses its own.",
    ),
    _checked(
        "satisfy",
        "`any`: the access checks (source ranges, auth-url, basic authentication) are "
        "alternatives: one that lets the request in suffices, and when all refuse a 401 (or "
        "its auth-signin redirect) wins over a 403; an auth service failure still answers 500. "
        "`all` (default): each must. Another value is reported and `all` applies.",
    ),
    _client_tls(
        "auth-tls-secret",
        "different",
        "Client certificates on the HTTPS listener: the hosts of the Ingress ask for one in the "
        'TLS handshake and verify it against the Secret\'s `ca.crt` ("namespace/name", or a '
        "name in the Ingress's namespace; another namespace is refused, as ingress-nginx's "
        "allow-cross-namespace-resources default). As ingress-nginx, the first Ingress of a "
        "host with it sets it for every rule of the host. A Secret that cannot be used makes "
        "the host answer 403 (never unverified). Different: while any host asks for client "
        "certificates, the HTTPS listener resumes no TLS sessions (a resumed session could "
        "carry another host's verification); a request whose SNI was another host verified "
        "with another CA is answered 421, one on plain HTTP (ssl-redirect off) counts as "
        "without a certificate (ingress-nginx serves it unchecked).",
    ),
    _client_tls(
        "auth-tls-verify-client",
        "supported",
        "`on` (default): a request without a valid certificate is answered 400; `optional`: a "
        "certificate, if sent, must verify; `optional_no_ca`: an unknown or self-signed issuer "
        "is let through (ssl-client-verify says FAILED); `off`: none is asked for. An invalid "
        "value makes the routes answer 503 (ingress-nginx falls back to `on`).",
    ),
    _client_tls(
        "auth-tls-verify-depth",
        "supported",
        "The longest chain from the client certificate to the CA (default 1: signed by the CA "
        "itself); a longer one fails verification (400).",
    ),
    _client_tls(
        "auth-tls-error-page",
        "different",
        "A request answered 400 for its certificate (missing or not verified) is redirected "
        "there (302) instead. Different: only an http:// or https:// URL; a path or a named "
        "location (internal redirects in nginx) is an invalid value and the routes answer 503.",
    ),
    _client_tls(
        "auth-tls-pass-certificate-to-upstream",
        "supported",
        '"true": the pod is sent `ssl-client-cert`, the client certificate as URL-encoded '
        "PEM (nginx's $ssl_client_escaped_cert). With auth-tls-secret the pod always gets "
        "`ssl-client-verify` (SUCCESS, NONE, FAILED:<reason>), `ssl-client-subject-dn` and "
        "`ssl-client-issuer-dn` (RFC 4514); fields of those names sent by the client are "
        "removed.",
    ),
    _client_tls(
        "auth-tls-match-cn",
        "different",
        '"CN=" and a regular expression, searched (case-sensitive) in the certificate\'s '
        "subject DN; no match (or no certificate) is a 403. Different: the expression is RE2 "
        "(no backreferences or lookaround: an invalid value, and the routes answer 503).",
    ),
    Entry(
        "allowlist-source-range",
        "supported",
        "access-control",
        "Client networks (comma-separated CIDRs or addresses, IPv4 and IPv6) allowed to reach "
        "the Ingress; others get 403. " + _SOURCE_RANGES,
        access_control=True,
        portico=PORTICO_PREFIX + "allowlist-source-range",
        documented=False,
    ),
    Entry(
        "whitelist-source-range",
        "supported",
        "access-control",
        "The older spelling of allowlist-source-range, which ingress-nginx still reads; "
        "allowlist-source-range wins when both are given. " + _SOURCE_RANGES,
        access_control=True,
        portico=PORTICO_PREFIX + "whitelist-source-range",
    ),
    Entry(
        "denylist-source-range",
        "supported",
        "access-control",
        "Client networks refused with 403; checked before the allow list, so a denied address "
        "is refused even when allowed. " + _SOURCE_RANGES,
        access_control=True,
        portico=PORTICO_PREFIX + "denylist-source-range",
    ),
    # ---- snippets ---------------------------------------------------------------------------
    _refused("configuration-snippet", "nginx directives added to each location of the Ingress."),
    _refused("server-snippet", "nginx directives added to the server block of the host."),
    _refused("stream-snippet", "nginx directives added to the stream (TCP/UDP) block."),
    _refused("auth-snippet", "nginx directives added to the auth-url location."),
    _refused("modsecurity-snippet", "ModSecurity rules added to the location."),
    # ---- routing ----------------------------------------------------------------------------
    _different(
        "use-regex",
        "routing",
        '"true": every path of the host, from every Ingress, is a case-insensitive regular '
        'expression matched at the start of the path (ingress-nginx\'s `~* "^path"`: an Exact '
        "path then matches as a prefix, a Prefix `/foo` matches `/foobar`), tried longest first "
        "(then in reverse order of the path text), the first match wins. Regex paths are "
        "ImplementationSpecific. Different: the engine is RE2 (linear time, whatever the "
        "pattern), so backreferences and lookaround are an InvalidPath problem, as is a pattern "
        "over 1024 characters or 256 KiB of compiled program; paths are matched undecoded "
        "(nginx matches the decoded, normalized path).",
    ),
    _different(
        "rewrite-target",
        "routing",
        "The path the pod is sent: `$1`..`$9` are the captures of the path's expression "
        "(`$0` the whole match), the query follows; implies use-regex for the host. The client's "
        "path stays in the access log. Different: only captures, no nginx variables (`$host`: "
        "InvalidAnnotation); a target must start with `/` or a capture (nginx makes one "
        "starting with `http://` a redirect); a result not starting with `/` is answered 500.",
    ),
    _different(
        "app-root",
        "routing",
        "A request for `/` on the Ingress's hosts, whichever rule takes it, is redirected (302) "
        "to this path on the same scheme and Host, without the query. Different: a `$` (nginx "
        "variable) is InvalidAnnotation; a `/` that no rule, default backend or global default "
        "takes is not redirected (404).",
    ),
    _supported(
        "x-forwarded-prefix",
        "routing",
        "With rewrite-target (and only then, as ingress-nginx), X-Forwarded-Prefix with this "
        "value (captures allowed) replaces the client's; empty sends none.",
    ),
    _different(
        "server-alias",
        "routing",
        "Comma-separated host names served exactly as the Ingress's rule hosts: every rule of "
        "each such host (from any Ingress), as ingress-nginx adds them to that host's "
        "`server_name`. As there, the first Ingress (oldest) with aliases for a host gives them, "
        "and an alias that is a rule host or another host's alias is ignored (Portico reports an "
        "`AliasConflict` problem); an alias is served with the host's certificate when it covers "
        "the alias, else with none (and then not redirected to HTTPS). Difference: names are DNS "
        "names or one-label wildcards (`*.example.com`); nginx's regular-expression server names "
        "(`~^...`) are an InvalidAnnotation problem.",
    ),
    _supported(
        "default-backend",
        "error-pages",
        "A Service of the Ingress's namespace (its first port, as ingress-nginx) answers the "
        "requests of rules whose Service has no endpoints (or is missing), with X-Code: 503 "
        "and the X-Namespace, X-Ingress-Name, X-Service-Name, X-Service-Port, X-Request-ID "
        "fields, and serves the Ingress's custom-http-errors. A missing Service is a problem "
        "on the Ingress. spec.defaultBackend of the Ingress still covers unmatched paths.",
    ),
    # ---- redirects --------------------------------------------------------------------------
    _different(
        "ssl-redirect",
        "redirects",
        '"false" stops the HTTPS redirect of a TLS host; the default redirects. ' + _HTTPS_REDIRECT,
    ),
    _different(
        "force-ssl-redirect",
        "redirects",
        '"true" redirects plain-HTTP requests to HTTPS even for hosts without TLS. '
        + _HTTPS_REDIRECT,
    ),
    _supported(
        "preserve-trailing-slash",
        "redirects",
        '"true": HTTPS redirects keep the target\'s trailing `/` (by default it is dropped, as '
        "ingress-nginx does).",
    ),
    _different(
        "permanent-redirect",
        "redirects",
        "Every request of the Ingress's routes, on HTTP and HTTPS, is answered 301 (or "
        "permanent-redirect-code) with this URL as Location, exactly as written: the request's "
        "path and query are not appended. It is answered before the HTTPS redirect and before "
        "access checks (source ranges, unenforced authentication), as nginx's `return` runs "
        "first. temporal-redirect wins when both are set. " + _URL_REDIRECT,
    ),
    _different(
        "permanent-redirect-code",
        "redirects",
        "Status of permanent-redirect: 301, 302, 303, 307 or 308. Any other value is an "
        "InvalidAnnotation problem and 301 is used (ingress-nginx uses 301 silently outside "
        "300-308 and refuses the Ingress for a value that is not a number; 300, 304, 305 and 306 "
        "make nginx answer without a Location, the URL as body).",
    ),
    _different(
        "temporal-redirect",
        "redirects",
        "As permanent-redirect, with 302 (or temporal-redirect-code); it wins over "
        "permanent-redirect when both are set. " + _URL_REDIRECT,
    ),
    _different(
        "temporal-redirect-code",
        "redirects",
        "Status of temporal-redirect: 301, 302, 303 or 307 (ingress-nginx's range stops at "
        "307: 308 gives 302). Any other value is an InvalidAnnotation problem and 302 is used "
        "(ingress-nginx: silently outside 300-307, the Ingress refused for a value that is not "
        "a number).",
    ),
    _different(
        "from-to-www-redirect",
        "redirects",
        '"true": `www.<host>` answers every request with a 308 to `<host>`, or `<host>` to '
        "`www.<host>` for a host written with `www.`, for each named rule host of the Ingress "
        "(not wildcards): the same scheme, the request's path and query kept, one trailing `/` "
        "dropped (`/` gives `http://host`). Nothing is added when the other name is a rule "
        "host of any Ingress. Over HTTPS the other name gets the host's certificate when it "
        "covers that name, else the default certificate (as ingress-nginx). The Location has "
        "no port where ingress-nginx writes its listener's (`http://host:80/a`; Portico's "
        "listener is 8080 behind the Service), and X-Forwarded-Proto/-Port of trusted proxies "
        "are not used for it.",
    ),
    _unsupported(
        "use-port-in-redirects",
        "redirects",
        "Puts the listener's port in redirects; Portico leaves the port out, as ingress-nginx "
        "does without it.",
        documented=False,
    ),
    _unsupported(
        "relative-redirects",
        "redirects",
        "Relative Location headers in redirects nginx makes itself.",
        documented=False,
    ),
    # ---- TLS --------------------------------------------------------------------------------
    _different(
        "ssl-passthrough",
        "tls",
        "With `--enable-ssl-passthrough` (off by default, as in ingress-nginx; without it the "
        "annotation is a `PassthroughNotApplied` problem and the host is terminated like any "
        "other), HTTPS connections whose ClientHello names one of the Ingress's hosts go to a "
        "pod of the host's `/` path (else its defaultBackend) unterminated: the pod's "
        "certificate is the one the client sees, and no HTTP annotation (headers, body size, "
        "timeouts, ...) applies to them. The "
        "server name is matched exactly (wildcard and host-less rules are not passed through, "
        "as in ingress-nginx); connections without SNI, or for other hosts, are terminated by "
        "Portico; plain HTTP for the host is served by its rules as usual. Differences: "
        "Portico dials the ready pod endpoints (round robin, as for HTTP) where ingress-nginx "
        "dials the Service's cluster IP; the host's source ranges are checked on the client "
        "address and access control Portico does not enforce closes the connections (fail "
        "closed), where ingress-nginx lets every annotation go; a ClientHello is awaited up "
        "to the client header timeout and one that cannot be read (or larger than 16 KiB) is "
        "closed, where ingress-nginx reads once and gives what it cannot parse to nginx.",
    ),
    _unsupported(
        "ssl-ciphers",
        "tls",
        "Portico uses OpenSSL's default ciphers for TLS 1.2 and 1.3 on every host.",
        portico="--tls-min-version",
    ),
    _unsupported(
        "ssl-prefer-server-ciphers",
        "tls",
        "Portico uses OpenSSL's cipher preference on every host.",
    ),
    # ---- upstream ---------------------------------------------------------------------------
    _different(
        "backend-protocol",
        "upstream",
        "`HTTP` and `HTTPS` as ingress-nginx. `GRPC` (HTTP/2 cleartext to the pods) and `GRPCS` "
        "(TLS with ALPN h2, verified by the proxy-ssl-* annotations as `HTTPS` is): gRPC calls "
        "from HTTP/2 clients are relayed stream by stream over multiplexed connections (all "
        "four call types, trailers, resets both ways, `grpc-timeout`); proxy-read-timeout is "
        "the pod's longest silence (grpc_read_timeout) and proxy-body-size counts the whole "
        "request stream (client_max_body_size), as in ingress-nginx; Portico's own answers to "
        "gRPC requests are gRPC statuses (no route 12, unavailable 14, timeout 4; an external "
        "auth refusal 16 or 7, the auth-url check runs before the call as for any request). "
        "Difference: an HTTP/1.1 request to a GRPC route is answered 502 and not forwarded. "
        "`AUTO_HTTP` and `FCGI` are not supported: such a value is an InvalidAnnotation problem "
        "and the pods are reached over plain HTTP.",
    ),
    _different(
        "upstream-vhost",
        "upstream",
        "The Host header sent to the pod (`host[:port]`); X-Forwarded-Host keeps the client's, "
        "as in ingress-nginx. Difference: nginx variables (`$host`, ...) are not expanded: such "
        "a value is an InvalidAnnotation problem and the pod gets the client's Host.",
    ),
    _supported(
        "service-upstream",
        "upstream",
        '"true": the Service\'s cluster IP and port are the one endpoint (kube-proxy balances '
        "over the pods), so, as in ingress-nginx, Portico neither balances nor retries across "
        "pods. A headless Service falls back to its endpoints (a NoClusterIP problem: "
        "ingress-nginx logs an error) and an ExternalName Service to its name. The default is "
        "the ConfigMap's service-upstream (--service-upstream).",
    ),
    _different(
        "connection-proxy-header",
        "upstream",
        '"close" or "keep-alive": the Connection header sent to the pod; after "close" Portico '
        "does not reuse the connection. Difference: an upgrade request (WebSocket) keeps its "
        "`Connection: upgrade`, which ingress-nginx replaces, breaking the upgrade.",
    ),
    _supported(
        "custom-headers",
        "upstream",
        '"namespace/name" of a ConfigMap whose entries are response headers set on every '
        "response of the Ingress (replacing the pod's), each name listed in the ConfigMap's "
        "global-allowed-response-headers (--allowed-response-headers). As in ingress-nginx, a "
        "missing ConfigMap, an invalid name or value, or a name not allowed answers every "
        "request 503 (CustomHeadersInvalid problem); Portico also refuses the fields it sets "
        "itself (Server, Strict-Transport-Security, framing and hop-by-hop ones).",
    ),
    _different(
        "proxy-redirect-from",
        "upstream",
        "nginx's proxy_redirect, with proxy-redirect-to: a pod's `Location` starting with this "
        "text (case-sensitive) has it replaced, and so has the URL after `url=` in its "
        "`Refresh`; a rewritten Location starting with `/` is made absolute with the "
        "request's scheme and host, without port (ingress-nginx's port_in_redirect off). "
        "`off` and `default` (the default) rewrite nothing, as on ingress-nginx, where "
        "`default` only matches its internal upstream name; one half without the other is "
        "reported, as it rewrites nothing there either. Different: a regular expression (a "
        "leading `~`) is an invalid value, not a pattern.",
    ),
    _supported(
        "proxy-redirect-to",
        "upstream",
        "The replacement text of proxy-redirect-from (one word, no spaces); `off` rewrites "
        "nothing.",
    ),
    _different(
        "proxy-cookie-domain",
        "upstream",
        "nginx's proxy_cookie_domain: `\"from to\"` replaces a `Domain` attribute of the pod's "
        "`Set-Cookie` fields equal to `from` (case-insensitive; a leading `.` is ignored on "
        "both and kept in the cookie); `off` (the default) rewrites nothing. Different: a "
        "regular expression (a leading `~`) is an invalid value, not a pattern.",
    ),
    _different(
        "proxy-cookie-path",
        "upstream",
        'nginx\'s proxy_cookie_path: `"from to"` replaces the `from` a `Path` attribute of the '
        "pod's `Set-Cookie` fields starts with (case-sensitive) by `to`; `off` (the default) "
        "rewrites nothing. Different: a regular expression (a leading `~`) is an invalid "
        "value, not a pattern.",
    ),
    _unsupported(
        "proxy-http-version",
        "upstream",
        "Portico always speaks HTTP/1.1 to pods (ingress-nginx's default).",
    ),
    # ---- backend TLS --------------------------------------------------------------------------
    _different(
        "proxy-ssl-secret",
        "backend-tls",
        "Only the Secret's `ca.crt` is used, to verify the pods, and verification is on as soon "
        "as the Secret is given (ingress-nginx verifies only with proxy-ssl-verify: on): "
        "Portico does not present the Secret's tls.crt/tls.key as a client certificate. A "
        "Secret that cannot be read makes its routes answer 503, never unverified.",
    ),
    _different(
        "proxy-ssl-verify",
        "backend-tls",
        '"off" turns verification off. Without the annotation Portico verifies whenever '
        "proxy-ssl-secret is given, where ingress-nginx's default is off.",
    ),
    _different(
        "proxy-ssl-name",
        "backend-tls",
        "The name the pods' certificate is verified against. Portico always sends it as SNI "
        "(ingress-nginx only with proxy-ssl-server-name: on); without it the name is "
        "<service>.<namespace>.svc.",
    ),
    _unsupported(
        "proxy-ssl-server-name",
        "backend-tls",
        "Portico always sends SNI to HTTPS pods: proxy-ssl-name, else <service>.<namespace>.svc.",
    ),
    _unsupported(
        "proxy-ssl-verify-depth",
        "backend-tls",
        "Portico verifies the whole chain of the pods' certificate.",
    ),
    _unsupported(
        "proxy-ssl-ciphers", "backend-tls", "Portico uses OpenSSL's default ciphers to pods."
    ),
    _unsupported(
        "proxy-ssl-protocols", "backend-tls", "Portico speaks TLS 1.2 or 1.3 to HTTPS pods."
    ),
    # ---- timeouts ---------------------------------------------------------------------------
    _supported(
        "proxy-connect-timeout",
        "timeouts",
        "Whole seconds to connect to a pod (`10s` is invalid, as ingress-nginx ignores it); "
        "default --upstream-connect-timeout, 5 as ingress-nginx's. " + _ZERO_TIMEOUT,
    ),
    _supported(
        "proxy-read-timeout",
        "timeouts",
        "Whole seconds to wait for the response head and between two reads of its body; "
        "default --upstream-read-timeout, 60 as ingress-nginx's. " + _ZERO_TIMEOUT,
    ),
    _supported(
        "proxy-send-timeout",
        "timeouts",
        "Whole seconds allowed between two writes of the request body; default "
        "--upstream-send-timeout, 60 as ingress-nginx's. " + _ZERO_TIMEOUT,
    ),
    _different(
        "proxy-next-upstream",
        "timeouts",
        "When a request goes to another pod, nginx's conditions separated by spaces: `error` "
        "(connecting failed, or the connection was lost before the response head), `timeout` "
        "(the connect, send or response-head timeout passed), `invalid_header` (a response head "
        "that does not parse, or larger than proxy-buffer-size), `http_500`, `http_502`, "
        "`http_503`, `http_504`, `http_403`, `http_404`, `http_429` (that response is dropped "
        "for another attempt; the last attempt's reaches the client as it is), "
        "`non_idempotent` (POST, LOCK and PATCH are resent too once sent; without it they go "
        "elsewhere only when connecting failed), `off` (never, not even when connecting "
        "failed). A request is resent only while Portico holds all of it (a body up to 64 KiB, "
        "or whole with proxy-request-buffering) and never once any of its response reached the "
        "client; out of attempts, a timeout is answered 504 and other failures 502. Differences: "
        "every attempt goes to a pod not tried yet for the request (ingress-nginx's balancer "
        "may pick the same pod again), so a backend with fewer pods than tries gets fewer "
        "attempts; a pooled connection the pod had closed before answering is resent on a "
        "fresh one whatever the conditions (not a failure of the pod). Without the annotation "
        "(and without -tries and -timeout) Portico retries another pod when connecting fails "
        "(--upstream-max-attempts) and, for idempotent methods, when the connection closed "
        "before any answer; it answers a response-head timeout 504 where ingress-nginx's "
        "default `error timeout` tries another pod.",
    ),
    _supported(
        "proxy-next-upstream-tries",
        "timeouts",
        "Attempts in all, the first included (`0`: no limit but the number of pods); default "
        "--upstream-max-attempts (3, as ingress-nginx). Given without proxy-next-upstream, the "
        "conditions are ingress-nginx's default, `error timeout`.",
    ),
    _different(
        "proxy-next-upstream-timeout",
        "timeouts",
        "Seconds past which no new attempt starts (`0`, the default: no limit). Given without "
        "proxy-next-upstream, the conditions are ingress-nginx's default, `error timeout`. "
        "Difference: counted from the request's arrival, where nginx counts from its first "
        "attempt (the same unless proxy-request-buffering holds a slow upload first).",
    ),
    # ---- buffering and limits -----------------------------------------------------------------
    _supported(
        "proxy-body-size",
        "buffering-and-limits",
        "Largest request body (`0` unlimited, `k`/`m`/`g` suffixes of 1024); 413 beyond. "
        "Without it, or with an invalid value, --max-body-bytes applies: 1m by default, as "
        "ingress-nginx's proxy-body-size.",
    ),
    _different(
        "proxy-request-buffering",
        "buffering-and-limits",
        "`on` reads the whole request body before a pod is chosen and keeps it, in memory, for "
        "a resend (proxy-next-upstream can then retry a request whose body was sent), up to "
        "the route's body limit (proxy-body-size, --max-body-bytes; 413 beyond); on a route "
        "without a body limit, past 1 MiB the rest is streamed and the request can no longer "
        "be resent. `off` streams. Difference: Portico's default is `off` (ingress-nginx's is "
        "`on`): a body streamed is never held whole in the proxy's memory, and the pod starts "
        "on it at once instead of after the upload.",
    ),
    _different(
        "proxy-buffering",
        "buffering-and-limits",
        "Accepted (`on` or `off`) with no effect: Portico streams the pod's response to the "
        "client and reads the pod only as fast as the client takes it, which is ingress-nginx's "
        "default (`off`). With `on`, nginx reads the whole response into its buffers (and a "
        "temporary file) first and frees the pod from a slow client; Portico keeps the pod's "
        "connection until the client has taken the response.",
    ),
    _different(
        "proxy-buffer-size",
        "buffering-and-limits",
        "Largest response head (status line and header fields) Portico takes from a pod, an "
        "nginx size (`8k`, `1m`); a larger one is answered 502 (or goes to another pod with "
        "`invalid_header` in proxy-next-upstream), as nginx's 'upstream sent too big header'. "
        "Difference: without it Portico takes heads up to 64 KiB, where ingress-nginx's "
        "default is 4k; it sizes no response body buffer (responses are streamed).",
    ),
    _unsupported(
        "proxy-buffers-number", "buffering-and-limits", "nginx response buffers: no equivalent."
    ),
    _unsupported(
        "proxy-busy-buffers-size", "buffering-and-limits", "nginx response buffers: no equivalent."
    ),
    _different(
        "proxy-max-temp-file-size",
        "buffering-and-limits",
        "Accepted (an nginx size: `0`, `1024m`, `1g`) with no effect: it bounds the temporary "
        "file nginx writes a buffered response to; Portico writes none (responses are "
        "streamed, see proxy-buffering).",
    ),
    _different(
        "client-body-buffer-size",
        "buffering-and-limits",
        "Accepted (an nginx size: `1000`, `1k`, `1m`) with no effect: nginx keeps that much of "
        "a request body in memory and writes the rest to a temporary file; Portico writes no "
        "files: it streams bodies, or holds them whole in memory with proxy-request-buffering "
        "(bounded by the body limit).",
    ),
    # ---- load balancing -----------------------------------------------------------------------
    _different(
        "load-balance",
        "load-balancing",
        "`round_robin` as ingress-nginx. `ewma` selects Portico's least-request balancer "
        "(fewest requests in flight, weighed by latency), which serves the same purpose by "
        "another formula; `least_request` names it directly.",
    ),
    _different(
        "upstream-hash-by",
        "load-balancing",
        "Consistent hashing: the request's key (nginx variables and text, like `$request_uri` or "
        "`$host$request_uri`) is hashed onto a ring of the pods, so a key keeps its pod and a pod "
        "that leaves moves only its own keys. Variables: `$request_uri`, `$uri`, `$args`, "
        "`$host`, `$remote_addr`, `$scheme`, `$request_method`, `$http_NAME`, `$cookie_NAME`, "
        "`$arg_NAME`; another variable is an invalid value (the annotation is ignored). "
        "Differences: the ring's hash is not nginx's (keys land on other pods than with "
        "ingress-nginx); `$uri` is the path as sent (nginx's is decoded); `$remote_addr` is the "
        "connection's (or PROXY protocol's) address; it applies to the Ingress's routes, not "
        "to every Ingress sharing the Service.",
    ),
    _supported(
        "upstream-hash-by-subset",
        "load-balancing",
        "With upstream-hash-by: the ring holds groups of pods (in address order, the last "
        "group filled up with the first pods) and a request goes to a pod of its key's group "
        "at random.",
    ),
    _supported(
        "upstream-hash-by-subset-size",
        "load-balancing",
        "Pods per group of upstream-hash-by-subset (default 3; 0 is 3).",
    ),
    # ---- session affinity ---------------------------------------------------------------------
    _different(
        "affinity",
        "session-affinity",
        "`cookie`: sticky sessions. A request with a valid affinity cookie goes to its pod; "
        "one without gets a pod and, on the pod's response, the cookie (`<key>|<backend "
        "hash>`, HttpOnly). A pod that leaves moves only its own sessions. Differences: the "
        "settings apply to the Ingress's routes, not to every Ingress sharing the Service "
        "(ingress-nginx keeps one per backend); a retry after a failure goes to another pod "
        "(see session-cookie-change-on-failure); the cookie is not sent on Portico's own "
        "answers (502, 504).",
    ),
    _supported(
        "affinity-mode",
        "session-affinity",
        "`balanced` (default): the cookie holds a random key placed on a consistent-hash ring "
        "of the pods, so scaling up moves some sessions to the new pods; `persistent`: the "
        "cookie names its pod, and a session moves only when its pod leaves.",
    ),
    _supported(
        "affinity-canary-behavior",
        "session-affinity",
        "On a canary Ingress paired with a main rule that has `affinity: cookie`: `sticky` "
        "(default) gives the canary's Service the main rule's sticky sessions (same cookie and "
        "attributes, naming the canary's backend), so a request whose cookie names the canary "
        "stays on it whatever the canary rules say; `legacy`: the canary's pods get no "
        "affinity cookie and each request without a main cookie is decided by the canary "
        "rules. Either way a cookie naming the main backend keeps the request there, before "
        "the header, cookie and weight rules (ingress-nginx's balancer). Any other value is "
        "an InvalidAnnotation problem and `sticky` applies.",
    ),
    _supported(
        "session-cookie-name",
        "session-affinity",
        "The affinity cookie's name (default `INGRESSCOOKIE`): letters, digits, `-._~`.",
    ),
    _different(
        "session-cookie-path",
        "session-affinity",
        "The affinity cookie's Path; without it, the rule's path. Difference: a regex rule "
        "(use-regex) without it gets `Path=/` (ingress-nginx writes the expression).",
    ),
    _supported(
        "session-cookie-domain", "session-affinity", "The affinity cookie's Domain (none without)."
    ),
    _supported(
        "session-cookie-max-age",
        "session-affinity",
        "The affinity cookie's Max-Age, whole seconds as written (none without: a session cookie).",
    ),
    _supported(
        "session-cookie-expires",
        "session-affinity",
        "The affinity cookie's Expires: now plus these seconds, in nginx's cookie time format.",
    ),
    _supported(
        "session-cookie-samesite",
        "session-affinity",
        "The affinity cookie's SameSite: `None`, `Lax` or `Strict` (any case).",
    ),
    _supported(
        "session-cookie-secure",
        "session-affinity",
        "`true`: the affinity cookie is Secure on plain HTTP too (it always is on HTTPS).",
    ),
    _different(
        "session-cookie-change-on-failure",
        "session-affinity",
        "`true`: a request whose pod failed and that went to another pod gets a cookie for "
        "that pod. Difference: without it, the retry still goes to another pod (Portico never "
        "retries a pod that failed the request; ingress-nginx retries the cookie's pod), and "
        "the cookie keeps naming the first one.",
    ),
    _supported(
        "session-cookie-conditional-samesite-none",
        "session-affinity",
        "`true`: no SameSite=None for the user agents ingress-nginx leaves it out for (Chrome "
        "40-69, iOS 12, Safari on macOS 10.14).",
    ),
    # ---- canary -------------------------------------------------------------------------------
    _different(
        "canary",
        "canary",
        '`"true"` makes the Ingress a canary: each of its paths pairs with the main (non-canary) '
        "Ingress's rule of the same host, path and pathType, whose requests then go to the "
        "canary's Service by the canary rules below (header, then cookie, then weight); the "
        "canary serves nothing on its own: no hosts, no TLS, and its other annotations are "
        "ignored (the main rule's apply to the canary's requests too). A canary path without "
        "a main rule is not served (a `CanaryUnpaired` problem; ingress-nginx answers 404 "
        "there too); a canary defaultBackend pairs with the global default backend; the first "
        "canary of a rule (oldest) wins. Without it (or with `false`) canary rules are an "
        "InvalidAnnotation problem and the Ingress is an ordinary one, competing for the same "
        "host and path (a PathConflict problem; the older Ingress wins). Difference: "
        "ingress-nginx attaches the canary to the main Ingress's Service backend, so every "
        "path using that Service (even of other hosts) gets it; Portico attaches it to the "
        "paired rules only. A canary whose Service has no endpoints (or does not exist) is "
        "never chosen, as ingress-nginx has no balancer for it. The canary Ingress's "
        "load-balance applies to its backend. A canary carrying access control Portico does "
        "not enforce yet is not used (fail closed: its requests stay on the main Ingress). "
        "The canary Ingress's upstream-hash-by chooses its pods (the main rule's does not), "
        "unless the main rule's sticky sessions go with it (affinity-canary-behavior); its own "
        "affinity annotations are ignored, as ingress-nginx never applies them to a canary's "
        "Service.",
    ),
    _supported(
        "canary-by-header",
        "canary",
        "The request field choosing the canary (case-insensitive, `_` read as `-`, as nginx's "
        "`$http_` variables): `always` sends the request to the canary, `never` to the main "
        "backend; any other value, or no field, goes on to the cookie and weight rules.",
    ),
    _supported(
        "canary-by-header-value",
        "canary",
        "With canary-by-header: the exact value choosing the canary (then `always` and `never` "
        "mean nothing special); another value goes on to the cookie and weight rules.",
    ),
    _different(
        "canary-by-header-pattern",
        "canary",
        "With canary-by-header and without canary-by-header-value: a regular expression "
        "searched in the field's value (case-sensitive) choosing the canary; no match goes on "
        "to the cookie and weight rules. Difference: RE2 rather than PCRE (linear time, no "
        "backreferences or lookaround); a pattern RE2 cannot compile is an InvalidAnnotation "
        "problem and, as ingress-nginx does when its regex fails, a request carrying the field "
        "stays on the main backend.",
    ),
    _supported(
        "canary-by-cookie",
        "canary",
        "The cookie choosing the canary (name case-insensitive, as nginx's `$cookie_`): "
        "`always` sends the request to the canary, `never` to the main backend; any other "
        "value goes on to the weight rule. Evaluated after canary-by-header.",
    ),
    _supported(
        "canary-weight",
        "canary",
        "The share of the remaining requests sent to the canary, drawn at random per request: "
        "weight out of canary-weight-total; 0 (the default) none, the total or more all.",
    ),
    _supported(
        "canary-weight-total",
        "canary",
        "What canary-weight is out of: 100 by default; as ingress-nginx's balancer, a total "
        "below 100 counts as 100.",
    ),
    # ---- rate limiting ------------------------------------------------------------------------
    _supported(
        "limit-rps",
        "rate-limiting",
        "Requests per second accepted from one client address (the real address, as for "
        "source ranges: PROXY protocol, trusted X-Forwarded-For), for the whole Portico replica "
        "across its worker processes, counted per Ingress like ingress-nginx's zones: a "
        "fresh client gets 1 + limit-rps x limit-burst-multiplier requests at once, then "
        "limit-rps a second (nginx's limit_req with burst and nodelay, the same leaky bucket); "
        "the others are answered with the ConfigMap's limit-req-status-code (503). A value "
        "that does not read answers 503 (InvalidRateLimit) rather than serve without it.",
    ),
    _supported(
        "limit-rpm",
        "rate-limiting",
        "Requests per minute accepted from one client address, as limit-rps (burst of "
        "limit-rpm x limit-burst-multiplier); both may be given, and a request must pass both.",
    ),
    _supported(
        "limit-connections",
        "rate-limiting",
        "Requests in progress at once from one client address across the replica's worker "
        "processes (nginx's limit_conn counts requests, not idle keep-alive connections); the "
        "others are answered with the ConfigMap's limit-conn-status-code (503).",
    ),
    _supported(
        "limit-burst-multiplier",
        "rate-limiting",
        "Burst size of limit-rps and limit-rpm, as a multiple of the limit (default 5).",
    ),
    Entry(
        "limit-allowlist",
        "supported",
        "rate-limiting",
        "Client networks (comma-separated CIDRs or addresses) that no limit of the Ingress "
        "applies to.",
        portico=PORTICO_PREFIX + "limit-allowlist",
        documented=False,
    ),
    _supported(
        "limit-whitelist",
        "rate-limiting",
        "The older spelling of limit-allowlist (limit-allowlist wins when both are given).",
    ),
    _supported(
        "limit-rate",
        "rate-limiting",
        "Kilobytes (1024 bytes) per second at which each proxied response body is sent to the "
        "client, per request as nginx's limit_rate (two requests at once get twice the rate); "
        "0 or less: no limit. As nginx, the allowance counts from the start of the request with "
        "one second's worth ahead, so a response of N kilobytes at R takes about N/R - 1 "
        "seconds. Portico stops reading the pod while the client is ahead of the schedule, with "
        "proxy-buffering on or off (memory stays bounded, the pod is slowed too). A value that "
        "does not read is ignored, as ingress-nginx falls back to the ConfigMap's limit-rate "
        "(--limit-rate; 0 by default: no limit).",
    ),
    _supported(
        "limit-rate-after",
        "rate-limiting",
        "Kilobytes of each response body sent at full speed before limit-rate applies (nginx's "
        "limit_rate_after; the response head is not counted). Nothing without limit-rate. "
        "Without it (or unreadable), the ConfigMap's limit-rate-after (--limit-rate-after).",
    ),
    # ---- CORS ---------------------------------------------------------------------------------
    _supported(
        "enable-cors",
        "cors",
        '"true" turns CORS on for the Ingress\'s routes: an OPTIONS request from an allowed '
        "origin is answered 204 by Portico, before redirects and access checks as ingress-nginx "
        "answers it, and every response to an allowed origin carries the Access-Control-* "
        "fields, replacing the pod's; a request from another origin gets none (the pod's own "
        "are kept, and its OPTIONS goes to the pod). No Vary: Origin, as ingress-nginx. Not "
        "on routes that refuse every request.",
    ),
    _different(
        "cors-allow-origin",
        "cors",
        'Origins allowed, comma-separated: "*" (the default, also for an empty value: every '
        'request gets Access-Control-Allow-Origin: *), "null", scheme://host[:port], with '
        'one wildcard label ("https://*.example.com"). Matched case-insensitively and echoed '
        "as sent; an entry without a scheme is skipped, as ingress-nginx does. Different: an "
        "origin is matched whole (ingress-nginx's regex is anchored only at its end, so "
        '"xhttps://a.com" matches "https://a.com"), and a value that does not read allows '
        "no origin where ingress-nginx would allow every one (and reports InvalidAnnotation).",
    ),
    _supported(
        "cors-allow-methods",
        "cors",
        'Access-Control-Allow-Methods, as written (letters, separated by ","/" "/", "); '
        'default "GET, PUT, POST, DELETE, PATCH, OPTIONS"; an invalid value takes the default.',
    ),
    _supported(
        "cors-allow-headers",
        "cors",
        "Access-Control-Allow-Headers, as written (letters, digits, -, _, commas, spaces); "
        "default ingress-nginx's list (DNT,Keep-Alive,User-Agent,...,Authorization); an "
        "invalid value takes the default.",
    ),
    _supported(
        "cors-expose-headers",
        "cors",
        "Access-Control-Expose-Headers, as written (names or *, comma-separated); none by "
        "default or for an invalid value.",
    ),
    _different(
        "cors-allow-credentials",
        "cors",
        'Access-Control-Allow-Credentials: true unless "false" (default true). Different: a '
        "value that does not read allows no credentials, where ingress-nginx takes true.",
    ),
    _supported(
        "cors-max-age",
        "cors",
        "Access-Control-Max-Age in seconds (default 1728000; an invalid value takes it).",
    ),
    # ---- error pages --------------------------------------------------------------------------
    _different(
        "custom-http-errors",
        "error-pages",
        "Pod answers (and Portico's own 502, 503, 504, refusals) with these statuses "
        '(comma-separated, 400 to 599) are replaced by the default backend\'s answer to "/", '
        "status included, with X-Code, X-Format, X-Original-URI, X-Namespace, X-Ingress-Name, "
        "X-Service-Name, X-Service-Port, X-Request-ID; the pod's connection is closed, its "
        "body unread. The default backend is the default-backend annotation's, else the "
        "Ingress with only a defaultBackend (Portico has no --default-backend-service). "
        "Differences: the error page is asked with GET (HEAD for HEAD) and without the "
        "request body, where nginx keeps the method and sends the body again; without any "
        "default backend, or when it has no endpoint, or while the request body is still "
        "being read, the original answer is relayed unchanged (ingress-nginx answers 404 "
        "from its internal server).",
    ),
    Entry(
        "disable-proxy-intercept-errors",
        "supported",
        "error-pages",
        '"true": the pods\' answers are relayed even with custom-http-errors; the '
        "default-backend annotation still answers for Services without endpoints.",
        portico=PORTICO_PREFIX + "disable-proxy-intercept-errors",
        documented=False,
    ),
    # ---- observability ------------------------------------------------------------------------
    _supported(
        "enable-access-log",
        "observability",
        '`"false"` leaves the Ingress\'s requests out of the access log (their metrics stay); '
        '`"true"`, the default, cannot turn on a log that --access-log (or the ConfigMap\'s '
        "disable-access-log) turned off.",
    ),
    _unsupported("enable-rewrite-log", "observability", "nginx's rewrite log: no equivalent."),
    _unsupported("enable-opentelemetry", "observability", "OpenTelemetry tracing: not in Portico."),
    _unsupported(
        "opentelemetry-trust-incoming-span",
        "observability",
        "OpenTelemetry tracing: not in Portico.",
    ),
    _unsupported(
        "opentelemetry-operation-name",
        "observability",
        "OpenTelemetry tracing: not in Portico.",
        documented=False,
    ),
    _unsupported(
        "http2-push-preload",
        "tls",
        "HTTP/2 server push: Portico speaks HTTP/1.1 to clients, so there is nothing to push.",
    ),
    # ---- ModSecurity --------------------------------------------------------------------------
    _unsupported(
        "enable-modsecurity",
        "modsecurity",
        "ModSecurity web application firewall: not in Portico; put a WAF in front of it.",
    ),
    _unsupported(
        "enable-owasp-core-rules",
        "modsecurity",
        "ModSecurity's OWASP rules: not in Portico; put a WAF in front of it.",
    ),
    _unsupported("modsecurity-transaction-id", "modsecurity", "ModSecurity: not in Portico."),
    # ---- mirroring ----------------------------------------------------------------------------
    _unsupported("mirror-target", "mirroring", "Copies each request to this URL: not in Portico."),
    _unsupported("mirror-request-body", "mirroring", "Whether mirrored requests carry the body."),
    _unsupported("mirror-host", "mirroring", "Host header of mirrored requests."),
    # ---- FastCGI ------------------------------------------------------------------------------
    _unsupported(
        "fastcgi-index",
        "fastcgi",
        "FastCGI (backend-protocol FCGI): Portico speaks HTTP only.",
        documented=False,
    ),
    _unsupported(
        "fastcgi-params-configmap",
        "fastcgi",
        "FastCGI (backend-protocol FCGI): Portico speaks HTTP only.",
        documented=False,
    ),
)

ANNOTATIONS: Final[Mapping[str, Entry]] = {e.name: e for e in _ENTRIES}

# Names under the prefix that ingress-nginx v1.15 does not read but that real Ingresses carry:
# removed annotations and ConfigMap keys written as annotations. They are unknown (no effect on
# ingress-nginx either); this is the advice given instead of a spelling suggestion.
RETIRED: Final[Mapping[str, str]] = {
    "secure-backends": 'removed from ingress-nginx long ago; use backend-protocol: "HTTPS"',
    "session-cookie-hash": "removed from ingress-nginx in 0.24; it has no replacement",
    "forwarded-for-header": "this is a key of the ingress-nginx ConfigMap, not an annotation",
    "add-base-url": "removed from ingress-nginx in 0.22; it has no replacement",
    "base-url-scheme": "removed from ingress-nginx in 0.22; it has no replacement",
    "secure-verify-ca-secret": "removed from ingress-nginx; use proxy-ssl-secret",
}

# ---- the ingress-nginx controller ConfigMap ----------------------------------------------------
# `--nginx-configmap namespace/name` reads it (controller/configmap.py): the `supported` and
# `different` rows are the keys it applies as defaults of Portico's settings (`portico` names
# the flag; a flag or PORTICO_* variable given explicitly wins); the `unsupported` rows have no
# effect (an `UnsupportedConfigMapKey` problem says what to do instead), unless their value is
# what Portico does anyway (controller/configmap.py decides that per value). A documented key
# with no row (`CONFIGMAP_NAMES`) has no effect and no advice; any other key is unknown.


_GLOBAL_SOURCE_RANGES = (
    "Checked against the client address as the annotations are. A value that is not a list of "
    "networks fails closed: those Ingresses answer every request 503 (InvalidSourceRange), as "
    "one whose own annotation cannot be read."
)


def _key(
    name: str,
    status: Status,
    category: str,
    detail: str,
    portico: str = "",
    *,
    access: bool = False,
    issue: int | None = None,
) -> Entry:
    return Entry(name, status, category, detail, access, portico, issue)


# The auth-url options the ConfigMap takes for global-auth-url, each as global-<name>
# (ingress-nginx's GlobalExternalAuth); controller/compiler/extauth.py parses them.
GLOBAL_AUTH_OPTIONS: Final = (
    "auth-method",
    "auth-signin",
    "auth-signin-redirect-param",
    "auth-response-headers",
    "auth-request-redirect",
    "auth-cache-key",
    "auth-cache-duration",
    "auth-always-set-cookie",
)

CONFIGMAP_KEYS: Final[Mapping[str, Entry]] = {
    e.name: e
    for e in (
        _key(
            "proxy-body-size",
            "supported",
            "buffering-and-limits",
            "The request body limit of every route without a proxy-body-size annotation; 413 "
            'beyond it ("0": unlimited).',
            "--max-body-bytes",
        ),
        *(
            _key(
                f"proxy-{name}-timeout",
                "supported",
                "timeouts",
                f"Seconds {what}, for every route without a proxy-{name}-timeout annotation "
                "(a whole number, as ingress-nginx reads it).",
                f"--upstream-{name}-timeout",
            )
            for name, what in (
                ("connect", "to connect to a pod"),
                ("read", "to wait for a response head, and between two reads of its body"),
                ("send", "allowed between two writes of a request body to a pod"),
            )
        ),
        _key(
            "keep-alive",
            "supported",
            "timeouts",
            'Seconds an idle client connection is kept open ("0": closed after each response).',
            "--keepalive-timeout",
        ),
        _key(
            "client-header-timeout",
            "supported",
            "timeouts",
            "Seconds from a request's first byte to the end of its head.",
            "--client-header-timeout",
        ),
        _key(
            "client-body-timeout",
            "supported",
            "timeouts",
            "Seconds allowed between two reads of a request body.",
            "--client-body-timeout",
        ),
        _key(
            "upstream-keepalive-timeout",
            "supported",
            "upstream",
            "Seconds an idle pooled connection to a pod is kept.",
            "--upstream-keepalive-timeout",
        ),
        _key(
            "hsts",
            "different",
            "tls",
            "Turns the Strict-Transport-Security header on or off; which responses carry it "
            "differs (see the HSTS row of the defaults in docs/annotations.md).",
            "--hsts",
        ),
        _key("hsts-max-age", "supported", "tls", "The header's max-age.", "--hsts-max-age"),
        _key(
            "hsts-include-subdomains",
            "supported",
            "tls",
            "Adds includeSubDomains to the header.",
            "--hsts-include-subdomains",
        ),
        _key(
            "hsts-preload",
            "unsupported",
            "tls",
            'Portico\'s Strict-Transport-Security header has no preload attribute ("false" is '
            "what Portico does).",
        ),
        _key(
            "ssl-protocols",
            "different",
            "tls",
            "The oldest version listed becomes --tls-min-version (TLSv1.2 or TLSv1.3); Portico "
            "accepts every newer version as well, and never TLSv1 or TLSv1.1.",
            "--tls-min-version",
        ),
        _key(
            "use-http2",
            "supported",
            "tls",
            "HTTP/2 on the HTTPS listener (ALPN h2, then http/1.1); false offers HTTP/1.1 only. "
            "Pods are spoken to in HTTP/1.1 either way, except on GRPC/GRPCS routes "
            "(backend-protocol).",
            "--http2",
        ),
        _key(
            "http2-max-requests",
            "supported",
            "tls",
            "Streams served on one HTTP/2 client connection before a graceful GOAWAY (the streams "
            "open finish; the client opens a new connection).",
            "--http2-max-requests",
        ),
        _key(
            "http2-max-concurrent-streams",
            "supported",
            "tls",
            "Streams a client may have open at once on one HTTP/2 connection (announced as "
            "SETTINGS_MAX_CONCURRENT_STREAMS; a stream beyond it is refused).",
            "--http2-max-concurrent-streams",
        ),
        _key(
            "ssl-redirect",
            "supported",
            "redirects",
            "Whether plain-HTTP requests for hosts with TLS are redirected (308) to HTTPS, for "
            "every Ingress without an ssl-redirect annotation.",
            "--ssl-redirect",
        ),
        _key(
            "force-ssl-redirect",
            "unsupported",
            "redirects",
            "Set the force-ssl-redirect annotation on the Ingresses that need it "
            '("false" is what Portico does).',
        ),
        _key(
            "use-forwarded-headers",
            "supported",
            "upstream",
            "Trust the X-Forwarded-* headers of the clients in proxy-real-ip-cidr (default "
            "0.0.0.0/0: every IPv4 client, as ingress-nginx): sets --trusted-proxies.",
            "--trusted-proxies",
        ),
        _key(
            "proxy-real-ip-cidr",
            "supported",
            "upstream",
            "The networks use-forwarded-headers trusts (--trusted-proxies); without it, no "
            "effect, as in ingress-nginx.",
            "--trusted-proxies",
        ),
        _key(
            "compute-full-forwarded-for",
            "unsupported",
            "upstream",
            "Portico keeps the X-Forwarded-For of a trusted client and appends the client's "
            "address (this key true with use-forwarded-headers), and replaces that of any other "
            'client (false without it); other combinations are not available ("the same as '
            'use-forwarded-headers" is what Portico does).',
        ),
        _key(
            "forwarded-for-header",
            "unsupported",
            "upstream",
            "Portico reads client addresses from X-Forwarded-For only (that value is what "
            "Portico does).",
        ),
        _key(
            "use-proxy-protocol",
            "supported",
            "upstream",
            "The HTTP and HTTPS listeners read a PROXY protocol header (v1 or v2) first, and its "
            "source address is the client's; a connection without one is closed. Like "
            "ingress-nginx, that address is the peer use-forwarded-headers and "
            "proxy-real-ip-cidr then judge.",
            "--proxy-protocol",
        ),
        _key(
            "service-upstream",
            "supported",
            "upstream",
            "The default of the service-upstream annotation: each Service's cluster IP and port "
            "instead of its endpoints.",
            "--service-upstream",
        ),
        _key(
            "proxy-set-headers",
            "different",
            "upstream",
            '"namespace/name" of a ConfigMap whose entries are request headers sent to every '
            "pod, replacing the client's field of that name (an empty value removes it), as "
            "nginx's proxy_set_header. Difference: values are sent as written; an entry naming "
            "an nginx variable (`$remote_addr`, ...), or setting Host, a framing or hop-by-hop "
            "field, is not sent (InvalidHeader problem on that ConfigMap).",
            "--proxy-set-headers",
        ),
        _key(
            "global-allowed-response-headers",
            "supported",
            "upstream",
            "The response headers a custom-headers ConfigMap may set (names as written); any "
            "other makes that Ingress answer 503.",
            "--allowed-response-headers",
        ),
        _key(
            "disable-access-log",
            "supported",
            "observability",
            "Turns the access log off.",
            "--access-log",
        ),
        _key(
            "enable-access-log-for-default-backend",
            "unsupported",
            "observability",
            'Portico logs every request, matched or not, with --access-log on ("true" is what '
            "Portico does).",
            "--access-log",
        ),
        _key(
            "worker-processes",
            "different",
            "buffering-and-limits",
            'Worker processes ("auto": one per CPU of the pod\'s CPU quota, capped by what its '
            "memory limit holds).",
            "--workers",
        ),
        _key(
            "worker-shutdown-timeout",
            "unsupported",
            "timeouts",
            "Set --drain-timeout (chart: controller.drainTimeout).",
            "--drain-timeout",
        ),
        _key(
            "proxy-next-upstream-tries",
            "unsupported",
            "upstream",
            "Set --upstream-max-attempts; Portico tries another pod only when connecting fails.",
            "--upstream-max-attempts",
        ),
        _key(
            "custom-http-errors",
            "unsupported",
            "error-pages",
            "The global list is not applied: set the custom-http-errors annotation (with "
            "default-backend) on the Ingresses that need it (an empty list is what Portico "
            "does).",
        ),
        _key(
            "limit-req-status-code",
            "supported",
            "rate-limiting",
            "Status of the requests limit-rps and limit-rpm refuse (400 to 599; 503 default).",
            "--limit-req-status-code",
        ),
        _key(
            "limit-conn-status-code",
            "supported",
            "rate-limiting",
            "Status of the requests limit-connections refuses (400 to 599; 503 default).",
            "--limit-conn-status-code",
        ),
        _key(
            "limit-rate",
            "supported",
            "rate-limiting",
            "Kilobytes per second of each proxied response, for Ingresses without the "
            "limit-rate annotation (0: no limit).",
            "--limit-rate",
        ),
        _key(
            "limit-rate-after",
            "supported",
            "rate-limiting",
            "Kilobytes of each response sent before limit-rate applies, for Ingresses without "
            "the limit-rate-after annotation.",
            "--limit-rate-after",
        ),
        _key(
            "allow-snippet-annotations",
            "unsupported",
            "snippets",
            "Portico never runs snippets: an Ingress carrying one is refused whatever this "
            'key says ("false" is what Portico does).',
        ),
        _key(
            "whitelist-source-range",
            "supported",
            "access-control",
            "Client networks (comma-separated CIDRs or addresses) allowed to reach every Ingress "
            "without its own allowlist-source-range or whitelist-source-range annotation; others "
            "get 403. " + _GLOBAL_SOURCE_RANGES,
            "--allow-source-ranges",
            access=True,
        ),
        _key(
            "denylist-source-range",
            "supported",
            "access-control",
            "Client networks refused (403) by every Ingress without its own "
            "denylist-source-range annotation. " + _GLOBAL_SOURCE_RANGES,
            "--deny-source-ranges",
            access=True,
        ),
        _key(
            "global-auth-url",
            "supported",
            "access-control",
            "External authentication (as the auth-url annotation) of every Ingress without its "
            'own auth-url and without enable-global-auth: "false". With the keys below, as '
            "the annotations of the same names; a value that does not read denies those "
            "Ingresses (503, InvalidExternalAuth).",
            access=True,
        ),
        *(
            _key(
                "global-" + name,
                "supported",
                "access-control",
                f"The {name} of global-auth-url.",
                access=True,
            )
            for name in GLOBAL_AUTH_OPTIONS
        ),
        *(
            _key(name, "unsupported", "access-control", text, access=True)
            for name, text in (
                ("block-cidrs", "Client ranges refused everywhere."),
                ("block-user-agents", "User agents refused everywhere."),
                ("block-referers", "Referers refused everywhere."),
            )
        ),
    )
}

# Every key ingress-nginx documents for its ConfigMap (configmap.md of v1.15.1: its table and its
# sections; tests/data/ingress-nginx-configmap-keys.txt keeps the list with its source). A key in
# none of these is unknown: a typo, or not an ingress-nginx key at all.
_CONFIGMAP_NAMES_TEXT: Final = """
access-log-params access-log-path add-headers allow-backend-server-header
allow-cross-namespace-resources allow-snippet-annotations annotation-value-word-blocklist
annotations-risk-level bind-address block-cidrs block-referers block-user-agents brotli-level
brotli-min-length brotli-types client-body-buffer-size client-body-timeout
client-header-buffer-size client-header-timeout compute-full-forwarded-for custom-http-errors
debug-connections default-type denylist-source-range disable-access-log disable-ipv6
disable-ipv6-dns enable-access-log-for-default-backend enable-aio-write enable-brotli
enable-modsecurity enable-multi-accept enable-ocsp enable-opentelemetry
enable-owasp-modsecurity-crs enable-real-ip enable-serial-reloads enable-syslog
enable-underscores-in-headers error-log-level error-log-path force-ssl-redirect
forwarded-for-header forwarded-for-proxy-protocol-header generate-request-id
geoip2-autoreload-in-minutes global-allowed-response-headers global-auth-always-set-cookie
global-auth-cache-duration global-auth-cache-key global-auth-method global-auth-request-redirect
global-auth-response-headers global-auth-signin global-auth-signin-redirect-param
global-auth-snippet global-auth-url grpc-buffer-size-kb gzip-disable gzip-level gzip-min-length
gzip-types hide-headers hsts hsts-include-subdomains hsts-max-age hsts-preload
http-access-log-path http-redirect-code http-snippet http2-max-concurrent-streams
http2-max-field-size http2-max-header-size http2-max-requests ignore-invalid-headers
jaeger-baggage-header jaeger-collector-host jaeger-collector-port jaeger-debug-header
jaeger-endpoint jaeger-propagation-format jaeger-sampler-host jaeger-sampler-param
jaeger-sampler-port jaeger-sampler-type jaeger-service-name jaeger-trace-baggage-header-prefix
jaeger-trace-context-header-name jaeger-tracer-baggage-header-prefix keep-alive
keep-alive-requests large-client-header-buffers limit-conn-status-code limit-conn-zone-variable
limit-rate limit-rate-after limit-req-status-code load-balance location-snippet
log-format-escape-json log-format-escape-none log-format-stream log-format-upstream
lua-shared-dicts main-snippet map-hash-bucket-size max-worker-connections max-worker-open-files
modsecurity-snippet nginx-status-ipv4-whitelist nginx-status-ipv6-whitelist no-auth-locations
no-tls-redirect-locations opentelemetry-config opentelemetry-operation-name
opentelemetry-trust-incoming-span otel-max-export-batch-size otel-max-queuesize otel-sampler
otel-sampler-parent-based otel-sampler-ratio otel-schedule-delay-millis otel-service-name
otlp-collector-host otlp-collector-port proxy-add-original-uri-header proxy-body-size
proxy-buffer-size proxy-buffering proxy-buffers-number proxy-busy-buffers-size
proxy-connect-timeout proxy-cookie-domain proxy-cookie-path proxy-headers-hash-bucket-size
proxy-headers-hash-max-size proxy-next-upstream proxy-next-upstream-timeout
proxy-next-upstream-tries proxy-protocol-header-timeout proxy-read-timeout proxy-real-ip-cidr
proxy-redirect-from proxy-request-buffering proxy-send-timeout proxy-set-headers
proxy-ssl-location-only proxy-stream-next-upstream proxy-stream-next-upstream-timeout
proxy-stream-next-upstream-tries proxy-stream-responses proxy-stream-timeout relative-redirects
retry-non-idempotent reuse-port server-name-hash-bucket-size server-name-hash-max-size
server-snippet server-tokens service-upstream skip-access-log-urls ssl-buffer-size ssl-ciphers
ssl-dh-param ssl-early-data ssl-ecdh-curve ssl-protocols ssl-redirect ssl-reject-handshake
ssl-session-cache ssl-session-cache-size ssl-session-ticket-key ssl-session-tickets
ssl-session-timeout stream-access-log-path stream-snippet strict-validate-path-type syslog-host
syslog-port upstream-keepalive-connections upstream-keepalive-requests upstream-keepalive-time
upstream-keepalive-timeout use-forwarded-headers use-geoip use-geoip2 use-gzip use-http2
use-proxy-protocol variables-hash-bucket-size variables-hash-max-size whitelist-source-range
worker-cpu-affinity worker-processes worker-shutdown-timeout
"""
CONFIGMAP_NAMES: Final = frozenset(_CONFIGMAP_NAMES_TEXT.split())

CONFIGMAP_NO_EQUIVALENT: Final = (
    "Portico has no equivalent of this ingress-nginx setting; the key has no effect."
)
CONFIGMAP_UNENFORCED: Final = (
    "This is access control for every Ingress, which Portico does not enforce yet: every "
    "request for every Ingress is answered 403 by Portico (fail closed; reason "
    "`AccessControlNotEnforced`) unless --serve-without-access-control, which serves them all "
    "without it."
)


@dataclass(frozen=True, slots=True)
class DefaultBehaviour:
    """Something Portico does without any annotation, compared with ingress-nginx."""

    topic: str
    status: Literal["supported", "different"]  # supported: the same as ingress-nginx
    ingress_nginx: str
    portico: str


DEFAULTS: Final[tuple[DefaultBehaviour, ...]] = (
    # Each row's ingress-nginx side is taken from its documentation or e2e tests (cited by
    # tests/integration/test_defaults.py, which checks the Portico side of every row).
    DefaultBehaviour(
        "Request body size",
        "supported",
        "1m (proxy-body-size), 413 beyond",
        "the same: 1 MiB (--max-body-bytes, or proxy-body-size), 413 beyond",
    ),
    DefaultBehaviour(
        "Upstream timeouts",
        "supported",
        "connect 5 s, send 60 s, read 60 s",
        "the same (--upstream-connect-timeout, --upstream-send-timeout, --upstream-read-timeout)",
    ),
    DefaultBehaviour(
        "HTTPS redirect of TLS hosts",
        "supported",
        "308 to https:// for hosts with TLS",
        "the same",
    ),
    DefaultBehaviour(
        "Trailing slash in HTTPS redirects",
        "supported",
        "a trailing `/` is dropped (`/` goes to `https://host`, `/a/` to `https://host/a`)",
        "the same",
    ),
    DefaultBehaviour(
        "ACME HTTP-01 challenges on TLS hosts",
        "supported",
        "Ingress paths under `/.well-known/acme-challenge` are never redirected to HTTPS "
        "(no-tls-redirect-locations)",
        "the same",
    ),
    DefaultBehaviour(
        "Authentication of ACME challenge paths",
        "different",
        "Ingress paths under `/.well-known/acme-challenge` are not authenticated "
        "(no-auth-locations)",
        "an Ingress whose authentication Portico does not enforce yet answers 403 there too "
        "(fail closed); the Ingress cert-manager creates carries none and is served",
    ),
    DefaultBehaviour(
        "HSTS",
        "different",
        "max-age=31536000; includeSubDomains, only for hosts with their own certificate",
        "the same header on every HTTPS response, default certificate included (--hsts): a "
        "browser ignores it over a certificate it does not trust, so it adds nothing there",
    ),
    DefaultBehaviour(
        "Forwarded headers from clients",
        "supported",
        "X-Forwarded-* replaced unless use-forwarded-headers",
        "the same unless the client is in --trusted-proxies",
    ),
    DefaultBehaviour(
        "Request bodies",
        "different",
        "buffered whole (to disk beyond 8-16k) before the pod sees them",
        "streamed to the pod as they arrive, with backpressure: memory stays bounded per "
        "connection and nothing is written to disk",
    ),
)


def entry(suffix: str) -> Entry | None:
    """The catalogue row of an annotation name without its prefix."""
    return ANNOTATIONS.get(suffix)


def supported_names() -> frozenset[str]:
    """Names Portico parses: the `supported` and `different` rows."""
    return frozenset(n for n, e in ANNOTATIONS.items() if e.status in ("supported", "different"))


def nearest(suffix: str, names: Iterable[str] | None = None) -> str | None:
    """The catalogued name `suffix` is probably a misspelling of, or None.

    Within the edit budget of `controller.kinds` (one slip per six letters, case-insensitive),
    the closest name wins; ties go to the first in alphabetical order. A name that only adds an
    "s" is one edit, so `server-snippets` suggests `server-snippet`.
    """
    word = suffix.lower()
    best: tuple[int, str] | None = None
    for name in sorted(ANNOTATIONS if names is None else names):
        if within_budget(word, name):
            candidate = (edit_distance(word, name), name)
            if best is None or candidate < best:
                best = candidate
    return None if best is None else best[1]


# ---- documentation ----------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown() -> str:
    """`docs/annotations.md`: the catalogue as Markdown, deterministic."""
    counts = {s: sum(1 for e in _ENTRIES if e.status == s) for s in STATUSES}
    lines = [
        "# ingress-nginx annotations in Portico",
        "",
        "<!-- Generated by `portico docs annotations > docs/annotations.md` from",
        "     controller/compiler/catalogue.py; edit that table, not this file. -->",
        "",
        f"Every annotation of ingress-nginx (v1.15.1), {len(_ENTRIES)} names, and what Portico "
        f"does with it: {counts['supported']} supported, {counts['different']} supported with a "
        f"difference, {counts['unsupported']} not supported yet, {counts['refused']} refused. "
        "Portico reads them under `nginx.ingress.kubernetes.io/` and under `portico.dev/`; when "
        "both are given, `portico.dev/` wins.",
        "",
        "- **supported**: the same behaviour as ingress-nginx.",
        "- **different**: supported, with the difference the row names.",
        "- **unsupported**: no effect yet; each Ingress carrying one gets an "
        "`UnsupportedAnnotation` problem (log, `portico check`, Kubernetes Event, "
        "`portico_problems`) and is served without it, except for access control below.",
        "- **refused**: the Ingress is not served at all (`SnippetRefused` problem).",
        "",
        "**Access control fails closed.** An Ingress carrying an access-control annotation "
        "that Portico does not enforce yet (*fails closed* below) has its routes answered by "
        "Portico with 403 (`AccessControlNotEnforced` problem, and the reason "
        "`AccessControlNotEnforced` in the access log), so no request reaches its pods "
        "unchecked. `--serve-without-access-control` (env "
        "`PORTICO_SERVE_WITHOUT_ACCESS_CONTROL`) serves such Ingresses anyway and logs a "
        'warning naming each one at every compile. `enable-global-auth: "false"` does not '
        "fail closed (it asks for nothing).",
        "",
        "**Unknown names.** A name under `nginx.ingress.kubernetes.io/` or `portico.dev/` that "
        "is not in this table has no effect: it is an `UnknownAnnotation` problem naming the "
        'closest catalogued name ("did you mean ...?") or, for names ingress-nginx dropped, '
        "what replaced them.",
        "",
        "`portico compat-report` shows, before migrating, what each annotation of your Ingresses "
        "will do.",
        "",
    ]
    for category in CATEGORIES:
        rows = [e for e in _ENTRIES if e.category == category]
        if not rows:
            continue
        lines += [
            f"## {category}",
            "",
            "| annotation | status | access control | Portico equivalent | what Portico does |",
            "| --- | --- | --- | --- | --- |",
        ]
        for e in sorted(rows, key=lambda e: e.name):
            name = f"`{e.name}`" + ("" if e.documented else " (undocumented)")
            portico = f"`{e.portico}`" if e.portico else ""
            access = "fails closed" if e.fails_closed else "yes" if e.access_control else ""
            lines.append(
                f"| {name} | {e.status} | {access} | {portico} | {_cell(e.describe(note=False))} |"
            )
        lines.append("")
    lines += [
        "## Names ingress-nginx no longer reads",
        "",
        "| annotation | advice |",
        "| --- | --- |",
        *(f"| `{name}` | {_cell(advice)} |" for name, advice in sorted(RETIRED.items())),
        "",
        "## Defaults",
        "",
        "What happens without any annotation.",
        "",
        "| behaviour | status | ingress-nginx | Portico |",
        "| --- | --- | --- | --- |",
        *(
            f"| {d.topic} | {'same' if d.status == 'supported' else 'different'} | "
            f"{_cell(d.ingress_nginx)} | {_cell(d.portico)} |"
            for d in DEFAULTS
        ),
        "",
    ]
    return "\n".join(lines)
