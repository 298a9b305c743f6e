"""Basic auth in the compiler: the annotations' grammar (ingress-nginx's internal/ingress/
annotations/auth/main.go), the Secret read into a BasicAuth step (auth-file, auth-map), where
the step goes in the policy, and every way the routes are locked rather than served open.
The requests: tests/integration/test_basic_auth.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from controller.compiler import CompileResult, CompileSettings, compile_view
from controller.compiler.annotations import parse_annotations
from controller.objects import parse_object
from proxy.config import BasicAuth, Cors, PolicyStep, Refuse, SourceRanges
from tests.kube_factory import (
    Raw,
    endpoint,
    endpoint_slice,
    ingress,
    ingress_class,
    opaque_secret,
    rule,
    service,
    service_port,
    store_of,
)

N = "nginx.ingress.kubernetes.io/"
P = "portico.dev/"
APR1 = "$apr1$cV7rta74$/wB6b37vKIZ6elCNQmJuT/"

# (annotations, IngressOptions fields expected); main.go's rules.
VALID: list[tuple[dict[str, str], dict[str, Any]]] = [
    # No auth-type: the other annotations do nothing (Parse returns at auth-type).
    ({"auth-secret": "users"}, {"auth_secret": None}),
    ({"auth-type": "basic", "auth-secret": "users"}, {"auth_secret": "users"}),
    ({"auth-type": "basic", "auth-secret": "ns/users"}, {"auth_secret": "ns/users"}),
    # auth-secret-type defaults to auth-file.
    ({"auth-type": "basic", "auth-secret": "u"}, {"auth_secret_type": "auth-file"}),
    (
        {"auth-type": "basic", "auth-secret": "u", "auth-secret-type": "auth-map"},
        {"auth_secret_type": "auth-map"},
    ),
    # auth-realm: CharsWithSpace (the kube-explorer realm of the corpus).
    (
        {"auth-type": "basic", "auth-secret": "u", "auth-realm": "Authentication Required - x"},
        {"auth_realm": "Authentication Required - x"},
    ),
    # Given without auth-secret: "" (locked by the compiler).
    ({"auth-type": "basic"}, {"auth_secret": ""}),
]


@pytest.mark.parametrize(("annotations", "fields"), VALID)
def test_valid(annotations: dict[str, str], fields: dict[str, Any]) -> None:
    opts, errors = parse_annotations({N + k: v for k, v in annotations.items()})
    assert errors == ()
    assert {k: getattr(opts, k) for k in fields} == fields
    assert not opts.invalid_auth


INVALID = [
    ("auth-type", "digest"),  # ingress-nginx's digest: not implemented, fails closed
    ("auth-type", "Basic"),  # authTypeRegex is case-sensitive
    ("auth-type", "ntlm"),
    ("auth-secret", "a/b/c"),  # SplitMetaNamespaceKey refuses it
    ("auth-secret", "Users"),
    ("auth-secret-type", "htpasswd"),
    ("auth-realm", 'a "quoted" realm'),  # CharsWithSpace: no quote
    ("auth-realm", "a\trealm"),
]


@pytest.mark.parametrize(("name", "value"), INVALID)
def test_invalid_fails_closed(name: str, value: str) -> None:
    annotations = {"auth-type": "basic", "auth-secret": "users", name: value}
    opts, errors = parse_annotations({N + k: v for k, v in annotations.items()})
    assert [e.annotation for e in errors] == [N + name]
    assert opts.invalid_auth and opts.auth_secret is None


def test_portico_prefix_wins() -> None:
    opts, _ = parse_annotations(
        {N + "auth-type": "basic", N + "auth-secret": "a", P + "auth-secret": "b"}
    )
    assert opts.auth_secret == "b"


def _compile(*raws: Raw) -> CompileResult:
    objects = [
        ingress_class(),
        service("web", ports=[service_port(80, "http", 8080)]),
        endpoint_slice("web", endpoints=[endpoint("10.0.0.1")], ports=[("http", 8080)]),
        *raws,
    ]
    return compile_view(store_of(*objects), CompileSettings())


def _policy(result: CompileResult) -> tuple[PolicyStep, ...]:
    (vhost,) = [v for v in result.snapshot.routes.virtual_hosts if v.host == "a.test"]
    return vhost.rules[0].options.policy


def _auth_ingress(**annotations: str) -> Raw:
    return ingress(
        "a", annotations={N + k: v for k, v in annotations.items()}, rules=[rule("a.test")]
    )


def test_auth_file_users_in_the_step() -> None:
    secret = opaque_secret("users", auth=f"foo:{APR1}\n# c\nbar:\nbaz:plaintext-unknown\n")
    result = _compile(secret, _auth_ingress(**{"auth-type": "basic", "auth-secret": "users"}))
    # bar's empty hash and baz's unknown one can never match: left out.
    assert _policy(result) == (BasicAuth("", ("foo",), (APR1,)),)
    assert not [p for p in result.problems if p.reason == "SecretInvalid"]


def test_auth_map_keeps_hash_values_only() -> None:
    secret = opaque_secret(
        "users", foo=APR1, other="not a hash", bar="{SHA}xO2etOilyqtV8o1RvvnmkeBx7QI="
    )
    obj = parse_object(secret)
    assert obj is not None and "other" not in obj.data  # never kept in memory
    result = _compile(
        secret,
        _auth_ingress(
            **{"auth-type": "basic", "auth-secret": "users", "auth-secret-type": "auth-map"}
        ),
    )
    assert _policy(result) == (
        BasicAuth("", ("bar", "foo"), ("{SHA}xO2etOilyqtV8o1RvvnmkeBx7QI=", APR1)),
    )


def test_after_source_ranges() -> None:
    # nginx's access module (allow/deny) runs before auth_basic: a denied address gets 403.
    secret = opaque_secret("users", auth=f"foo:{APR1}\n")
    annotations = {
        "auth-type": "basic",
        "auth-secret": "users",
        "whitelist-source-range": "10.0.0.0/8",
    }
    policy = _policy(_compile(secret, _auth_ingress(**annotations)))
    assert [type(s) for s in policy] == [SourceRanges, BasicAuth]


def test_after_the_cors_preflight() -> None:
    # nginx answers a CORS preflight (`return 204` in the rewrite phase, see cors.go) before
    # auth_basic runs: a browser's OPTIONS never gets the 401 challenge.
    secret = opaque_secret("users", auth=f"foo:{APR1}\n")
    annotations = {"auth-type": "basic", "auth-secret": "users", "enable-cors": "true"}
    policy = _policy(_compile(secret, _auth_ingress(**annotations)))
    assert [type(s) for s in policy] == [Cors, BasicAuth]


LOCKED = [
    ({"auth-type": "basic", "auth-secret": "missing"}, "AuthSecretUnavailable"),
    ({"auth-type": "basic", "auth-secret": "empty"}, "AuthSecretUnavailable"),  # no `auth` key
    ({"auth-type": "basic", "auth-secret": "other/users"}, "InvalidAuth"),
    ({"auth-type": "basic"}, "InvalidAuth"),
    ({"auth-type": "digest", "auth-secret": "users"}, "InvalidAuth"),
    ({"auth-type": "basic", "auth-secret": "users", "auth-realm": '"x"'}, "InvalidAuth"),
]


@pytest.mark.parametrize(("annotations", "reason"), LOCKED)
def test_locked_routes(annotations: dict[str, str], reason: str) -> None:
    secrets = (
        opaque_secret("users", auth=f"foo:{APR1}\n"),
        opaque_secret("users", namespace="other", auth=f"foo:{APR1}\n"),
        opaque_secret("empty", foo=APR1),
    )
    result = _compile(*secrets, _auth_ingress(**annotations))
    policy = _policy(result)
    assert policy[0] == Refuse(503, reason)
    assert not any(isinstance(s, BasicAuth) for s in policy)
    assert {p.reason for p in result.problems} & {"SecretInvalid", "InvalidAnnotation"}
