"""Property tests: the compiler is total and deterministic; the Router never raises."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.compiler import Compiler, CompileSettings, compile_view
from controller.objects import ObjectParseError, parse_object
from controller.store import Store, WatchEvent
from proxy.config import decode_snapshot, encode_snapshot
from proxy.table import Router
from tests.kube_factory import (
    Raw,
    backend,
    endpoint,
    endpoint_slice,
    ingress,
    ingress_class,
    path,
    rule,
    service,
    service_port,
    tls_entry,
    tls_secret,
)

NAMES = st.sampled_from(["web", "api", "db"])
NAMESPACES = st.sampled_from(["default", "team"])
HOSTS = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "a.example.com",
            "A.Example.com",
            "*.example.com",
            "b.a.example.com",
            "1.2.3.4",
            "::1",
            "*",
            "a.*.com",
            "",
            "bad_host",
        ]
    ),
    st.text(alphabet="ab.-*:[]", max_size=12),
)
PATHS = st.one_of(
    st.none(),
    st.sampled_from(["/", "/api", "/api/", "/api/v1", "//", "/a/../b", "foo", "/%2F", "/a b"]),
    st.text(alphabet="/ab.%2F?* ", max_size=10),
)
PATH_TYPES = st.sampled_from([None, "Exact", "Prefix", "ImplementationSpecific", "Regex"])
PORTS = st.one_of(st.integers(0, 70000), st.sampled_from(["http", "admin", "", "nope"]))
ANNOTATIONS = st.dictionaries(
    st.sampled_from(
        [
            f"{prefix}{name}"
            for prefix in ("nginx.ingress.kubernetes.io/", "portico.dev/")
            for name in (
                "ssl-redirect",
                "force-ssl-redirect",
                "load-balance",
                "backend-protocol",
                "proxy-ssl-name",
                "proxy-connect-timeout",
                "proxy-read-timeout",
                "proxy-send-timeout",
                "proxy-body-size",
            )
        ]
        + ["kubernetes.io/ingress.class", "unknown/x"]
    ),
    st.one_of(
        st.sampled_from(["true", "false", "ewma", "HTTPS", "10s", "1m", "0", "portico"]),
        st.text(max_size=6),
    ),
    max_size=4,
)
CONDITION = st.sampled_from([None, True, False])


@st.composite
def ingresses(draw: st.DrawFn) -> Raw:
    rules = [
        rule(
            draw(HOSTS),
            *[
                path(draw(PATHS), draw(NAMES), draw(PORTS), draw(PATH_TYPES))
                for _ in range(draw(st.integers(1, 3)))
            ],
        )
        for _ in range(draw(st.integers(0, 3)))
    ]
    return ingress(
        draw(st.sampled_from(["a", "b", "c", "d"])),
        draw(NAMESPACES),
        rules=rules,
        class_name=draw(st.sampled_from([None, "portico", "nginx", "ghost"])),
        annotations=draw(ANNOTATIONS),
        default_backend=draw(st.one_of(st.none(), st.builds(backend, NAMES, PORTS))),
        tls=draw(
            st.one_of(
                st.none(),
                st.lists(
                    st.builds(
                        lambda s, h: tls_entry(s, *h),
                        st.sampled_from([None, "tls", "missing"]),
                        st.lists(
                            st.sampled_from(["a.example.com", "*.example.com", "x"]), max_size=2
                        ),
                    ),
                    max_size=2,
                ),
            )
        ),
        created=draw(st.one_of(st.none(), st.integers(0, 3))),
    )


@st.composite
def services(draw: st.DrawFn) -> Raw:
    external = draw(st.booleans())
    ports = [
        service_port(draw(st.integers(1, 65535)), draw(st.sampled_from([None, "http", "admin"])))
        for _ in range(draw(st.integers(0, 2)))
    ]
    return service(
        draw(NAMES),
        draw(NAMESPACES),
        ports=ports,
        type="ExternalName" if external else "ClusterIP",
        external_name=draw(st.sampled_from([None, "db.example.org", ""])) if external else None,
    )


@st.composite
def slices(draw: st.DrawFn) -> Raw:
    eps: list[Raw | str] = [
        endpoint(
            draw(st.sampled_from(["127.0.0.2", "127.0.0.3", "::1"])),
            ready=draw(CONDITION),
            serving=draw(CONDITION),
            terminating=draw(CONDITION),
        )
        for _ in range(draw(st.integers(0, 3)))
    ]
    ports = [
        (draw(st.sampled_from([None, "http", "admin"])), draw(st.integers(1, 65535)))
        for _ in range(draw(st.integers(0, 2)))
    ]
    return endpoint_slice(
        draw(st.sampled_from(["s1", "s2", "s3"])),
        draw(st.one_of(st.none(), NAMES)),
        draw(NAMESPACES),
        endpoints=eps,
        ports=ports,
        address_type=draw(st.sampled_from(["IPv4", "IPv6", "FQDN"])),
    )


CLASSES = st.lists(
    st.builds(
        ingress_class,
        st.sampled_from(["portico", "nginx", "edge"]),
        st.sampled_from(["portico.dev/ingress-controller", "k8s.io/ingress-nginx"]),
        default=st.booleans(),
    ),
    max_size=3,
)
TLS_SECRET = tls_secret("tls", "default", hosts=["a.example.com"])


def build_store(raws: list[Raw]) -> Store:
    store = Store()
    for raw in raws:
        try:
            obj = parse_object(raw)
        except ObjectParseError:
            continue  # the property is about well-shaped objects; sources drop the rest
        if obj is not None:
            store.apply(WatchEvent("ADDED", obj))
    return store


OBJECTS = st.tuples(
    CLASSES,
    st.lists(ingresses(), max_size=4),
    st.lists(services(), max_size=3),
    st.lists(slices(), max_size=3),
    st.booleans(),
    st.builds(
        CompileSettings,
        watch_ingress_without_class=st.booleans(),
        allow_external_name=st.booleans(),
    ),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OBJECTS, st.lists(st.tuples(st.text(max_size=12), st.text(max_size=12)), max_size=5))
def test_compile_is_total_and_consistent(
    objects: tuple[Any, ...], requests: list[tuple[str, str]]
) -> None:
    classes, ings, svcs, eps, with_secret, compile_settings = objects
    everything = [*classes, *ings, *svcs, *eps, *([TLS_SECRET] if with_secret else [])]
    # One object per (kind, namespace, name), so that the order of events cannot matter.
    unique: dict[tuple[Any, ...], Raw] = {}
    for raw in everything:
        meta = raw["metadata"]
        unique.setdefault((raw["kind"], meta.get("namespace"), meta["name"]), raw)
    raws = list(unique.values())
    store = build_store(raws)
    result = compile_view(store, compile_settings)
    snapshot = result.snapshot

    # Deterministic: the same objects in reverse order compile to the same result.
    assert compile_view(build_store(list(reversed(raws))), compile_settings) == result
    # Sorted output and a closed reference graph.
    assert list(result.problems) == sorted(result.problems)
    keys = [b.key for b in snapshot.backends]
    assert keys == sorted(set(keys))
    hosts = [vh.host for vh in snapshot.routes.virtual_hosts]
    assert hosts == sorted(set(hosts))
    cert_names = {c.name for c in snapshot.certificates}
    for vh in snapshot.routes.virtual_hosts:
        for r in (*vh.rules, *([vh.fallback] if vh.fallback else [])):
            assert r.backend in keys and r.path.startswith("/") and r.ingress in result.owned
        assert vh.tls_certificate is None or vh.tls_certificate in cert_names
    assert not set(result.owned) & set(result.ignored)
    # The snapshot survives the codec, and the Router answers anything.
    assert decode_snapshot(encode_snapshot(snapshot)) == snapshot
    router = Router(snapshot.routes)
    for host, request_path in [*requests, ("a.example.com", "/api/v1"), ("b.example.com", "/")]:
        got = router.route(host, request_path)
        assert got is None or got.backend in keys
        assert router.explain(host, request_path).rule == got
    # The incremental compiler agrees.
    assert Compiler(compile_settings).compile(store) == result


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=40), st.text(max_size=60))
def test_router_never_raises(host: str, request_path: str) -> None:
    result = compile_view(
        build_store(
            [ingress_class(), ingress(rules=[rule("a.example.com"), rule("*.b.org"), rule(None)])]
        ),
        CompileSettings(),
    )
    router = Router(result.snapshot.routes)
    rule_ = router.route(host, request_path)
    assert rule_ is not None  # every table here has a host-less Prefix "/" rule
    assert router.explain(host, request_path).rule is rule_
