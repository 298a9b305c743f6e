"""The pod's response fields rewritten: nginx's proxy_redirect, proxy_cookie_domain and _path.

A route whose policy holds `config.RewriteRedirects` or `config.RewriteCookies` gets one
`FieldRewrites`, built once per snapshot by proxy/policy.py (`Policy.rewrite`). The exchange
hands it each final response head of the pod before the client side renders it
(`Exchange.response_head`); local answers (Portico's own redirects, 404, 502, ...) are not
proxied responses, and nginx does not rewrite those either. A route without these steps pays
one attribute test per response.

The fields rewritten (Location, Refresh, Set-Cookie) are ordinary ones: the upstream protocol
has already rendered them into the head's `parts` (name, ": ", value, CRLF, see
proxy/upstream.py), and the rewrite walks those fields, finding its names with a per-route
`FieldNames` cache (one dict lookup per field) and replacing values in place. Classifying these
names apart in proxy/upstream.py instead would spare the few rewriting routes that walk, but
would send every pod's Set-Cookie, on every route, through the slower special path of
`render_response`.

The rules are nginx's (ngx_http_proxy_module.c, ngx_http_upstream.c, ngx_http_header_filter):

- Location: a value starting with the prefix (case-sensitive) has it replaced. A rewritten
  value that starts with "/" is made absolute, as nginx's `absolute_redirect` (on in
  ingress-nginx) does: the listener's scheme, the request's host in lower case without its
  port or a trailing "." (ingress-nginx sets `port_in_redirect off` and
  `server_name_in_redirect off`). A request without a host keeps the relative value.
- Refresh: the same replacement on what follows the first `url=` (any case); never made
  absolute.
- Set-Cookie: the value is split at ";" into attributes (spaces around names and values
  dropped); a Domain attribute equal to the domain, case-insensitively and ignoring one leading
  "." (which stays), becomes the replacement; a Path attribute starting with the path
  (case-sensitive) has that part replaced. A cookie with a rewritten attribute is written back
  with "; " between attributes, as nginx does; one without is left byte for byte.
"""

from __future__ import annotations

from typing import Final

from proxy.config import RewriteCookies, RewriteRedirects
from proxy.headers import RESPONSE_SPECIAL, ClientContext, FieldNames, RequestHead

LOCATION: Final = b"location"
REFRESH: Final = b"refresh"
SET_COOKIE: Final = b"set-cookie"


def server_name(host: bytes) -> bytes:
    """The request's host as nginx puts it in an absolute redirect: lower case, no port, no
    trailing "." (b"" when there is none)."""
    if host[:1] == b"[":
        end = host.find(b"]")
        return host[: end + 1].lower() if end > 0 else b""
    name = host.partition(b":")[0]
    if name[-1:] == b".":
        name = name[:-1]
    return name.lower()


class FieldRewrites:
    """The response-field rewrites of one route (see the module docstring)."""

    __slots__ = (
        "domain",
        "domain_replacement",
        "names",
        "path",
        "path_replacement",
        "prefix",
        "replacement",
    )

    def __init__(
        self,
        prefix: bytes = b"",
        replacement: bytes = b"",
        domain: bytes = b"",
        domain_replacement: bytes = b"",
        path: bytes = b"",
        path_replacement: bytes = b"",
    ) -> None:
        # b"" prefix: no Location/Refresh rewrite; b"" domain or path: that attribute is kept.
        self.prefix = prefix
        self.replacement = replacement
        self.domain = domain.lower()
        self.domain_replacement = domain_replacement
        self.path = path
        self.path_replacement = path_replacement
        names: set[bytes] = set()
        if prefix:
            names.add(LOCATION)
            names.add(REFRESH)
        if domain or path:
            names.add(SET_COOKIE)
        if names & RESPONSE_SPECIAL:
            # Those reach render_response apart from `parts`, where this does not look.
            raise ValueError(f"cannot rewrite {sorted(names & RESPONSE_SPECIAL)}")
        self.names = FieldNames(frozenset(names))

    def rewrite(self, parts: list[bytes], head: RequestHead, client: ClientContext | None) -> None:
        """Rewrite the pod's fields in `parts` (parts[0]: the status line, then name, ": ",
        value, CRLF for each ordinary field) in place."""
        names = self.names
        for i in range(1, len(parts), 4):
            lname = names.special_name(parts[i])
            if not lname:
                continue
            value = parts[i + 2]
            if lname == SET_COOKIE:
                new = self.cookie(value)
            elif lname == LOCATION:
                new = self.location(value, head, client)
            else:
                new = self.refresh(value)
            if new is not None:
                parts[i + 2] = new

    def location(
        self, value: bytes, head: RequestHead, client: ClientContext | None
    ) -> bytes | None:
        """The rewritten Location, None when the prefix does not match."""
        prefix = self.prefix
        if not value.startswith(prefix):
            return None
        new = self.replacement + value[len(prefix) :]
        if new[:1] == b"/" and client is not None:
            name = server_name(head.host)
            if name:
                new = client.scheme + b"://" + name + new
        return new

    def refresh(self, value: bytes) -> bytes | None:
        """The rewritten Refresh (its `url=` part), None when there is nothing to rewrite."""
        at = value.lower().find(b"url=")
        if at < 0:
            return None
        start = at + 4
        prefix = self.prefix
        if not value.startswith(prefix, start):
            return None
        return value[:start] + self.replacement + value[start + len(prefix) :]

    def cookie(self, value: bytes) -> bytes | None:
        """The rewritten Set-Cookie value, None when no attribute changes."""
        attributes: list[tuple[bytes, bytes | None]] = []
        for raw in value.split(b";"):
            piece = raw.strip(b" ")
            eq = piece.find(b"=")
            if eq < 0:
                attributes.append((piece, None))
            else:
                attributes.append((piece[:eq].rstrip(b" "), piece[eq + 1 :].lstrip(b" ")))
        if attributes[0][1] is None:
            return None  # not name=value: nginx leaves it alone
        changed = False
        for i in range(1, len(attributes)):
            name, attr = attributes[i]
            if attr is None:
                continue
            lname = name.lower()
            new: bytes | None = None
            if lname == b"domain" and self.domain:
                new = self._domain(attr)
            elif lname == b"path" and self.path:
                new = self._path(attr)
            if new is not None:
                attributes[i] = (name, new)
                changed = True
        if not changed:
            return None
        return b"; ".join(name if attr is None else name + b"=" + attr for name, attr in attributes)

    def _domain(self, value: bytes) -> bytes | None:
        dot = value[:1] == b"."
        if (value[1:] if dot else value).lower() != self.domain:
            return None
        return b"." + self.domain_replacement if dot else self.domain_replacement

    def _path(self, value: bytes) -> bytes | None:
        path = self.path
        if not value.startswith(path):
            return None
        return self.path_replacement + value[len(path) :]


def field_rewrites(
    redirects: RewriteRedirects | None, cookies: RewriteCookies | None
) -> FieldRewrites | None:
    """The FieldRewrites of a route with these steps (None: neither)."""
    if redirects is None and cookies is None:
        return None
    prefix = replacement = b""
    if redirects is not None:
        prefix = redirects.prefix.encode("ascii")
        replacement = redirects.replacement.encode("ascii")
    domain = domain_replacement = path = path_replacement = b""
    if cookies is not None:
        domain = cookies.domain.encode("ascii")
        domain_replacement = cookies.domain_replacement.encode("ascii")
        path = cookies.path.encode("ascii")
        path_replacement = cookies.path_replacement.encode("ascii")
    return FieldRewrites(prefix, replacement, domain, domain_replacement, path, path_replacement)
