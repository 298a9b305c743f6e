"""The ingress-nginx controller ConfigMap as defaults of Portico's settings
(controller/configmap.py).

Every row cites ingress-nginx v1.15.1's docs/user-guide/nginx-configuration/configmap.md: the
section named after the key gives its type and default (`CM#<key>` below), which is the grammar
Portico reads it with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from controller.compiler import compile_view
from controller.compiler.catalogue import CONFIGMAP_KEYS, CONFIGMAP_NAMES
from controller.compiler.extauth import GLOBAL_KEYS
from controller.compiler.problems import ACCESS_CONTROL_NOT_ENFORCED
from controller.configmap import (
    _FORWARDED,
    APPLIED,
    INVALID_VALUE,
    NOT_FOUND,
    UNKNOWN_KEY,
    UNSUPPORTED_KEY,
    compile_settings,
    find_in_directory,
    overlay,
    read,
)
from controller.explain import explain
from controller.settings import Settings
from proxy.config import SourceRanges
from tests.kube_factory import ingress, ingress_class, rule, service, store_of, tls_entry

ROOT = Path(__file__).resolve().parents[3]
REF = "ingress-nginx/ingress-nginx-controller"
MIB = 1024 * 1024
N = "nginx.ingress.kubernetes.io/"

# (key, value written, Settings field, value it becomes, ingress-nginx's default: CM#<key>)
APPLIED_ROWS: list[tuple[str, str, str, Any, str]] = [
    ("proxy-body-size", "8m", "max_body_bytes", 8 * MIB, "1m"),  # CM#proxy-body-size
    ("proxy-body-size", "512k", "max_body_bytes", 512 * 1024, "1m"),
    ("proxy-body-size", "0", "max_body_bytes", 0, "1m"),  # nginx: 0 disables the check
    ("proxy-connect-timeout", "10", "upstream_connect_timeout", 10.0, "5"),  # CM#...-timeout
    ("proxy-read-timeout", "120", "upstream_read_timeout", 120.0, "60"),
    ("proxy-send-timeout", "90", "upstream_send_timeout", 90.0, "60"),
    ("keep-alive", "30", "keepalive_timeout", 30.0, "75"),  # CM#keep-alive
    ("keep-alive", "0", "keepalive_timeout", 0.0, "75"),  # 0 disables keep-alive
    ("client-header-timeout", "20", "client_header_timeout", 20.0, "60"),
    ("client-body-timeout", "30", "client_body_timeout", 30.0, "60"),
    ("upstream-keepalive-timeout", "15", "upstream_keepalive_timeout", 15.0, "60"),
    ("hsts", "false", "hsts", False, "true"),  # CM#hsts: bool, strconv.ParseBool spellings
    ("hsts", "True", "hsts", True, "true"),
    ("hsts-max-age", "600", "hsts_max_age", 600, "31536000"),  # CM#hsts-max-age
    ("hsts-include-subdomains", "0", "hsts_include_subdomains", False, "true"),
    ("ssl-protocols", "TLSv1.2 TLSv1.3", "tls_min_version", "1.2", "TLSv1.2 TLSv1.3"),
    ("ssl-protocols", "TLSv1.3", "tls_min_version", "1.3", "TLSv1.2 TLSv1.3"),
    ("ssl-protocols", "TLSv1 TLSv1.1 TLSv1.2", "tls_min_version", "1.2", "TLSv1.2 TLSv1.3"),
    ("ssl-redirect", "false", "ssl_redirect", False, "true"),  # CM#ssl-redirect
    ("disable-access-log", "true", "access_log", False, "false"),  # CM#disable-access-log
    ("worker-processes", "auto", "workers", None, "auto"),  # CM#worker-processes
    ("worker-processes", "3", "workers", 3, "auto"),
    ("use-proxy-protocol", "true", "proxy_protocol", True, "false"),  # CM#use-proxy-protocol
    ("use-proxy-protocol", "false", "proxy_protocol", False, "false"),
    ("use-http2", "false", "http2", False, "true"),  # CM#use-http2
    ("use-http2", "true", "http2", True, "true"),
    ("http2-max-requests", "500", "http2_max_requests", 500, "1000"),  # CM#http2-max-requests
    # CM#http2-max-concurrent-streams (int, 128)
    ("http2-max-concurrent-streams", "64", "http2_max_concurrent_streams", 64, "128"),
    # CM#whitelist-source-range, CM#denylist-source-range: []string, comma-separated, default
    # empty (splitAndTrimSpace drops empty fields).
    ("whitelist-source-range", "10.0.0.0/8", "allow_source_ranges", ("10.0.0.0/8",), ""),
    (
        "whitelist-source-range",
        "192.0.2.1, 2001:db8::/32,",
        "allow_source_ranges",
        ("192.0.2.1", "2001:db8::/32"),
        "",
    ),
    ("denylist-source-range", "10.1.0.0/16,::1", "deny_source_ranges", ("10.1.0.0/16", "::1"), ""),
    ("denylist-source-range", "", "deny_source_ranges", (), ""),
    # CM#service-upstream (bool, "false"), CM#proxy-set-headers (string "namespace/name", ""),
    # CM#global-allowed-response-headers ([]string, empty).
    ("service-upstream", "true", "service_upstream", True, "false"),
    # CM#limit-req-status-code, CM#limit-conn-status-code (its table row).
    ("limit-req-status-code", "429", "limit_req_status_code", 429, "503"),
    ("limit-conn-status-code", "429", "limit_conn_status_code", 429, "503"),
    # CM#limit-rate, CM#limit-rate-after (int, 0): kilobytes, as the template writes them
    # (`limit_rate Nk;`, only above 0: a negative value is no limit).
    ("limit-rate", "64", "limit_rate", 64, "0"),
    ("limit-rate", "-5", "limit_rate", 0, "0"),
    ("limit-rate-after", "128", "limit_rate_after", 128, "0"),
    (
        "proxy-set-headers",
        "ingress/custom-headers",
        "proxy_set_headers",
        "ingress/custom-headers",
        "",
    ),
    ("proxy-set-headers", "", "proxy_set_headers", None, ""),
    (
        "global-allowed-response-headers",
        "X-Frame-Options, Content-Security-Policy,",
        "allowed_response_headers",
        ("X-Frame-Options", "Content-Security-Policy"),
        "",
    ),
]


@pytest.mark.parametrize(
    ("key", "value", "setting", "expected"),
    [pytest.param(*row[:4], id=f"{row[0]}={row[1]}") for row in APPLIED_ROWS],
)
def test_applied_keys_become_settings(key: str, value: str, setting: str, expected: Any) -> None:
    reading = read({key: value}, REF)
    assert reading.values == {setting: expected}
    assert reading.problems() == ()
    assert getattr(overlay(Settings(), reading), setting) == expected


@pytest.mark.parametrize("key", sorted({row[0] for row in APPLIED_ROWS}))
def test_ingress_nginx_defaults_read(key: str) -> None:
    (default,) = {row[4] for row in APPLIED_ROWS if row[0] == key}
    assert read({key: default}, REF).problems() == ()


def test_every_applied_key_has_a_row() -> None:
    assert {row[0] for row in APPLIED_ROWS} | set(_FORWARDED) == set(APPLIED) | set(_FORWARDED)


def test_applied_keys_are_the_supported_catalogue_rows() -> None:
    applied = set(APPLIED) | set(_FORWARDED)
    rows = {k for k, e in CONFIGMAP_KEYS.items() if e.status in ("supported", "different")}
    # The global-auth-* keys make one step, read apart (controller/compiler/extauth.py).
    assert applied == rows - set(GLOBAL_KEYS)
    assert {a.setting for a in (*APPLIED.values(), *_FORWARDED.values())} <= set(
        Settings.model_fields
    )


def test_catalogue_names_are_ingress_nginx_keys() -> None:
    listed = ROOT / "tests" / "data" / "ingress-nginx-configmap-keys.txt"
    names = {line.strip() for line in listed.read_text().splitlines()}
    names -= {n for n in names if not n or n.startswith("#")}
    assert names == CONFIGMAP_NAMES
    assert set(CONFIGMAP_KEYS) <= CONFIGMAP_NAMES


# (data, trusted_proxies): CM#use-forwarded-headers (bool, "false") with CM#proxy-real-ip-cidr
# ([]string, "0.0.0.0/0"); the list alone does nothing.
FORWARDED_ROWS: list[tuple[dict[str, str], tuple[str, ...] | None]] = [
    ({"use-forwarded-headers": "true"}, ("0.0.0.0/0",)),
    (
        {"use-forwarded-headers": "true", "proxy-real-ip-cidr": "10.0.0.0/8, 2001:db8::/32"},
        ("10.0.0.0/8", "2001:db8::/32"),
    ),
    ({"use-forwarded-headers": "false", "proxy-real-ip-cidr": "10.0.0.0/8"}, None),
    ({"proxy-real-ip-cidr": "10.0.0.0/8"}, None),
]


@pytest.mark.parametrize(("data", "trusted"), FORWARDED_ROWS)
def test_forwarded_headers(data: dict[str, str], trusted: tuple[str, ...] | None) -> None:
    reading = read(data, REF)
    assert reading.values.get("trusted_proxies") == trusted
    assert reading.problems() == ()


# ---- precedence: flag > environment > ConfigMap > default --------------------------------------

PRECEDENCE_ROWS: list[tuple[str, dict[str, Any], dict[str, str], dict[str, str], Any]] = [
    # (id, flags, environment, ConfigMap data, upstream_read_timeout)
    ("default", {}, {}, {}, 60.0),
    ("configmap", {}, {}, {"proxy-read-timeout": "120"}, 120.0),
    ("flag-wins", {"upstream_read_timeout": 30}, {}, {"proxy-read-timeout": "120"}, 30.0),
    ("env-wins", {}, {"PORTICO_UPSTREAM_READ_TIMEOUT": "45"}, {"proxy-read-timeout": "120"}, 45.0),
    # A flag given with the default's value is still explicit.
    ("flag-at-default", {"upstream_read_timeout": 60}, {}, {"proxy-read-timeout": "120"}, 60.0),
]


@pytest.mark.parametrize(
    ("flags", "environ", "data", "expected"),
    [pytest.param(*row[1:], id=row[0]) for row in PRECEDENCE_ROWS],
)
def test_precedence(
    flags: dict[str, Any], environ: dict[str, str], data: dict[str, str], expected: float
) -> None:
    base = Settings.from_sources(flags, environ)
    reading = read(data, REF, frozenset(base.model_fields_set))
    effective = overlay(base, reading)
    assert effective.upstream_read_timeout == expected
    # Overlaying again (a later version of the ConfigMap) starts from the same explicit set.
    assert overlay(base, read({}, REF)).upstream_read_timeout == (
        expected if flags or environ else 60.0
    )


def test_explicit_setting_is_named_in_the_row() -> None:
    base = Settings.from_sources({"trusted_proxies": "192.0.2.0/24"}, {})
    reading = read({"use-forwarded-headers": "true"}, REF, frozenset(base.model_fields_set))
    assert "trusted_proxies" not in reading.values
    assert "--trusted-proxies is given explicitly" in reading.rows[0].detail
    assert overlay(base, reading).trusted_proxies == ("192.0.2.0/24",)


# ---- keys without effect: invalid, unsupported, unknown -----------------------------------------

PROBLEM_ROWS: list[tuple[str, str, str, str | None, str]] = [
    # (key, value, status, problem reason, in the detail)
    # Invalid values keep the setting's value (ingress-nginx keeps its default; an int field
    # does not take "30s" there either: CM#proxy-read-timeout is an int).
    ("proxy-read-timeout", "30s", "unsupported", INVALID_VALUE, "whole number of seconds"),
    ("proxy-body-size", "1 MB", "unsupported", INVALID_VALUE, "a size like"),
    ("hsts", "yes", "unsupported", INVALID_VALUE, '"true" or "false"'),
    ("ssl-protocols", "TLSv1 TLSv1.1", "unsupported", INVALID_VALUE, "TLSv1.2 and TLSv1.3"),
    ("proxy-real-ip-cidr", "10.0.0.0/33", "unsupported", INVALID_VALUE, "not an IP address"),
    ("worker-processes", "0", "unsupported", INVALID_VALUE, '"auto"'),
    ("use-proxy-protocol", "on", "unsupported", INVALID_VALUE, '"true" or "false"'),
    ("http2-max-requests", "0", "unsupported", INVALID_VALUE, "above 0"),
    ("http2-max-concurrent-streams", "0", "unsupported", INVALID_VALUE, "above 0"),
    # Access control that does not read fails closed (see test_invalid_source_range_...).
    ("whitelist-source-range", "10.0.0.0/8, example.com", "unsupported", INVALID_VALUE, "503"),
    ("denylist-source-range", "10.0.0.0/255.0.0.0", "unsupported", INVALID_VALUE, "503"),
    # Documented keys Portico does not apply: the catalogue row, or "no equivalent".
    ("block-cidrs", "192.0.2.0/24", "unsupported", ACCESS_CONTROL_NOT_ENFORCED, "403"),
    ("custom-http-errors", "404,503", "unsupported", UNSUPPORTED_KEY, "annotation"),
    ("use-gzip", "true", "unsupported", UNSUPPORTED_KEY, "no equivalent"),
    ("hsts-preload", "true", "unsupported", UNSUPPORTED_KEY, "preload"),
    # ... unless the value is what Portico does anyway (the catalogue's "is what Portico does").
    ("hsts-preload", "false", "supported", None, "preload"),
    ("forwarded-for-header", "X-Forwarded-For", "supported", None, "X-Forwarded-For only"),
    ("custom-http-errors", "", "supported", None, "annotation"),
    ("global-auth-url", " ", "supported", None, "every Ingress"),
    # Not an ingress-nginx key: the nearest one is suggested.
    ("proxy-bodysize", "1m", "unknown", UNKNOWN_KEY, 'did you mean "proxy-body-size"'),
    ("enable-brottli", "true", "unknown", UNKNOWN_KEY, 'did you mean "enable-brotli"'),
    ("portico-thing", "1", "unknown", UNKNOWN_KEY, "not a key of the ingress-nginx ConfigMap"),
]


@pytest.mark.parametrize(
    ("key", "value", "status", "reason", "says"),
    [pytest.param(*row, id=f"{row[0]}={row[1]}") for row in PROBLEM_ROWS],
)
def test_keys_without_effect(
    key: str, value: str, status: str, reason: str | None, says: str
) -> None:
    reading = read({key: value}, REF)
    (row,) = reading.rows
    assert (row.status, row.reason) == (status, reason)
    assert says in row.detail
    assert reading.values == {}  # no setting changes
    problems = reading.problems()
    assert [p.reason for p in problems] == ([reason] if reason else [])
    for problem in problems:
        assert (problem.kind, problem.ref) == ("ConfigMap", REF)
        assert problem.message.startswith(f"key {key}: ")


@pytest.mark.parametrize(
    ("value", "status"),
    [("TLSv1.2 TLSv1.3", "supported"), ("TLSv1.3", "supported"), ("TLSv1.2", "different")],
)
def test_a_different_row_is_supported_when_the_value_matches(value: str, status: str) -> None:
    # ssl-protocols: Portico accepts every version from the oldest listed.
    (row,) = read({"ssl-protocols": value}, REF).rows
    assert (row.status, row.reason) == (status, None)


def test_compute_full_forwarded_for_matches_when_it_follows_use_forwarded_headers() -> None:
    same = {"compute-full-forwarded-for": "true", "use-forwarded-headers": "true"}
    assert read(same, REF).problems() == ()
    other = {"compute-full-forwarded-for": "false", "use-forwarded-headers": "true"}
    assert [p.reason for p in read(other, REF).problems()] == [UNSUPPORTED_KEY]


def test_invalid_value_keeps_the_default_and_the_other_keys_apply() -> None:
    reading = read({"proxy-read-timeout": "2m", "proxy-send-timeout": "90"}, REF)
    effective = overlay(Settings(), reading)
    assert effective.upstream_read_timeout == Settings().upstream_read_timeout
    assert effective.upstream_send_timeout == 90.0


def test_missing_configmap_is_a_problem_and_changes_nothing() -> None:
    reading = read(None, REF)
    assert [p.reason for p in reading.problems()] == [NOT_FOUND]
    assert overlay(Settings(), reading) == Settings()


# ---- compile settings: ssl-redirect, global access control --------------------------------------

HOST = "app.example.com"


def _compiled(data: dict[str, str], annotations: dict[str, str] | None = None, **flags: Any) -> Any:
    base = Settings.from_sources(flags, {})
    reading = read(data, REF, frozenset(base.model_fields_set))
    settings = compile_settings(overlay(base, reading), reading)
    store = store_of(
        ingress_class(),
        service("web"),
        ingress(rules=[rule(HOST)], tls=[tls_entry(None, HOST)], annotations=annotations),
    )
    return store, compile_view(store, settings)


def _https(data: dict[str, str], annotations: dict[str, str] | None = None, **flags: Any) -> Any:
    store, result = _compiled(data, annotations, **flags)
    answer = explain(result, store, f"https://{HOST}/", {})
    return answer["status"], answer["reason"]


@pytest.mark.parametrize(
    ("data", "status"),
    [({}, 308), ({"ssl-redirect": "false"}, 503), ({"ssl-redirect": "true"}, 308)],
)
def test_ssl_redirect_default_for_ingresses_without_the_annotation(
    data: dict[str, str], status: int
) -> None:
    store, result = _compiled(data)
    # 503: routed to the Service, which has no endpoints here; 308: redirected to HTTPS.
    assert explain(result, store, f"http://{HOST}/", {})["status"] == status


def test_ssl_redirect_annotation_beats_the_configmap() -> None:
    base = Settings()
    reading = read({"ssl-redirect": "false"}, REF)
    settings = compile_settings(overlay(base, reading), reading)
    annotated = ingress(
        rules=[rule(HOST)],
        tls=[tls_entry(None, HOST)],
        annotations={"nginx.ingress.kubernetes.io/ssl-redirect": "true"},
    )
    store = store_of(ingress_class(), service("web"), annotated)
    assert explain(compile_view(store, settings), store, f"http://{HOST}/", {})["status"] == 308


@pytest.mark.parametrize(
    "data",
    [{"block-cidrs": "192.0.2.0/24"}],
)
def test_unenforced_global_access_control_answers_403(data: dict[str, str]) -> None:
    # Like an Ingress's own unenforced annotation: its routes answer, nothing falls through.
    assert _https(data) == (403, ACCESS_CONTROL_NOT_ENFORCED)
    assert read(data, REF).unenforced == tuple(data)
    # The operator may choose to serve without it (503: the Service has no endpoints here).
    assert _https(data, serve_without_access_control=True) == (503, "NoEndpoints")


def _ranges(data: dict[str, str], annotations: dict[str, str] | None = None) -> Any:
    _, result = _compiled(data, annotations)
    (vhost,) = result.snapshot.routes.virtual_hosts
    return vhost.rules[0].options.step(SourceRanges)


# (ConfigMap data, the Ingress's annotations, (allow, deny) of its source-range step):
# CM#whitelist-source-range and CM#denylist-source-range are each Ingress's default, "overwritten
# by an annotation on an Ingress rule".
GLOBAL_RANGE_ROWS: list[tuple[dict[str, str], dict[str, str], tuple[Any, ...] | None]] = [
    ({"whitelist-source-range": "10.0.0.1/8"}, {}, (("10.0.0.0/8",), ())),
    ({"denylist-source-range": "192.0.2.7, ::1"}, {}, ((), ("192.0.2.7/32", "::1/128"))),
    (
        {"whitelist-source-range": "10.0.0.0/8", "denylist-source-range": "10.1.0.0/16"},
        {N + "whitelist-source-range": "192.0.2.0/24"},
        (("192.0.2.0/24",), ("10.1.0.0/16",)),
    ),
    ({"whitelist-source-range": ""}, {}, None),
]


@pytest.mark.parametrize(("data", "annotations", "ranges"), GLOBAL_RANGE_ROWS)
def test_global_source_ranges_apply_to_ingresses_without_their_own(
    data: dict[str, str], annotations: dict[str, str], ranges: tuple[Any, ...] | None
) -> None:
    step = _ranges(data, annotations)
    assert (None if step is None else (step.allow, step.deny)) == ranges
    assert read(data, REF).problems() == ()


@pytest.mark.parametrize("key", ["whitelist-source-range", "denylist-source-range"])
def test_invalid_global_source_range_fails_closed(key: str) -> None:
    # Consistent with an annotation that does not read: 503, never served unrestricted.
    data = {key: "10.0.0.0/8, example.com"}
    assert _https(data) == (503, "InvalidSourceRange")
    assert read(data, REF).unenforced == ()
    # An Ingress with its own list of that kind does not take the ConfigMap's.
    own = {N + key: "192.0.2.0/24"}
    assert _https(data, own) == (503, "NoEndpoints")
    # A flag given explicitly wins over the ConfigMap: its value applies, nothing fails.
    flag = "allow_source_ranges" if key.startswith("white") else "deny_source_ranges"
    assert _https(data, **{flag: "192.0.2.0/24"}) == (503, "NoEndpoints")


# ---- where the ConfigMap comes from --------------------------------------------------------------


def test_found_in_a_manifest_directory(tmp_path: Path) -> None:
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ingress-nginx-controller, "
        "namespace: ingress-nginx}\ndata: {hsts: 'true'}\n"
    )
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "list.yaml").write_text(
        "apiVersion: v1\nkind: List\nitems:\n"
        "- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: other, namespace: ingress-nginx}\n"
        "  data: {hsts: 'true'}\n"
        "- apiVersion: v1\n  kind: ConfigMap\n"
        "  metadata: {name: ingress-nginx-controller, namespace: ingress-nginx}\n"
        "  data: {hsts: 'false', proxy-read-timeout: 120}\n"
    )
    (tmp_path / "broken.yaml").write_text("a: [\n")
    assert find_in_directory(tmp_path, REF) == {"hsts": "false", "proxy-read-timeout": "120"}
    assert find_in_directory(tmp_path, "ingress-nginx/missing") is None


@pytest.mark.usefixtures("cli_logging_off")
def test_check_reads_the_configmap_of_the_directory(tmp_path: Path) -> None:
    import io

    from controller.cli import main

    (tmp_path / "app.yaml").write_text(
        "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata: {name: portico}\n"
        "spec: {controller: portico.dev/ingress-controller}\n---\n"
        "apiVersion: v1\nkind: ConfigMap\n"
        "metadata: {name: ingress-nginx-controller, namespace: ingress-nginx}\n"
        "data: {proxy-bodysize: 8m, hsts: 'false'}\n"
    )
    out = io.StringIO()
    assert main(["check", str(tmp_path)], out) == 0  # not named: not read
    out = io.StringIO()
    assert main(["check", "--nginx-configmap", REF, str(tmp_path)], out) == 1
    assert (
        f"ConfigMap {REF}: UnknownConfigMapKey: key proxy-bodysize: not a key of the "
        'ingress-nginx ConfigMap (did you mean "proxy-body-size"?)' in out.getvalue()
    )
    out = io.StringIO()
    assert main(["check", "--nginx-configmap", "ingress-nginx/other", str(tmp_path)], out) == 1
    assert "ConfigMapNotFound" in out.getvalue()


@pytest.mark.usefixtures("cli_logging_off")
def test_docs_are_generated_from_the_tables() -> None:
    import io

    from controller.cli import main
    from controller.configmap import markdown

    out = io.StringIO()
    assert main(["docs", "configmap"], out, io.StringIO()) == 0
    assert out.getvalue() == markdown()
    assert (ROOT / "docs" / "configmap.md").read_text() == markdown(), (
        "docs/configmap.md is stale: run `portico docs configmap > docs/configmap.md`"
    )
    for name in CONFIGMAP_KEYS:
        assert f"| `{name}` |" in markdown(), name
