"""The ingress-nginx controller ConfigMap, read as defaults of Portico's settings.

`--nginx-configmap namespace/name` names the ConfigMap ingress-nginx took its global
configuration from. What each key does in Portico is a row of the catalogue
(`controller/compiler/catalogue.py`, `CONFIGMAP_KEYS`); how the keys Portico applies are read is
here: `APPLIED` gives each one's grammar (ingress-nginx's: `strconv.ParseBool` booleans, whole
numbers of seconds, nginx sizes, comma-separated networks) and the setting it becomes, and
`_FORWARDED` the two keys that become one setting (`use-forwarded-headers` with
`proxy-real-ip-cidr`: `--trusted-proxies`, nginx's realip module trusting X-Forwarded-For from
those networks).

`read()` turns the ConfigMap's data into a `Reading`: setting values, one `KeyRow` per key (what
`portico compat-report` prints: one source for the report and the controller) and the problems
of the keys that have no effect, as annotations have theirs:

- `UnsupportedConfigMapKey`: a key ingress-nginx documents that Portico does not apply (its
  catalogue row says what to do instead), unless its value is what Portico does anyway (`_SAME`);
- `UnknownConfigMapKey`: not an ingress-nginx key ("did you mean ...?");
- `InvalidConfigMapValue`: a value that does not parse; the setting keeps its default, as
  ingress-nginx keeps its own, except access control (`whitelist-source-range`,
  `denylist-source-range`), which fails closed: the Ingresses that would take the list answer
  503 `InvalidSourceRange`, as one whose own annotation does not read
  (`CompileSettings.invalid_*_source_ranges`);
- `AccessControlNotEnforced`: access control for every Ingress that Portico does not enforce
  (`block-cidrs`, `block-user-agents`, ...): every route answers 403 (fail closed) unless
  `--serve-without-access-control` (`CompileSettings.unenforced_global_access`).

Precedence (`overlay`): a flag or `PORTICO_*` variable given explicitly wins over the ConfigMap,
which wins over the default. How a change applies at run time is the composition root's
business (controller/app.py): compile settings by recompiling, the rest at the next restart.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml
from pydantic import ValidationError

from controller.compiler import CompileSettings
from controller.compiler.catalogue import (
    CONFIGMAP_KEYS,
    CONFIGMAP_NAMES,
    CONFIGMAP_NO_EQUIVALENT,
    CONFIGMAP_UNENFORCED,
    nearest,
)
from controller.compiler.extauth import GLOBAL_KEYS, global_auth
from controller.compiler.problems import ACCESS_CONTROL_NOT_ENFORCED, Problem
from controller.compiler.screening import ReportStatus
from controller.settings import Settings, flag_name
from proxy.config import ExternalAuth, Refuse

KIND: Final = "ConfigMap"

# Problem reasons of the ConfigMap (CamelCase, like the compiler's).
UNSUPPORTED_KEY: Final = "UnsupportedConfigMapKey"
UNKNOWN_KEY: Final = "UnknownConfigMapKey"
INVALID_VALUE: Final = "InvalidConfigMapValue"
NOT_FOUND: Final = "ConfigMapNotFound"

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Invalid(ValueError):
    """A value that does not parse; the message says what was expected."""


# ---- value grammars (ingress-nginx's) ----------------------------------------------------------

# strconv.ParseBool, which ingress-nginx's weakly typed decoding uses for bool fields.
_TRUE: Final = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE: Final = frozenset({"0", "f", "F", "FALSE", "false", "False"})
_WHOLE: Final = re.compile(r"^[0-9]{1,9}$")
# nginx sizes, as client_max_body_size takes them.
_SIZE: Final = re.compile(r"^([0-9]{1,15})([kKmMgG]?)$")
_SIZE_UNITS: Final = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_TLS_VERSIONS: Final = ("SSLv2", "SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")


def _bool(value: str) -> bool:
    if value.strip() in _TRUE:
        return True
    if value.strip() in _FALSE:
        return False
    raise _Invalid('expected "true" or "false"')


def _not_bool(value: str) -> bool:
    return not _bool(value)


def _whole(value: str) -> int:
    if not _WHOLE.match(value.strip()):
        raise _Invalid("expected a whole number")
    return int(value.strip())


def _positive(value: str) -> int:
    number = _whole(value)
    if number == 0:
        raise _Invalid("expected a whole number above 0")
    return number


def _seconds(value: str) -> float:
    # ingress-nginx reads these as integers: "30s" was ignored there, and is refused here.
    if not _WHOLE.match(value.strip()) or int(value.strip()) == 0:
        raise _Invalid('expected a positive whole number of seconds, like "60"')
    return float(value.strip())


def _seconds_or_zero(value: str) -> float:
    return float(_whole(value))


def _size(value: str) -> int:
    m = _SIZE.match(value.strip())
    if m is None:
        raise _Invalid('expected a size like "0" (unlimited), "512k", "1m" or "1g"')
    return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]


def _tls_versions(value: str) -> tuple[str, ...]:
    versions = tuple(value.split())
    unknown = [v for v in versions if v not in _TLS_VERSIONS]
    if not versions or unknown:
        raise _Invalid(f"expected protocols among {' '.join(_TLS_VERSIONS)}")
    if "TLSv1.2" not in versions and "TLSv1.3" not in versions:
        raise _Invalid("Portico speaks TLSv1.2 and TLSv1.3 only: list at least one")
    return versions


def _tls_min(value: str) -> str:
    return "1.2" if "TLSv1.2" in _tls_versions(value) else "1.3"


def _workers(value: str) -> int | None:
    if value.strip() == "auto":
        return None
    if not _WHOLE.match(value.strip()) or int(value.strip()) == 0:
        raise _Invalid('expected "auto" or a positive number')
    return int(value.strip())


def _networks(value: str) -> tuple[str, ...]:
    # []string keys: ingress-nginx splits on commas and drops empty fields (splitAndTrimSpace);
    # nginx takes an address or address/prefix-length, no netmask and no zone.
    items = tuple(part.strip() for part in value.split(",") if part.strip())
    for item in items:
        address, slash, bits = item.partition("/")
        try:
            if "%" in address or (slash and not (bits.isascii() and bits.isdigit())):
                raise ValueError(item)
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise _Invalid(f"{item!r} is not an IP address or CIDR range") from None
    return items


def _configmap_ref(value: str) -> str | None:
    # ingress-nginx reads "namespace/name" and warns when it finds no such ConfigMap.
    ref = value.strip()
    if not ref:
        return None
    namespace, slash, name = ref.partition("/")
    if not (slash and _DNS_LABEL.match(namespace) and _DNS_SUBDOMAIN.match(name)):
        raise _Invalid('expected a ConfigMap reference "namespace/name"')
    return ref


def _error_status(value: str) -> int:
    # int; nginx's limit_req_status / limit_conn_status take 400 to 599.
    status = _whole(value)
    if not 400 <= status <= 599:
        raise _Invalid("expected a status from 400 to 599")
    return status


def _kilobytes(value: str) -> int:
    # int (strconv.Atoi: a sign, no unit), written as `limit_rate Nk;` only above 0.
    if not re.fullmatch(r"[+-]?[0-9]{1,9}", value):
        raise _Invalid('expected a whole number of kilobytes, like "64"')
    return max(int(value), 0)


def _header_names(value: str) -> tuple[str, ...]:
    # []string: split on commas, spaces trimmed, empty fields dropped (splitAndTrimSpace).
    names = tuple(part.strip() for part in value.split(",") if part.strip())
    for name in names:
        if not _HEADER_NAME.match(name):
            raise _Invalid(f"{name!r} is not a header name")
    return names


_DNS_LABEL: Final = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN: Final = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_HEADER_NAME: Final = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def _empty_list(value: str) -> bool:
    return not [part for part in value.split(",") if part.strip()]


# ---- the keys Portico applies ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Applied:
    """How one ConfigMap key becomes one Portico setting."""

    setting: str  # the Settings field
    parse: Callable[[str], Any]  # raises _Invalid


# Each key's default and grammar: ingress-nginx's docs/user-guide/nginx-configuration/
# configmap.md (v1.15.1), the section named after the key.
APPLIED: Final[Mapping[str, Applied]] = {
    "proxy-body-size": Applied("max_body_bytes", _size),  # string, "1m"
    "proxy-connect-timeout": Applied("upstream_connect_timeout", _seconds),  # int, 5
    "proxy-read-timeout": Applied("upstream_read_timeout", _seconds),  # int, 60
    "proxy-send-timeout": Applied("upstream_send_timeout", _seconds),  # int, 60
    "keep-alive": Applied("keepalive_timeout", _seconds_or_zero),  # int, 75; 0 disables it
    "client-header-timeout": Applied("client_header_timeout", _seconds),  # int, 60
    "client-body-timeout": Applied("client_body_timeout", _seconds),  # int, 60
    "upstream-keepalive-timeout": Applied("upstream_keepalive_timeout", _seconds),  # int, 60
    "hsts": Applied("hsts", _bool),  # bool, "true"
    "hsts-max-age": Applied("hsts_max_age", _whole),  # string, "31536000"
    "hsts-include-subdomains": Applied("hsts_include_subdomains", _bool),  # bool, "true"
    "ssl-protocols": Applied("tls_min_version", _tls_min),  # string, "TLSv1.2 TLSv1.3"
    "ssl-redirect": Applied("ssl_redirect", _bool),  # bool, "true"
    "disable-access-log": Applied("access_log", _not_bool),  # bool, "false"
    "worker-processes": Applied("workers", _workers),  # string, "auto"
    "use-proxy-protocol": Applied("proxy_protocol", _bool),  # bool, "false"
    "use-http2": Applied("http2", _bool),  # bool, "true"
    "http2-max-requests": Applied("http2_max_requests", _positive),  # int, 1000
    "http2-max-concurrent-streams": Applied("http2_max_concurrent_streams", _positive),  # 128
    "whitelist-source-range": Applied("allow_source_ranges", _networks),  # []string, empty
    "denylist-source-range": Applied("deny_source_ranges", _networks),  # []string, empty
    "service-upstream": Applied("service_upstream", _bool),  # bool, "false"
    "proxy-set-headers": Applied("proxy_set_headers", _configmap_ref),  # string, ""
    # []string, empty
    "global-allowed-response-headers": Applied("allowed_response_headers", _header_names),
    "limit-req-status-code": Applied("limit_req_status_code", _error_status),  # int, 503
    "limit-conn-status-code": Applied("limit_conn_status_code", _error_status),  # int, 503
    "limit-rate": Applied("limit_rate", _kilobytes),  # int, 0
    "limit-rate-after": Applied("limit_rate_after", _kilobytes),  # int, 0
}

# use-forwarded-headers (bool, "false") trusts the X-Forwarded-* headers of the clients in
# proxy-real-ip-cidr ([]string, "0.0.0.0/0"); that list alone does nothing (configmap.md, both
# sections). Together they are one Portico setting.
_FORWARDED: Final[Mapping[str, Applied]] = {
    "use-forwarded-headers": Applied("trusted_proxies", _bool),
    "proxy-real-ip-cidr": Applied("trusted_proxies", _networks),
}
_REAL_IP_DEFAULT: Final = ("0.0.0.0/0",)


def _same_full_forwarded_for(value: str, data: Mapping[str, str]) -> bool:
    # Portico extends the X-Forwarded-For of a trusted client and replaces any other's: that is
    # compute-full-forwarded-for equal to use-forwarded-headers.
    try:
        return _bool(value) == _bool(data.get("use-forwarded-headers", "false"))
    except _Invalid:
        return False


def _is(expected: str) -> Callable[[str, Mapping[str, str]], bool]:
    return lambda value, _data: value.strip().lower() == expected


# Keys whose catalogue row is `unsupported` or `different`, with the values for which Portico
# behaves as ingress-nginx does: those are `supported` and raise no problem.
_SAME: Final[Mapping[str, Callable[[str, Mapping[str, str]], bool]]] = {
    "hsts": lambda v, _: v.strip() in _FALSE,  # no header at all, as in ingress-nginx
    "hsts-preload": lambda v, _: v.strip() in _FALSE,
    "force-ssl-redirect": lambda v, _: v.strip() in _FALSE,
    "allow-snippet-annotations": lambda v, _: v.strip() in _FALSE,
    "enable-access-log-for-default-backend": lambda v, _: v.strip() in _TRUE,
    "compute-full-forwarded-for": _same_full_forwarded_for,
    "forwarded-for-header": _is("x-forwarded-for"),
    "custom-http-errors": lambda v, _: _empty_list(v),
    "ssl-protocols": lambda v, _: v.split() in (["TLSv1.2", "TLSv1.3"], ["TLSv1.3"]),
    # Access control that restricts nothing.
    **{
        name: lambda v, _: _empty_list(v)
        for name, entry in CONFIGMAP_KEYS.items()
        if entry.access_control
    },
}


# ---- reading -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KeyRow:
    """One key of the ConfigMap as written, and what Portico does with it."""

    key: str
    value: str
    status: ReportStatus
    detail: str
    # Access control for every Ingress that Portico does not enforce: every route answers 403.
    access_control: bool = False
    reason: str | None = None  # the problem it raises, if any
    # The setting of an access-control key whose value does not read (and is not given
    # explicitly): the Ingresses that would take it fail closed (503) instead.
    unreadable: str | None = None


@dataclass(frozen=True, slots=True)
class Reading:
    """What one version of the ConfigMap says."""

    ref: str  # "namespace/name"
    values: Mapping[str, Any] = field(default_factory=dict)  # Settings field -> value
    rows: tuple[KeyRow, ...] = ()  # sorted by key
    found: bool = True
    # global-auth-url and its global-auth-* keys: the external auth of every Ingress without
    # its own (a Refuse, 503, when they do not read); None: none.
    global_auth: ExternalAuth | Refuse | None = None

    @property
    def unenforced(self) -> tuple[str, ...]:
        """The keys holding access control for every Ingress that Portico does not enforce."""
        return tuple(r.key for r in self.rows if r.access_control)

    @property
    def unreadable(self) -> frozenset[str]:
        """The settings of access-control keys whose value does not read: fail closed."""
        return frozenset(r.unreadable for r in self.rows if r.unreadable is not None)

    def problems(self) -> tuple[Problem, ...]:
        out = [
            Problem(KIND, self.ref, row.reason, f"key {row.key}: {row.detail}")
            for row in self.rows
            if row.reason is not None
        ]
        if not self.found:
            out.append(
                Problem(
                    KIND,
                    self.ref,
                    NOT_FOUND,
                    "the ConfigMap named by --nginx-configmap does not exist: every setting "
                    "keeps its flag, environment or default value",
                )
            )
        return tuple(sorted(out))


def _flag(setting: str) -> str:
    return flag_name(setting)


def _explicit_note(setting: str, explicit: frozenset[str]) -> str:
    if setting in explicit:
        return f" Not applied: {_flag(setting)} is given explicitly, and wins."
    return ""


def read(
    data: Mapping[str, str] | None, ref: str, explicit: frozenset[str] = frozenset()
) -> Reading:
    """The Reading of the ConfigMap `ref` (None: it does not exist). `explicit`: the settings
    given as flags or environment variables, which the ConfigMap does not override (the rows
    say so)."""
    if data is None:
        return Reading(ref, found=False)
    values: dict[str, Any] = {}
    rows: list[KeyRow] = []
    forwarded: dict[str, Any] = {}
    auth, auth_errors = global_auth(data)
    for key in sorted(data):
        value = data[key]
        entry = CONFIGMAP_KEYS.get(key)
        if key in GLOBAL_KEYS and entry is not None:
            reason = auth_errors.get(key)
            if reason is None:
                rows.append(KeyRow(key, value, entry.status, entry.describe()))
            else:
                detail = (
                    f"invalid value {value!r}: {reason}; access control fails closed: every "
                    "Ingress that would take the global auth answers 503 "
                    "(InvalidExternalAuth) until it is fixed."
                )
                rows.append(
                    KeyRow(
                        key,
                        value,
                        "unsupported",
                        detail,
                        reason=INVALID_VALUE,
                        unreadable="global_auth",
                    )
                )
            continue
        applied = APPLIED.get(key) or _FORWARDED.get(key)
        if applied is not None and entry is not None:
            try:
                parsed = applied.parse(value)
            except _Invalid as exc:
                closed = entry.access_control and applied.setting not in explicit
                if closed:
                    # Dropping a restriction that does not read would open what it guards.
                    consequence = (
                        "access control fails closed: every Ingress without its own "
                        "annotation answers 503 (InvalidSourceRange) until it is fixed."
                    )
                else:
                    consequence = (
                        f"{_flag(applied.setting)} keeps its value, as ingress-nginx keeps its "
                        "default."
                    )
                rows.append(
                    KeyRow(
                        key,
                        value,
                        "unsupported",
                        f"invalid value {value!r}: {exc}; {consequence}",
                        reason=INVALID_VALUE,
                        unreadable=applied.setting if closed else None,
                    )
                )
                continue
            if key in _FORWARDED:
                forwarded[key] = parsed
            elif applied.setting not in explicit:
                values[applied.setting] = parsed
            same = _SAME.get(key)
            status: ReportStatus = entry.status
            if same is not None and same(value, data):
                status = "supported"
            detail = f"{entry.describe()} [{entry.portico}]" + _explicit_note(
                applied.setting, explicit
            )
            rows.append(KeyRow(key, value, status, detail))
            continue
        if entry is not None:
            same = _SAME.get(key)
            if same is not None and same(value, data):
                rows.append(KeyRow(key, value, "supported", entry.describe()))
            elif entry.access_control:
                detail = f"{entry.describe(note=False)} {CONFIGMAP_UNENFORCED}"
                rows.append(
                    KeyRow(
                        key,
                        value,
                        "unsupported",
                        detail,
                        access_control=True,
                        reason=ACCESS_CONTROL_NOT_ENFORCED,
                    )
                )
            else:
                rows.append(
                    KeyRow(key, value, entry.status, entry.describe(), reason=UNSUPPORTED_KEY)
                )
            continue
        if key in CONFIGMAP_NAMES:
            rows.append(
                KeyRow(key, value, "unsupported", CONFIGMAP_NO_EQUIVALENT, reason=UNSUPPORTED_KEY)
            )
            continue
        near = nearest(key, CONFIGMAP_NAMES)
        hint = f' (did you mean "{near}"?)' if near else ""
        detail = f"not a key of the ingress-nginx ConfigMap{hint}; it has no effect."
        rows.append(KeyRow(key, value, "unknown", detail, reason=UNKNOWN_KEY))
    if forwarded.get("use-forwarded-headers") and "trusted_proxies" not in explicit:
        values["trusted_proxies"] = forwarded.get("proxy-real-ip-cidr", _REAL_IP_DEFAULT)
    global_step: ExternalAuth | Refuse | None = auth
    if auth_errors:
        global_step = Refuse(503, "InvalidExternalAuth")
    return Reading(ref, values, tuple(rows), global_auth=global_step)


def overlay(settings: Settings, reading: Reading) -> Settings:
    """`settings` with the ConfigMap's values for every setting not given explicitly (flags and
    PORTICO_* variables are what `Settings.from_sources` was given: `model_fields_set`)."""
    explicit = settings.model_fields_set
    values = {name: getattr(settings, name) for name in explicit}
    values.update((k, v) for k, v in reading.values.items() if k not in explicit)
    try:
        return Settings(**values)
    except ValidationError:
        # Each value was checked when read; a rule across settings it breaks keeps the old ones.
        return settings


def compile_settings(settings: Settings, reading: Reading) -> CompileSettings:
    """The compile settings of `overlay(settings, reading)`-style settings, with the global
    access control the ConfigMap holds and Portico does not enforce or cannot read (the
    compiler fails closed on both)."""
    return dataclasses.replace(
        settings.compile_settings(),
        unenforced_global_access=reading.unenforced,
        invalid_allow_source_ranges="allow_source_ranges" in reading.unreadable,
        invalid_deny_source_ranges="deny_source_ranges" in reading.unreadable,
        global_auth=reading.global_auth,
    )


# ---- where the ConfigMap comes from ------------------------------------------------------------


def split_ref(ref: str) -> tuple[str, str]:
    namespace, _, name = ref.partition("/")
    return namespace, name


def _configmaps(documents: Iterator[Any]) -> Iterator[Mapping[str, Any]]:
    queue = [d for d in documents if isinstance(d, Mapping)]
    while queue:
        doc = queue.pop(0)
        if doc.get("kind") == KIND:
            yield doc
        elif isinstance(doc.get("items"), list):
            queue[:0] = [i for i in doc["items"] if isinstance(i, Mapping)]


def data_of(doc: Mapping[str, Any]) -> dict[str, str]:
    """A ConfigMap's `data` as strings (YAML may have read `true` or `60` unquoted)."""
    data = doc.get("data") or {}
    if not isinstance(data, Mapping):
        raise ValueError("data is not a mapping")
    return {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in data.items()}


