"""ConfigMaps of header fields -> the policy steps that send them, validated.

Two ingress-nginx features take header fields from a ConfigMap's `data` (name -> value):

- `custom-headers` (an Ingress annotation naming "namespace/name"): response fields added to
  every response of the Ingress (`more_set_headers`). ingress-nginx's rules
  (internal/ingress/annotations/customheaders/main.go): names of letters, digits, "-" and "_",
  values of printable ASCII without control characters, and every name listed in the
  ingress-nginx ConfigMap's `global-allowed-response-headers` (compared as written); a missing
  ConfigMap or any entry failing them denies the location (503). Portico adds that the fields
  the proxy decides itself (framing, hop-by-hop, Server, Strict-Transport-Security) are
  refused the same way. `response_headers` returns the step, or why the Ingress fails closed.
- `proxy-set-headers` (a key of the ingress-nginx ConfigMap naming "namespace/name"): request
  fields sent to every pod (`proxy_set_header`: replacing the client's field of that name, an
  empty value removing it). ingress-nginx quotes the values into nginx configuration, where
  `$name` is a variable; Portico sends values as written, so a value naming a variable is
  refused, as are names that are not tokens, framing, hop-by-hop and Host (upstream-vhost's),
  and values with control characters: each such entry is a problem on that ConfigMap and is
  not sent, the others are (a missing ConfigMap sends none, as ingress-nginx). `request_headers`
  returns the (names, values) and the problems.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from controller.compiler.problems import CONFIGMAP_NOT_FOUND, INVALID_HEADER, Problem
from proxy.config import ResponseHeaders, ShapeRequest

# ingress-nginx's custom-headers grammar.
_CUSTOM_NAME: Final = re.compile(r"^[a-zA-Z\d\-_]+\Z")
_CUSTOM_VALUE: Final = re.compile(r"^[a-zA-Z\d_ :;.,\\/\"'?!(){}\[\]@<>=\-+*#$&`|~^%]+\Z")
# An nginx variable in a proxy_set_header value ($name or ${name}).
_NGINX_VARIABLE: Final = re.compile(r"\$(\{?)[A-Za-z_0-9]")


def response_headers(
    data: Mapping[str, str] | None, allowed: tuple[str, ...]
) -> ResponseHeaders | str | None:
    """The step of a custom-headers ConfigMap (None: it has no entry), or why it is denied."""
    if data is None:
        return "the ConfigMap does not exist"
    names: list[str] = []
    values: list[str] = []
    for name in sorted(data):
        value = data[name].strip()
        if not _CUSTOM_NAME.match(name):
            return f"invalid header name {name!r}"
        if not _CUSTOM_VALUE.match(value):
            return f"invalid value {data[name]!r} of header {name}"
        if name not in allowed:
            listed = ", ".join(allowed) if allowed else "none"
            return (
                f"header {name} is not allowed: the ingress-nginx ConfigMap's "
                f"global-allowed-response-headers must list it (it lists {listed})"
            )
        names.append(name)
        values.append(value)
    if not names:
        return None
    try:
        return ResponseHeaders(tuple(names), tuple(values))
    except ValueError as exc:
        return f"{exc}: the proxy sets that field itself"


def request_headers(
    data: Mapping[str, str] | None, ref: str
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[Problem, ...]]:
    """The (names, values) a proxy-set-headers ConfigMap sends, and its problems."""
    if data is None:
        message = "named by proxy-set-headers, it does not exist: no field is sent to the pods"
        return (), (), (Problem("ConfigMap", ref, CONFIGMAP_NOT_FOUND, message),)
    names: list[str] = []
    values: list[str] = []
    problems: list[Problem] = []
    for name in sorted(data):
        value = data[name].strip()
        reason: str | None = None
        if name.lower() in {n.lower() for n in names}:
            reason = "another entry sets the same field (names are case-insensitive)"
        elif _NGINX_VARIABLE.search(value):
            reason = "nginx variables are not expanded by Portico"
        else:
            try:
                ShapeRequest(names=(name,), values=(value,))
            except ValueError as exc:
                reason = str(exc)
        if reason is not None:
            problems.append(
                Problem(
                    "ConfigMap",
                    ref,
                    INVALID_HEADER,
                    f"proxy-set-headers entry {name}: {reason}; not sent",
                )
            )
            continue
        names.append(name)
        values.append(value)
    return tuple(names), tuple(values), tuple(problems)
