"""Compiler tables for regex paths and rewrites: the annotations' grammar, which hosts become
regex hosts and in what order their rules are tried, the rewrite and app-root steps, and
invalid patterns as problems on their Ingress alone."""

from __future__ import annotations

from typing import Any

import pytest

from controller.compiler import CompileSettings, compile_view
from controller.compiler.annotations import parse_annotations
from controller.compiler.catalogue import ANNOTATIONS
from proxy.config import AppRoot, HTTPSRedirect, PathRule, Rewrite, VirtualHost
from tests.kube_factory import (
    ingress,
    ingress_class,
    path,
    rule,
    service,
    store_of,
    tls_entry,
)

N = "nginx.ingress.kubernetes.io/"
P = "portico.dev/"
IS = "ImplementationSpecific"

# ---- the annotations' grammar -----------------------------------------------------------------

# (annotation, value, IngressOptions field, parsed value); ingress-nginx's rewrite/main.go and
# xforwardedprefix/main.go validators (RegexPathWithCapture), annotations.md "Rewrite".
VALID = [
    ("use-regex", "true", "use_regex", True),
    ("use-regex", "False", "use_regex", False),
    ("rewrite-target", "/", "rewrite_target", "/"),
    ("rewrite-target", "/new/backend/$1", "rewrite_target", "/new/backend/$1"),
    ("rewrite-target", "/$2", "rewrite_target", "/$2"),
    ("rewrite-target", "$1", "rewrite_target", "$1"),
    ("x-forwarded-prefix", "/test/value", "x_forwarded_prefix", "/test/value"),
    ("x-forwarded-prefix", "", "x_forwarded_prefix", ""),
    ("app-root", "/foo", "app_root", "/foo"),
    ("app-root", "/app1/index.html", "app_root", "/app1/index.html"),
    ("preserve-trailing-slash", "true", "preserve_trailing_slash", True),
]


@pytest.mark.parametrize(("name", "value", "field", "parsed"), VALID)
def test_valid(name: str, value: str, field: str, parsed: Any) -> None:
    opts, errors = parse_annotations({N + name: value})
    assert errors == ()
    assert getattr(opts, field) == parsed


# (annotation, value, why): outside the validators, or what Portico refuses on purpose.
INVALID = [
    ("use-regex", "yes", "true"),
    ("rewrite-target", "/new?x=1", "letters"),  # RegexPathWithCapture has no "?"
    ("rewrite-target", "/$host/x", "nginx variables"),  # an nginx variable, not a capture
    ("rewrite-target", "https://other.example/x", 'starting with "/"'),  # nginx: a redirect
    ("rewrite-target", "new", 'starting with "/"'),
    ("rewrite-target", "/a b", "letters"),
    ("x-forwarded-prefix", "/a\tb", "letters"),
    ("app-root", "foo", 'starting with "/"'),  # url.ParseRequestURI refuses a relative path
    ("app-root", "http://x.example/foo", 'starting with "/"'),  # "only allows absolute paths"
    ("app-root", "/$uri", 'starting with "/"'),
    ("preserve-trailing-slash", "on", "true"),
]


@pytest.mark.parametrize(("name", "value", "says"), INVALID)
def test_invalid(name: str, value: str, says: str) -> None:
    _, errors = parse_annotations({N + name: value})
    assert [e.annotation for e in errors] == [N + name]
    assert says in errors[0].reason


def test_portico_prefix_wins() -> None:
    opts, _ = parse_annotations({N + "rewrite-target": "/a", P + "rewrite-target": "/b"})
    assert opts.rewrite_target == "/b"


@pytest.mark.parametrize(
    "name",
    ["use-regex", "rewrite-target", "app-root", "x-forwarded-prefix", "preserve-trailing-slash"],
)
def test_catalogue_rows_are_supported(name: str) -> None:
    assert ANNOTATIONS[name].status in ("supported", "different")


# ---- hosts and their rules --------------------------------------------------------------------


def _compile(*raws: dict[str, Any]) -> tuple[dict[str, VirtualHost], list[tuple[str, str, str]]]:
    result = compile_view(
        store_of(ingress_class(), service("web"), service("api"), *raws), CompileSettings()
    )
    vhosts = {v.host: v for v in result.snapshot.routes.virtual_hosts}
    problems = [(p.ref, p.reason, p.message) for p in result.problems]
    return vhosts, problems


def _rules(vhost: VirtualHost) -> list[tuple[str, str, str]]:
    return [(r.path, r.match, r.ingress) for r in vhost.rules]