def ref_of(doc: Mapping[str, Any]) -> str:
    meta = doc.get("metadata") or {}
    return f"{meta.get('namespace') or 'default'}/{meta.get('name') or ''}"


def first_in_file(path: Path) -> tuple[str, dict[str, str]]:
    """("namespace/name", data) of the first ConfigMap in a YAML file (a List is unpacked).
    Raises ValueError naming the file."""
    try:
        documents = yaml.load_all(path.read_text(encoding="utf-8"), Loader=_Loader)
        for doc in _configmaps(iter(list(documents))):
            ref = ref_of(doc)
            try:
                return ref, data_of(doc)
            except ValueError as exc:
                raise ValueError(f"{path}: ConfigMap {ref}: {exc}") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read: {exc}") from None
    raise ValueError(f"{path}: no ConfigMap in it")


def find_in_directory(directory: Path, ref: str) -> dict[str, str] | None:
    """The data of ConfigMap `ref` among a manifest directory's YAML files (as
    `controller/files.py` reads them: recursively, hidden directories skipped), or None.
    Files that do not read are skipped: the manifest source reports them."""
    from controller.files import SUFFIXES

    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory).parts
        if (
            path.suffix not in SUFFIXES
            or any(p.startswith(".") for p in relative)
            or not path.is_file()
        ):
            continue
        try:
            documents = list(yaml.load_all(path.read_text(encoding="utf-8"), Loader=_Loader))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        for doc in _configmaps(iter(documents)):
            if ref_of(doc) == ref:
                try:
                    return data_of(doc)
                except ValueError:
                    return {}
    return None


