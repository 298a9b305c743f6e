"""Regex paths and rewrites through real sockets, as ingress-nginx applies its annotations.

Each host below is one or more Ingresses compiled by the real compiler from ingress-nginx's
annotations (`use-regex`, `rewrite-target`, `x-forwarded-prefix`, `app-root`,
`preserve-trailing-slash`), in front of one echo pod; each row sends one request and checks what
the pod saw (its request target, its X-Forwarded-Prefix) or what the client got (status,
Location). Rows cite ingress-nginx's e2e tests (test/e2e/annotations/*.go) or its docs.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import pytest
from backends import Client, Pod
from tls_env import compiled, running

from tests.kube_factory import ingress, path, rule, tls_entry

pytestmark = [pytest.mark.uvloop, pytest.mark.timeout(30)]

N = "nginx.ingress.kubernetes.io/"
IS = "ImplementationSpecific"


def _ing(
    name: str,
    host: str,
    paths: list[tuple[str, str]],
    created: int = 0,
    tls: bool = False,
    **ann: str,
) -> dict[str, Any]:
    return ingress(
        f"{host.partition('.')[0]}-{name}",
        rules=[rule(host, *(path(p, path_type=t) for p, t in paths))],
        annotations={N + k.replace("_", "-"): v for k, v in ann.items()},
        tls=[tls_entry(None, host)] if tls else None,
        created=created,
    )


INGRESSES = [
    # rewrite.go "should write rewrite logs": a target without captures
    _ing("a", "log.test", [("/something", "Prefix")], rewrite_target="/"),
    # rewrite.go "should use correct longest path match"
    _ing("kube-lego", "longest.test", [("/.well-known/acme/challenge", "Prefix")]),
    _ing("index", "longest.test", [("/", "Prefix")], 1, rewrite_target="/new/backend"),
    # rewrite.go "should use ~* location modifier if regex annotation is present"
    _ing("foo", "modifier.test", [("/foo", "Prefix")]),
    _ing(
        "regex",
        "modifier.test",
        [("/foo.+", IS)],
        1,
        use_regex="true",
        rewrite_target="/new/backend",
    ),
    # rewrite.go "should fail to use longest match for documented warning"
    _ing("foo", "warning.test", [("/foo/bar/bar", "Prefix")]),
    _ing(
        "regex",
        "warning.test",
        [("/foo/bar/[a-z]{3}", IS)],
        1,
        use_regex="true",
        rewrite_target="/new/backend",
    ),
    # rewrite.go "should allow for custom rewrite parameters"
    _ing(
        "a",
        "custom.test",
        [("/foo/bar/(.+)", IS)],
        use_regex="true",
        rewrite_target="/new/backend/$1",
    ),
    # docs/examples/rewrite/README.md: /something(/|$)(.*) -> /$2
    _ing(
        "a", "example.test", [("/something(/|$)(.*)", IS)], use_regex="true", rewrite_target="/$2"
    ),
    # xforwardedprefix.go "should set the X-Forwarded-Prefix to the annotation value"
    _ing(
        "a", "xfp.test", [("/", "Prefix")], rewrite_target="/foo", x_forwarded_prefix="/test/value"
    ),
    # xforwardedprefix.go "should not add X-Forwarded-Prefix if the annotation value is empty"
    _ing("a", "noxfp.test", [("/", "Prefix")], rewrite_target="/foo", x_forwarded_prefix=""),
    # template.go buildProxyPass: X-Forwarded-Prefix is only set with a rewrite
    _ing("a", "xfp-alone.test", [("/", "Prefix")], x_forwarded_prefix="/test/value"),
    # approot.go "should redirect to /foo"
    _ing("a", "approot.test", [("/", "Prefix")], app_root="/foo"),
    # preservetrailingslash.go "should allow preservation of trailing slashes"
    _ing(
        "a",
        "preserve.test",
        [("/", "Prefix")],
        tls=True,
        ssl_redirect="true",
        preserve_trailing_slash="true",
    ),
    # lua_ingress.lua: without it the redirect drops the trailing "/"
    _ing("a", "drop.test", [("/", "Prefix")], tls=True, ssl_redirect="true"),
    # a fail-closed rewrite: "$1" of an empty capture is not an origin-form target
    _ing("a", "empty.test", [("/app(.*)", IS)], use_regex="true", rewrite_target="$1"),
]


class Case(NamedTuple):
    host: str
    target: str  # what the client asks for
    status: int
    sent: str | None = None  # the target the pod saw (None: the pod saw nothing)
    location: str | None = None
    prefix: str | None = None  # X-Forwarded-Prefix the pod saw
    headers: dict[str, str] | None = None


CASES: dict[str, Case] = {
    "log-rewritten-to-root": Case("log.test", "/something", 200, "/"),
    "longest-acme-not-rewritten": Case(
        "longest.test", "/.well-known/acme/challenge", 200, "/.well-known/acme/challenge"
    ),
    "longest-root-rewritten": Case("longest.test", "/other", 200, "/new/backend"),
    "modifier-foo-matches-^/foo": Case("modifier.test", "/foo", 200, "/foo"),
    "modifier-foo-bar-matches-^/foo.+": Case("modifier.test", "/foo/bar", 200, "/new/backend"),
    "modifier-foobar-matches-^/foo.+": Case("modifier.test", "/foobar", 200, "/new/backend"),
    "warning-regex-wins-over-literal": Case("warning.test", "/foo/bar/bar", 200, "/new/backend"),
    "custom-capture": Case("custom.test", "/foo/bar/bar", 200, "/new/backend/bar"),
    "custom-case-insensitive": Case("custom.test", "/FOO/Bar/Baz", 200, "/new/backend/Baz"),
    "custom-no-match-404": Case("custom.test", "/foo/bar/", 404),
    "example-bare": Case("example.test", "/something", 200, "/"),
    "example-slash": Case("example.test", "/something/", 200, "/"),
    "example-path": Case("example.test", "/something/new", 200, "/new"),
    "example-query-follows": Case("example.test", "/something/new?a=1&b=2", 200, "/new?a=1&b=2"),
    "example-encoded-kept": Case("example.test", "/something/a%2Fb", 200, "/a%2Fb"),
    "xfp-set": Case("xfp.test", "/", 200, "/foo", prefix="/test/value"),
    "xfp-replaces-client": Case(
        "xfp.test", "/", 200, "/foo", prefix="/test/value", headers={"X-Forwarded-Prefix": "/x"}
    ),
    "xfp-empty": Case("noxfp.test", "/", 200, "/foo"),
    "xfp-without-rewrite": Case("xfp-alone.test", "/", 200, "/"),
    "approot-redirects": Case("approot.test", "/", 302, location="http://approot.test/foo"),
    "approot-query-dropped": Case("approot.test", "/?x=1", 302, location="http://approot.test/foo"),
    "approot-other-paths-served": Case("approot.test", "/foo", 200, "/foo"),
    "preserve-trailing-slash": Case("preserve.test", "/", 308, location="https://preserve.test/"),
    "preserve-trailing-slash-path": Case(
        "preserve.test", "/a/", 308, location="https://preserve.test/a/"
    ),
    "default-drops-trailing-slash": Case("drop.test", "/a/", 308, location="https://drop.test/a"),
    "invalid-rewrite-fails-closed": Case("empty.test", "/app", 500),
    "valid-capture-rewrite": Case("empty.test", "/app/x", 200, "/x"),
}


@pytest.mark.parametrize("case", [pytest.param(c, id=name) for name, c in CASES.items()])
async def test_rewrite(pod: Pod, capsys: pytest.CaptureFixture[str], case: Case) -> None:
    result = compiled(*INGRESSES, pod=(pod.host, pod.port))
    assert result.problems == ()
    async with running(result.snapshot, access_log=True) as proxy:
        client = await Client.connect(proxy.http_port)
        try:
            resp = await client.request("GET", case.target, case.headers, host=case.host)
        finally:
            await client.close()
        assert proxy.access is not None
        proxy.access.flush()
    assert resp.status == case.status
    assert resp.header("Location") == case.location
    if case.sent is None:
        assert pod.requests == 0
    else:
        seen = resp.json()
        assert seen["target"] == case.sent
        prefixes = [v for k, v in seen["headers"] if k.lower() == "x-forwarded-prefix"]
        assert prefixes == ([case.prefix] if case.prefix is not None else [])
    # The access log keeps the client's request, not the rewritten one.
    (line,) = [json.loads(x) for x in capsys.readouterr().out.splitlines() if '"access"' in x]
    assert case.target.split("?")[0] in json.dumps(line)
