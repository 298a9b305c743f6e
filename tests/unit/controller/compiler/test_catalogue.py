"""The annotation catalogue: complete against ingress-nginx, equal to the parser, docs in step."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from controller.cli import main
from controller.compiler.annotations import PARSED_NAMES
from controller.compiler.catalogue import (
    ANNOTATIONS,
    CATEGORIES,
    CONFIGMAP_KEYS,
    PORTICO_PREFIX,
    RETIRED,
    STATUSES,
    markdown,
    nearest,
    supported_names,
)
from controller.compiler.extauth import GLOBAL_KEYS
from controller.compiler.extauth import PARSERS as EXTAUTH_PARSERS

ROOT = Path(__file__).resolve().parents[4]
NAMES_FILE = ROOT / "tests" / "data" / "ingress-nginx-annotations.txt"
DOCS = ROOT / "docs" / "annotations.md"


def _read_names() -> tuple[set[str], set[str]]:
    """(names on the annotations page, names only ingress-nginx's parsers read): the second
    set follows the comment line naming the parsers' source files."""
    page: set[str] = set()
    code: set[str] = set()
    current = page
    for line in NAMES_FILE.read_text().splitlines():
        if line.startswith("#"):
            if "main.go" in line:
                current = code
        elif line.strip():
            current.add(line.strip())
    return page, code


PAGE_NAMES, CODE_NAMES = _read_names()


def test_the_names_file_says_where_it_comes_from() -> None:
    header = NAMES_FILE.read_text().splitlines()[0]
    assert re.search(r"kubernetes/ingress-nginx @ [0-9a-f]{40}", header), header
    assert "docs/user-guide/nginx-configuration/annotations.md" in NAMES_FILE.read_text()
    # The page of v1.15.1 names 130 annotations; its parsers read 8 more.
    assert (len(PAGE_NAMES), len(CODE_NAMES)) == (130, 8)
    assert "whitelist-source-range" in PAGE_NAMES and "allowlist-source-range" in CODE_NAMES


def test_catalogue_names_are_ingress_nginx_names() -> None:
    assert set(ANNOTATIONS) == PAGE_NAMES | CODE_NAMES
    assert {n for n, e in ANNOTATIONS.items() if not e.documented} == CODE_NAMES


def test_supported_rows_are_what_the_parser_parses() -> None:
    assert supported_names() == PARSED_NAMES


def test_snippets_are_refused_by_ingress_nginx_s_own_rule() -> None:
    # ingress-nginx's admission check refuses keys ending in "-snippet" (controller.go).
    refused = {n for n, e in ANNOTATIONS.items() if e.status == "refused"}
    assert refused == {n for n in ANNOTATIONS if n.endswith("-snippet")}
    assert len(refused) == 5


ACCESS_CONTROL = {
    "satisfy",
    "enable-global-auth",
    "whitelist-source-range",
    "allowlist-source-range",
    "denylist-source-range",
}


SOURCE_RANGES = ("allowlist-source-range", "whitelist-source-range", "denylist-source-range")
# Client certificates (issue 18 item 3): enforced, so out of the fail-closed list.
CLIENT_TLS = (
    "auth-tls-secret",
    "auth-tls-verify-client",
    "auth-tls-verify-depth",
    "auth-tls-error-page",
    "auth-tls-pass-certificate-to-upstream",
    "auth-tls-match-cn",
)
# External auth and satisfy (issue 18: controller/compiler/extauth.py).
EXTERNAL_AUTH = {n for n in EXTAUTH_PARSERS}


BASIC_AUTH = ("auth-type", "auth-secret", "auth-secret-type", "auth-realm")


def test_access_control_rows() -> None:
    expected = {n for n in ANNOTATIONS if n.startswith("auth-")} | ACCESS_CONTROL
    assert {n for n, e in ANNOTATIONS.items() if e.access_control} == expected
    # Every one of them fails closed today, except the refused auth-snippet and those Portico
    # enforces: the source ranges, basic auth, external auth, client certificates.
    closed = {n for n, e in ANNOTATIONS.items() if e.fails_closed}
    assert closed == expected - {
        "auth-snippet",
        *SOURCE_RANGES,
        *BASIC_AUTH,
        *EXTERNAL_AUTH,
        *CLIENT_TLS,
    }
    assert all(ANNOTATIONS[n].status in ("supported", "different") for n in EXTERNAL_AUTH)
    assert all(ANNOTATIONS[n].status == "supported" for n in SOURCE_RANGES)
    assert all(ANNOTATIONS[n].status in ("supported", "different") for n in BASIC_AUTH)
    assert all(ANNOTATIONS[n].status in ("supported", "different") for n in CLIENT_TLS)


@pytest.mark.parametrize("name", sorted(ANNOTATIONS))
def test_row_is_complete(name: str) -> None:
    e = ANNOTATIONS[name]
    assert e.name == name
    assert e.status in STATUSES and e.category in CATEGORIES
    assert e.detail.strip() and e.detail.rstrip().endswith((".", ")"))
    if e.status in ("supported", "different"):
        assert e.portico == PORTICO_PREFIX + name
    if e.fails_closed:
        assert "fail closed" in e.describe()
        assert "fail closed" not in e.describe(note=False)


def test_configmap_rows_use_the_same_shape() -> None:
    # controller/configmap.py applies the supported and different rows (tests/unit/
    # test_configmap.py keeps the two equal); the unsupported ones say what to do instead.
    for e in CONFIGMAP_KEYS.values():
        assert e.status in STATUSES and e.category in CATEGORIES
        assert e.detail.strip() and e.detail.rstrip().endswith((".", ")"))
        if e.status in ("supported", "different") and e.name not in GLOBAL_KEYS:
            assert e.portico.startswith("--")
    assert CONFIGMAP_KEYS["global-auth-url"].access_control
    assert CONFIGMAP_KEYS["proxy-body-size"].portico == "--max-body-bytes"


NEAREST_ROWS = [
    # (written, suggested)
    ("rewite-target", "rewrite-target"),
    ("server-snippets", "server-snippet"),
    ("ssl-redirects", "ssl-redirect"),
    ("Proxy-Body-Size", "proxy-body-size"),
    ("whitelist-source-rnage", "whitelist-source-range"),
    ("limit-rsp", "limit-rps"),
    # Invented names are too far from any catalogued one.
    ("auth-enable", None),
    ("rewrite-enable", None),
    ("limit-enable", None),
    ("foo", None),
]


@pytest.mark.parametrize(("written", "suggested"), NEAREST_ROWS)
def test_nearest(written: str, suggested: str | None) -> None:
    assert nearest(written) == suggested


def test_retired_names_are_not_catalogued() -> None:
    assert not set(RETIRED) & set(ANNOTATIONS)


def test_docs_are_generated_from_the_table() -> None:
    out = io.StringIO()
    assert main(["docs", "annotations"], out, io.StringIO()) == 0
    assert out.getvalue() == markdown()
    assert DOCS.read_text() == markdown(), (
        "docs/annotations.md is stale: run `portico docs annotations > docs/annotations.md`"
    )


def test_docs_list_every_annotation() -> None:
    text = markdown()
    for name in ANNOTATIONS:
        assert f"| `{name}`" in text, name