def from_directory(settings: Settings, directory: Path) -> tuple[Settings, Reading | None]:
    """`settings` under the ConfigMap `--nginx-configmap` names, read from a manifest directory
    (`portico serve`, `check`, `explain`), and its Reading; unchanged and None when none is
    named."""
    if settings.nginx_configmap is None:
        return settings, None
    data = find_in_directory(directory, settings.nginx_configmap)
    reading = read(data, settings.nginx_configmap, frozenset(settings.model_fields_set))
    return overlay(settings, reading), reading


# ---- documentation ------------------------------------------------------------------------------

# Compile settings apply to the running controller at once; the others when the workers start.
_LIVE: Final = frozenset(f.name for f in dataclasses.fields(CompileSettings))


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown() -> str:
    """`docs/configmap.md`: what Portico does with each key, from the catalogue and `APPLIED`."""
    applied = {**APPLIED, **_FORWARDED}
    order = ("supported", "different", "unsupported", "refused")
    rows = sorted(CONFIGMAP_KEYS.values(), key=lambda e: (order.index(e.status), e.name))
    others = len(CONFIGMAP_NAMES - set(CONFIGMAP_KEYS))
    lines = [
        "# The ingress-nginx ConfigMap in Portico",
        "",
        "<!-- Generated by `portico docs configmap > docs/configmap.md` from",
        "     controller/compiler/catalogue.py and controller/configmap.py; edit those. -->",
        "",
        "`--nginx-configmap namespace/name` (env `PORTICO_NGINX_CONFIGMAP`, chart value "
        "`controller.nginxConfigMap`) names the ConfigMap ingress-nginx read its global "
        "configuration from (`ingress-nginx/ingress-nginx-controller` in a default install). "
        "Its keys below that Portico applies become defaults of Portico's settings: a flag or "
        "`PORTICO_*` variable given explicitly wins, and an Ingress's own annotation wins over "
        "both, as in ingress-nginx. Values are read with ingress-nginx's grammar (booleans as "
        'Go\'s `strconv.ParseBool`, timeouts as whole seconds: `"30s"` is refused here as it '
        "was ignored there); a value that does not read is an `InvalidConfigMapValue` problem "
        "and the setting keeps its value.",
        "",
        "`portico controller` reads the ConfigMap before its workers start and then watches it "
        "(by name: the chart grants `list`/`watch` on that one ConfigMap). A change applies at "
        "once when it concerns the compiler (*at once* below); the workers read their "
        "settings when they start, so a change of theirs (*at restart*) is logged as "
        "`configmap.restart_required` naming the settings, and applies to the pods of the next "
        "rollout (`kubectl rollout restart`). `portico serve --manifests DIR` and `portico "
        "check` read it from the manifest directory.",
        "",
        "Keys without effect are problems, as annotations are (log, `portico check`, Kubernetes "
        "Events on the ConfigMap, `portico_problems`): `UnsupportedConfigMapKey` for a key "
        "below marked unsupported (unless its value is what Portico does anyway, as the row "
        f"says) and for the {others} other keys ingress-nginx documents, which have no Portico "
        "equivalent; `UnknownConfigMapKey` for a key ingress-nginx does not know, naming the "
        'closest one ("did you mean ...?"); `ConfigMapNotFound` when the ConfigMap does not '
        "exist. **Access control for every Ingress** fails closed: a key Portico does not "
        "enforce (`block-cidrs`, `block-user-agents`, ...) has every request answered 403 "
        "(`AccessControlNotEnforced`, no request reaches a pod) unless "
        "`--serve-without-access-control`; a `whitelist-source-range` or "
        "`denylist-source-range` that does not read has the Ingresses that would take it "
        "answer 503 (`InvalidSourceRange`) rather than lose the restriction.",
        "",
        "`portico compat-report --configmap FILE` prints the same rows for a ConfigMap file.",
        "",
        "| key | status | Portico setting | applies | what Portico does |",
        "| --- | --- | --- | --- | --- |",
    ]
    for e in rows:
        mapping = applied.get(e.name)
        setting = f"`{e.portico}`" if e.portico else ""
        when = ""
        if mapping is not None:
            when = "at once" if mapping.setting in _LIVE else "at restart"
        access = " **Access control: fails closed.**" if e.fails_closed else ""
        lines.append(
            f"| `{e.name}` | {e.status} | {setting} | {when} | "
            f"{_cell(e.describe(note=False))}{access} |"
        )
    lines.append("")
    return "\n".join(lines)