H = "rewrite.bar.com"


def test_plain_host_is_untouched() -> None:
    vhosts, problems = _compile(ingress("a", rules=[rule(H, path("/foo"))]))
    assert problems == []
    assert _rules(vhosts[H]) == [("/foo", "prefix", "default/a")]


# (case, Ingresses as (name, annotations, [(path, pathType)]), expected (path, match, Ingress)
# in the order tried). Oldest Ingress first (created 0, 1, ...).
HOSTS: list[tuple[str, list[tuple[str, dict[str, str], list[tuple[str, str]]]], list[Any]]] = [
    (
        # rewrite.go "should use correct longest path match": the "/" Ingress with a rewrite
        # makes the acme path a regex too, longest first.
        "longest path first",
        [
            ("kube-lego", {}, [("/.well-known/acme/challenge", "Prefix")]),
            ("rewrite-index", {N + "rewrite-target": "/new/backend"}, [("/", "Prefix")]),
        ],
        [
            ("/.well-known/acme/challenge", "regex", "default/kube-lego"),
            ("/", "regex", "default/rewrite-index"),
        ],
    ),
    (
        # rewrite.go "should use ~* location modifier if regex annotation is present"
        "a plain Prefix path of another Ingress becomes ^/foo",
        [
            ("foo", {}, [("/foo", "Prefix")]),
            (
                "regex",
                {N + "use-regex": "true", N + "rewrite-target": "/new/backend"},
                [("/foo.+", IS)],
            ),
        ],
        [("/foo.+", "regex", "default/regex"), ("/foo", "regex", "default/foo")],
    ),
    (
        # rewrite.go "should fail to use longest match for documented warning"
        "the longer regex goes first, even over a literal match",
        [
            ("foo", {}, [("/foo/bar/bar", "Prefix")]),
            ("regex", {N + "use-regex": "true"}, [("/foo/bar/[a-z]{3}", IS)]),
        ],
        [("/foo/bar/[a-z]{3}", "regex", "default/regex"), ("/foo/bar/bar", "regex", "default/foo")],
    ),
    (
        # controller.go: locations sorted by path, descending, then by length (stable)
        "equal lengths: reverse order of the path text",
        [("r", {N + "use-regex": "true"}, [("/aa", IS), ("/bb", IS), ("/ab", IS)])],
        [
            ("/bb", "regex", "default/r"),
            ("/ab", "regex", "default/r"),
            ("/aa", "regex", "default/r"),
        ],
    ),
    (
        # template.go buildLocation: with the regex modifier an Exact path is `~* "^/exact"`
        "an Exact path becomes a prefix expression",
        [("r", {N + "use-regex": "true"}, [("/exact", "Exact"), ("/", IS)])],
        [("/exact", "regex", "default/r"), ("/", "regex", "default/r")],
    ),
    (
        # needsRewrite: a target equal to the path is no rewrite, so no regex
        "rewrite-target equal to the path",
        [("r", {N + "rewrite-target": "/same"}, [("/same", "Prefix")])],
        [("/same", "prefix", "default/r")],
    ),
]


@pytest.mark.parametrize(
    ("ingresses", "expected"), [c[1:] for c in HOSTS], ids=[c[0] for c in HOSTS]
)
def test_regex_host_rules(
    ingresses: list[tuple[str, dict[str, str], list[tuple[str, str]]]], expected: list[Any]
) -> None:
    raws = [
        ingress(
            name,
            rules=[rule(H, *(path(p, path_type=t) for p, t in paths))],
            annotations=annotations,
            created=i,
        )
        for i, (name, annotations, paths) in enumerate(ingresses)
    ]
    vhosts, problems = _compile(*raws)
    assert problems == []
    assert _rules(vhosts[H]) == expected


def test_regex_applies_to_its_host_only() -> None:
    vhosts, _ = _compile(
        ingress(
            "r", rules=[rule(H, path("/a.*", path_type=IS))], annotations={N + "use-regex": "true"}
        ),
        ingress("o", rules=[rule("other.example", path("/a"))], created=1),
    )
    assert _rules(vhosts[H]) == [("/a.*", "regex", "default/r")]
    assert _rules(vhosts["other.example"]) == [("/a", "prefix", "default/o")]


def test_rewrite_step_is_last_with_the_path_as_written() -> None:
    annotations = {
        N + "rewrite-target": "/$2",
        N + "x-forwarded-prefix": "/something",
        N + "proxy-body-size": "1k",
    }
    vhosts, _ = _compile(
        ingress(
            "r",
            rules=[rule(H, path("/something(/|$)(.*)", path_type=IS))],
            annotations=annotations,
        )
    )
    (only,) = vhosts[H].rules
    assert only.options.policy[-1] == Rewrite("/something(/|$)(.*)", "/$2", "/something")


def test_rules_of_other_ingresses_get_no_rewrite() -> None:
    vhosts, _ = _compile(
        ingress("a", rules=[rule(H, path("/a"))]),
        ingress(
            "r", rules=[rule(H, path("/r"))], annotations={N + "rewrite-target": "/"}, created=1
        ),
    )
    steps = {r.ingress: r.options.step(Rewrite) for r in vhosts[H].rules}
    assert steps == {"default/a": None, "default/r": Rewrite("/r", "/")}


# ---- invalid patterns: problems on their Ingress alone -----------------------------------------

# (path, pathType, what the problem says)
INVALID_PATHS = [
    ("/(a)\\1", IS, "backreferences"),
    ("/(?=x)", IS, "lookahead"),
    ("/a[", IS, "not a regular expression Portico can match"),
    ("/" + "x" * 1100, IS, "longer than 1024"),
]


@pytest.mark.parametrize(("bad", "path_type", "says"), INVALID_PATHS)
def test_invalid_regex_path_is_a_problem_on_its_ingress(
    bad: str, path_type: str, says: str
) -> None:
    vhosts, problems = _compile(
        ingress(
            "r",
            rules=[rule(H, path(bad, path_type=path_type), path("/ok", path_type=IS))],
            annotations={N + "use-regex": "true"},
        ),
        ingress("other", rules=[rule("other.example", path("/"))], created=1),
    )
    assert [(ref, reason) for ref, reason, _ in problems] == [("default/r", "InvalidPath")]
    assert says in problems[0][2]
    assert _rules(vhosts[H]) == [("/ok", "regex", "default/r")]
    assert _rules(vhosts["other.example"]) == [("/", "prefix", "default/other")]


def test_plain_path_of_another_ingress_that_is_no_regex_is_dropped() -> None:
    # "/a(b" is a valid Prefix path, but not an expression once the host is a regex host.
    vhosts, problems = _compile(
        ingress("plain", rules=[rule(H, path("/a(b"), path("/c"))]),
        ingress(
            "r",
            rules=[rule(H, path("/r.*", path_type=IS))],
            annotations={N + "use-regex": "true"},
            created=1,
        ),
    )
    assert [(ref, reason) for ref, reason, _ in problems] == [("default/plain", "InvalidPath")]
    assert "matched as a regular expression" in problems[0][2]
    assert _rules(vhosts[H]) == [("/r.*", "regex", "default/r"), ("/c", "regex", "default/plain")]


def test_regex_path_without_use_regex_keeps_the_path_rules() -> None:
    _, problems = _compile(ingress("r", rules=[rule(H, path("/a[0-9]", path_type=IS))]))
    assert [(ref, reason) for ref, reason, _ in problems] == [("default/r", "InvalidPath")]


# ---- app-root and preserve-trailing-slash ------------------------------------------------------


def test_app_root_applies_to_every_rule_of_the_host() -> None:
    # nginx.tmpl: `if ($uri = /) { return 302 ...; }` at server level, whichever location.
    vhosts, _ = _compile(
        ingress(
            "a",
            rules=[rule(H, path("/"))],
            default_backend={"service": {"name": "web", "port": {"number": 80}}},
        ),
        ingress(
            "root", rules=[rule(H, path("/app"))], annotations={N + "app-root": "/app"}, created=1
        ),
        ingress("b", rules=[rule("other.example", path("/"))], created=2),
    )
    assert [r.options.policy[0] for r in vhosts[H].rules] == [AppRoot("/app")] * 2
    fallback = vhosts[H].fallback
    assert isinstance(fallback, PathRule) and fallback.options.policy[0] == AppRoot("/app")
    assert vhosts["other.example"].rules[0].options.step(AppRoot) is None


def test_preserve_trailing_slash_is_on_the_https_redirect() -> None:
    vhosts, _ = _compile(
        ingress(
            "t",
            rules=[rule(H, path("/"))],
            annotations={N + "preserve-trailing-slash": "true"},
            tls=[tls_entry(None, H)],
        )
    )
    assert vhosts[H].rules[0].options.step(HTTPSRedirect) == HTTPSRedirect(
        preserve_trailing_slash=True
    )
