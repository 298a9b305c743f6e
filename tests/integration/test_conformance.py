"""The conformance suite: scenario loading and rendering (pure), answer comparison (pure), and
the runner's local mode end to end (KubeSim + echo pods + `portico controller` subprocess).

The full run asserts that every shipped scenario passes; the CLI run uses a scenario
directory with one scenario meant to pass and one meant to fail, so the runner is shown to
report a failure (and exit 1) as well as a success. Two targets wrapped around local mode show
how answers are checked: one misroutes every fourth plain-HTTP request (the runner must fail
and send each request once), one holds watch events back (the runner must wait until the
change is served). When the suite cannot run, it names what is missing and exits 3.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import ssl
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from conformance import preflight
from conformance.__main__ import EXIT_CANNOT_RUN, SCENARIOS, main
from conformance.certificate import PeerCertificate, generate
from conformance.client import Answer, ClientError, parse_response, send
from conformance.local import LocalTarget
from conformance.runner import Outcome, Runner, compare, compare_all, summary_line
from conformance.scenario import (
    Certificate,
    CertificateSpec,
    Environment,
    Expect,
    Request,
    ScenarioError,
    created,
    key_of,
    load_file,
    load_scenarios,
    pods_of,
    render,
)

ROOT = Path(__file__).resolve().parents[2]

INGRESS = """
      - apiVersion: networking.k8s.io/v1
        kind: Ingress
        metadata: {name: web}
        spec:
          ingressClassName: portico
          rules:
            - host: web.example
              http:
                paths:
                  - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
"""


def write(tmp: Path, name: str, body: str) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(textwrap.dedent(body))
    return path


def scenario_file(scenario: str) -> str:
    return "scenarios:\n" + textwrap.indent(textwrap.dedent(scenario).strip("\n"), "  ") + "\n"


GOOD = (
    """
- name: good
  services:
    web: {pods: [web-1]}
  objects:"""
    + INGRESS
    + """
  requests:
    - {host: web.example, expect: {status: 200, service: web}}
"""
)


# ---- loading ------------------------------------------------------------------------------------


def test_shipped_scenarios_cover_every_area() -> None:
    scenarios = load_scenarios(SCENARIOS)
    areas = {s.area for s in scenarios}
    assert areas >= {
        "hosts",
        "paths",
        "default-backend",
        "ingress-class",
        "load-balancing",
        "tls",
        "errors",
        "timeouts",
        "body-size",
        "backend-tls",
        "forwarding",
        "status",
        "namespaces",
        "redirects",
        "rewrite",
        "error-pages",
        "response-rewriting",
        "affinity",
        "rate-limits",
        "retries",
        "upstream",
        "cors",
        "basic-auth",
        "limit-rate",
        "external-auth",
    }
    names = [s.full_name for s in scenarios]
    assert len(names) == len(set(names))
    # Local mode offers every requirement: all of them run there.
    assert len(scenarios) >= 32
    # The CA of an HTTPS backend comes from an Opaque Secret, as users make them.
    opaque = [s for s in scenarios if s.area == "backend-tls" and s.ca_secrets]
    assert opaque
    # The Kubernetes path table's tricky rows are all asked.
    asked = {(r.host, r.path) for s in scenarios if s.area == "paths" for r in s.requests}
    assert ("prefix-aaa-bbb.paths.example", "/aaa/bbbxyz") in asked
    assert ("prefix-aaa-bbb-slash.paths.example", "/aaa/bbb") in asked
    assert ("exact-foo.paths.example", "/foo/") in asked
    # Every method reaches the default backend.
    methods = {
        r.method
        for s in scenarios
        if s.full_name == "default-backend/all-methods"
        for r in s.requests
    }
    assert methods == {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"}


def test_select_filters_by_area_and_name(tmp_path: Path) -> None:
    write(tmp_path, "one", scenario_file(GOOD))
    write(tmp_path, "two", scenario_file(GOOD.replace("name: good", "name: other")))
    assert [s.full_name for s in load_scenarios(tmp_path)] == ["one/good", "two/other"]
    assert [s.full_name for s in load_scenarios(tmp_path, "two/")] == ["two/other"]
    assert load_scenarios(tmp_path, "nothing") == []


REQUEST = "    - {host: web.example, expect: {status: 200, service: web}}\n"


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("kind: Ingress", "kind: Deployment", "Deployment"),
        ("metadata: {name: web}", "metadata: {name: web, namespace: x}", "leave them out"),
        ("status: 200,", "status: 200, servce: web,", "servce"),
        ("{host: web.example,", "{method: BREW, host: web.example,", "method must be one of"),
        (REQUEST, REQUEST + "  unowned: [web]\n", "at least one Ingress"),
        (REQUEST, REQUEST + "  unowned: [nope]\n", "unowned names no Ingress"),
        ("web: {pods: [web-1]}", "web: {pods: [web-1]}\n    api: {pods: [web-1]}", "claimed by"),
        ("name: good", "name: Good_One", "DNS-like"),
        ("  requests:\n" + REQUEST, "", "needs requests"),
        ("{host: web.example,", "{path: x, host: web.example,", "path must start"),
        ("{host: web.example,", "{body: x, body_size: 3, host: web.example,", "not both"),
        ("{host: web.example,", "{count: 2, host: web.example,", ""),  # (valid: a control)
        ("service: web}}", "service: web, counts: {web-1: 3}}}", "more answers than count"),
        (REQUEST, REQUEST + "  pods: {web-9: {tls: true}}\n", "no service uses"),
        (REQUEST, REQUEST + "  status: {nope: true}\n", "status names no Ingress"),
        ("metadata: {name: web}", "metadata: {name: web, annotations: {a: {b: c}}}", "{secret"),
        (REQUEST, REQUEST + "  unwatched_objects:" + INGRESS.replace("web}", "w2}"), "requires"),
        (
            REQUEST,
            REQUEST + "  requires: [unwatched-namespace]\n  unwatched_objects:" + INGRESS,
            "both namespaces",
        ),
        (REQUEST, REQUEST + "  requires: [gpu]\n", "unwatched-namespace"),
    ],
)
def test_loading_rejects_bad_scenarios(tmp_path: Path, old: str, new: str, message: str) -> None:
    assert old in GOOD or old in INGRESS
    path = write(tmp_path, "bad", scenario_file(GOOD.replace(old, new)))
    if not message:
        assert load_file(path)
        return
    with pytest.raises(ScenarioError) as info:
        load_file(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_loading_rejects_raw_addresses_and_duplicates(tmp_path: Path) -> None:
    raw = GOOD.replace(
        "  objects:",
        """  objects:
      - apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata: {name: s, labels: {kubernetes.io/service-name: web}}
        endpoints: [{addresses: [10.0.0.1]}]""",
    )
    with pytest.raises(ScenarioError, match="not addresses"):
        load_file(write(tmp_path, "raw", scenario_file(raw)))
    with pytest.raises(ScenarioError, match="appears twice"):
        load_file(write(tmp_path, "twice", scenario_file(GOOD + GOOD)))


def test_render_maps_pods_namespaces_ports_and_certificates(tmp_path: Path) -> None:
    body = GOOD.replace(
        "  objects:",
        """  certificates:
    web-tls: {cn: web.example}
  objects:
      - apiVersion: networking.k8s.io/v1
        kind: IngressClass
        metadata: {name: other}
        spec: {controller: example.com/other}
      - apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata: {name: extra, labels: {kubernetes.io/service-name: web}}
        endpoints:
          - {pod: web-2, conditions: {ready: false}}
        ports: [{name: http}]""",
    ).replace("web: {pods: [web-1]}", "web: {pods: [web-1, {pod: web-3, ready: false}]}")
    (scenario,) = load_file(write(tmp_path, "render", scenario_file(body)))
    assert pods_of(scenario) == {"web-1": "web", "web-2": "web", "web-3": "web"}
    env = Environment(
        namespace="ns",
        pod_addresses={"web-1": "127.0.0.2", "web-2": "127.0.0.3", "web-3": "127.0.0.4"},
        echo_port=4321,
        certificates={"web-tls": Certificate(b"CERT", b"KEY")},
    )
    objects = render(scenario, env)
    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == [
        ("IngressClass", "other"),
        ("Secret", "web-tls"),
        ("Service", "web"),
        ("EndpointSlice", "web-conformance"),
        ("EndpointSlice", "extra"),
        ("Ingress", "web"),
    ]
    by_name = {o["metadata"]["name"]: o for o in objects}
    assert "namespace" not in by_name["other"]["metadata"]
    assert {o["metadata"].get("namespace") for o in objects[1:]} == {"ns"}
    assert by_name["web-tls"]["data"] == {"tls.crt": "Q0VSVA==", "tls.key": "S0VZ"}
    shorthand = by_name["web-conformance"]
    assert [e["addresses"] for e in shorthand["endpoints"]] == [["127.0.0.2"], ["127.0.0.4"]]
    assert [e["conditions"]["ready"] for e in shorthand["endpoints"]] == [True, False]
    assert shorthand["ports"] == [{"name": "http", "port": 4321, "protocol": "TCP"}]
    extra = by_name["extra"]
    assert extra["endpoints"][0]["addresses"] == ["127.0.0.3"]
    assert extra["endpoints"][0]["conditions"] == {
        "ready": False,
        "serving": False,
        "terminating": False,
    }
    assert extra["ports"] == [{"name": "http", "port": 4321, "protocol": "TCP"}]
    # The scenario's own data is untouched by rendering.
    assert "addresses" not in scenario.objects[1]["endpoints"][0]
    # Cleanup deletes Ingresses first and IngressClasses last.
    order = created(scenario, env)
    assert order[0] == ("Ingress", "web", "ns")
    assert order[-1] == ("IngressClass", "other", None)


def test_render_ca_secrets_annotations_and_unwatched_objects(tmp_path: Path) -> None:
    body = (
        GOOD.replace(
            "  objects:",
            """  requires: [unwatched-namespace]
  ca_secrets:
    pod-ca: {ca: pods}
  objects:""",
        ).replace(
            "metadata: {name: web}",
            "metadata: {name: web, annotations: {x/proxy-ssl-secret: {secret: pod-ca}, x/y: z, "
            "x/auth-url: {pod_url: web-1, path: '/auth?status=401'}}}",
        )
        + "  unwatched_objects:"
        + INGRESS.replace("name: web}", "name: far}")
    )
    (scenario,) = load_file(write(tmp_path, "render", scenario_file(body)))
    env = Environment(
        namespace="ns",
        pod_addresses={"web-1": "127.0.0.2"},
        echo_port=4321,
        certificates={},
        ca_bundles={"pods": b"CA", "unrelated": b"OTHER"},
        unwatched_namespace="elsewhere",
    )
    by_key = {key_of(o): o for o in render(scenario, env)}
    secret = by_key[("Secret", "pod-ca", "ns")]
    assert (secret["type"], secret["data"]) == ("Opaque", {"ca.crt": "Q0E="})
    annotations = by_key[("Ingress", "web", "ns")]["metadata"]["annotations"]
    assert annotations == {
        "x/proxy-ssl-secret": "ns/pod-ca",
        "x/y": "z",
        "x/auth-url": "http://127.0.0.2:4321/auth?status=401",  # a pod's echo backend URL
    }
    assert ("Ingress", "far", "elsewhere") in by_key
    assert scenario.unwatched_ingresses == {"far"}
    assert set(created(scenario, env)) == set(by_key)
    with pytest.raises(ValueError, match="unwatched namespace"):
        render(scenario, replace(env, unwatched_namespace=None))


# ---- comparing answers --------------------------------------------------------------------------


def echo_answer(
    status: int = 200, service: str = "web", pod: str = "web-1", **extra: Any
) -> Answer:
    headers = {"x-echo-service": service, "x-echo-pod": pod, **extra.pop("headers", {})}
    return Answer(status=status, headers=headers, body=b'{"path": "/x"}', **extra)


def proxy_answer(status: int, **headers: str) -> Answer:
    return Answer(status=status, headers={"server": "portico", **headers}, body=b"")


def test_compare_reports_what_differs() -> None:
    assert (
        compare(Expect(status=200, service="web", pod="web-1", path="/x"), echo_answer(), 0) == []
    )
    (problem,) = compare(Expect(status=404, service=None), echo_answer(), 0)
    assert (
        problem == "got 200 (service web, pod web-1), expected status 404, an answer by the proxy"
    )
    (problem,) = compare(Expect(status=200, service="api"), proxy_answer(503), 0)
    assert "got 503 (answered by the proxy)" in problem
    assert "service api" in problem
    # Not naming a service checks nothing about it; `service: null` does.
    assert compare(Expect(status=503), proxy_answer(503), 0) == []
    assert compare(Expect.model_validate({"status": 200, "service": None}), echo_answer(), 0)
    assert "saw '/x'" in compare(Expect(status=200, path="/y"), echo_answer(), 0)[0]


def test_compare_location_and_certificate() -> None:
    redirect = proxy_answer(308, location="https://a.example:8443/p?q=1")
    assert compare(Expect(status=308, location="https://a.example/p?q=1"), redirect, 8443) == []
    assert compare(Expect(status=308, location="https://a.example/p?q=1"), redirect, 443)
    assert compare(Expect(status=308, location="https://a.example/other"), redirect, 8443)
    cert = PeerCertificate(cn="a.example", san=frozenset({"a.example"}))
    answer = echo_answer(certificate=cert)
    assert (
        compare(Expect(status=200, cn="a.example", san=frozenset({"a.example"})), answer, 0) == []
    )
    (problem,) = compare(Expect(status=200, cn="Portico Default Certificate"), answer, 0)
    assert "certificate CN 'Portico Default Certificate' (got 'a.example')" in problem
    assert "got none" in compare(Expect(status=200, cn="a.example"), echo_answer(), 0)[0]


def test_compare_all_checks_the_pod_set_and_failed_attempts() -> None:
    request = Request.model_validate(
        {"host": "lb.example", "count": 3, "expect": {"status": 200, "pods": ["web-1", "web-2"]}}
    )
    spread = [echo_answer(pod="web-1"), echo_answer(pod="web-2"), echo_answer(pod="web-1")]
    assert compare_all(request, spread, 0) == []
    stuck = [echo_answer(pod="web-1")] * 3
    (problem,) = compare_all(request, stuck, 0)
    assert problem.startswith("GET http://lb.example/: 3 answers came from pods ['web-1']")
    failed = compare_all(request, [*spread[:2], "request failed: refused"], 0)
    assert failed == ["GET http://lb.example/: request failed: refused"]


def test_compare_header_patterns_and_one_pod() -> None:
    """The affinity scenarios: a cookie with a random key, every answer from one pod."""
    cookie = "SERVERID=k1|0123456789abcdef0123456789abcdef; Path=/; HttpOnly"
    answer = echo_answer(headers={"set-cookie": cookie})
    pattern = {"Set-Cookie": r"SERVERID=[^|;]+\|[0-9a-f]{32}; Path=/; HttpOnly"}
    assert compare(Expect(status=200, header_patterns=pattern), answer, 0) == []
    (problem,) = compare(Expect(status=200, header_patterns=pattern), echo_answer(), 0)
    assert "header Set-Cookie matching" in problem and "(got None)" in problem
    request = Request.model_validate(
        {"host": "h.example", "count": 2, "expect": {"status": 200, "one_pod": True}}
    )
    assert compare_all(request, [echo_answer(pod="web-2")] * 2, 0) == []
    (problem,) = compare_all(request, [echo_answer(pod="web-1"), echo_answer(pod="web-2")], 0)
    assert problem.endswith("2 answers came from pods ['web-1', 'web-2'], expected one")


def test_compare_what_the_pod_saw() -> None:
    seen = {"headers": {"Host": "a.example", "X-Forwarded-Proto": "http"}, "body_bytes": 3}
    answer = Answer(
        status=200,
        headers={"x-echo-service": "web", "x-echo-pod": "web-1"},
        body=json.dumps(seen).encode(),
    )
    expect = Expect(
        status=200,
        echoed={"host": "a.example", "x-forwarded-proto": "http", "connection": None},
        body_bytes=3,
    )
    assert compare(expect, answer, 0) == []
    (problem,) = compare(
        Expect(status=200, echoed={"X-Forwarded-Proto": "https", "host": None}, body_bytes=4),
        answer,
        0,
    )
    assert "the pod to see X-Forwarded-Proto 'https' (saw 'http')" in problem
    assert "the pod to see host absent (saw 'a.example')" in problem
    assert "the pod to receive 4 body bytes (got 3)" in problem


def test_compare_the_response_length_and_time() -> None:
    # limit-rate scenarios: the body the client got, and how long it took.
    answer = Answer(status=200, headers={}, body=b"x" * 10, elapsed=2.5)
    assert (
        compare(Expect(status=200, response_bytes=10, min_seconds=2, max_seconds=3), answer, 0)
        == []
    )
    (problem,) = compare(
        Expect(status=200, response_bytes=11, min_seconds=3, max_seconds=1), answer, 0
    )
    assert "a body of 11 bytes (got 10)" in problem
    assert "at least 3 s (took 2.50 s)" in problem
    assert "at most 1 s (took 2.50 s)" in problem


@pytest.mark.parametrize(
    ("expect", "pods", "problems"),
    [
        ({"counts": {"a": 2, "b": 2}}, "abab", []),
        (
            {"counts": {"a": 2, "b": 2}},
            "aaab",
            [
                "a answered 3 of 4, expected 2 (a: 3, b: 1)",
                "b answered 1 of 4, expected 2 (a: 3, b: 1)",
            ],
        ),
        ({"counts": {"c": 1}}, "abab", ["c answered 0 of 4, expected 1 (a: 2, b: 2)"]),
        ({"at_most": {"s": 1}}, "aabs", []),
        (
            {"at_most": {"s": 1}},
            "asbs",
            ["s answered 2 of 4, at most 1 expected (a: 1, b: 1, s: 2)"],
        ),
    ],
)
def test_compare_all_counts_answers_per_pod(
    expect: dict[str, Any], pods: str, problems: list[str]
) -> None:
    request = Request.model_validate(
        {"host": "lb.example", "count": len(pods), "expect": {"status": 200, **expect}}
    )
    found = compare_all(request, [echo_answer(pod=p) for p in pods], 0)
    assert found == [f"GET http://lb.example/: {p}" for p in problems]


def test_outcome_lines_and_summary() -> None:
    outcomes = [
        Outcome("a/ok", ()),
        Outcome("a/bad", ("x", "y", "z", "w")),
        Outcome("a/later", (), skipped="needs one-worker"),
    ]
    assert [o.line() for o in outcomes] == [
        "PASS a/ok",
        "FAIL a/bad: x; y; z (+1 more)",
        "SKIP a/later: needs one-worker",
    ]
    assert summary_line(outcomes) == "1 passed, 1 failed, 1 skipped"
    assert summary_line(outcomes[:2]) == "1 passed, 1 failed"


def test_parse_response_framing() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nA: 1\r\nA: 2\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n"
    )
    answer = parse_response(chunked, head_only=False)
    assert (answer.status, answer.body, answer.header("a")) == (200, b"abc", "1, 2")
    head = parse_response(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\n", head_only=True)
    assert (head.status, head.body) == (404, b"")
    with pytest.raises(ClientError):
        parse_response(b"HTTP/1.1 200 OK\r\n", head_only=False)
    with pytest.raises(ClientError):
        parse_response(b"SSH-2.0-x\r\n\r\n", head_only=False)


async def test_client_sends_sni_and_reads_the_certificate(tmp_path: Path) -> None:
    spec = CertificateSpec(cn="a.example", dns=["a.example", "*.b.example"])
    generated = generate(spec)
    (tmp_path / "cert.pem").write_bytes(generated.cert_pem)
    (tmp_path / "key.pem").write_bytes(generated.key_pem)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    names: list[str | None] = []
    context.sni_callback = lambda _sock, name, _ctx: names.append(name)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        body = head.split(b"\r\n")[1]  # the Host line, echoed back
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    try:
        got = await send("127.0.0.1", port, host="h.example", tls=True, server_name="a.example")
        assert (got.status, got.body) == (200, b"Host: h.example")
        assert got.certificate == PeerCertificate("a.example", frozenset(spec.dns))
        await send("127.0.0.1", port, tls=True, server_name=None)
        assert names == ["a.example", None]
        with pytest.raises(ClientError):
            await send("127.0.0.1", port, tls=False, limit=2.0)  # plain HTTP to a TLS port
    finally:
        server.close()
        await server.wait_closed()


async def test_client_sends_one_connection_field() -> None:
    heads: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        await send("127.0.0.1", port, headers={"Connection": "x-private", "X-Private": "1"})
        await send("127.0.0.1", port)
    finally:
        server.close()
        await server.wait_closed()
    # The caller's options and the client's own `close`, in one field (a second Connection
    # field would leave it to the server which one counts).
    assert heads[0].count(b"Connection:") == 1
    assert b"\r\nConnection: x-private, close\r\n" in heads[0]
    assert b"\r\nConnection: close\r\n" in heads[1]


# ---- end to end ---------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_every_shipped_scenario_passes_locally() -> None:
    out = io.StringIO()
    code = main([], out=out)
    lines = out.getvalue().splitlines()
    sys.stdout.write(out.getvalue())  # shown by pytest when the test fails
    failed = [line for line in lines if line.startswith("FAIL")]
    assert failed == []
    assert code == 0
    total = len(load_scenarios(SCENARIOS))
    assert lines[-1] == f"{total} passed, 0 failed"
    assert len(lines) == total + 1


TWO_HOSTS = """
scenarios:
  - name: steady
    services:
      a: {pods: [a-1]}
      b: {pods: [b-1]}
    objects:
      - apiVersion: networking.k8s.io/v1
        kind: Ingress
        metadata: {name: two-hosts}
        spec:
          ingressClassName: portico
          rules:
            - host: a.runner.example
              http:
                paths:
                  - {path: /, pathType: Prefix, backend: {service: {name: a, port: {number: 80}}}}
            - host: b.runner.example
              http:
                paths:
                  - {path: /, pathType: Prefix, backend: {service: {name: b, port: {number: 80}}}}
    requests:
      - {host: a.runner.example, expect: {status: 200, service: a, pod: a-1}}
    steps:
      - name: a moves to another pod
        services:
          a: {pods: [a-2]}
        requests:
          - {host: a.runner.example, count: 3, expect: {status: 200, service: a, pod: a-2}}
"""


class Misrouter:
    """A plain-HTTP hop in front of Portico that sends every `every`-th request to another
    host (its Host header rewritten): a proxy that misroutes now and then."""

    def __init__(self, upstream: int, every: int, host: bytes) -> None:
        self.upstream = upstream
        self.every = every
        self.host = host
        self.requests = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        self.requests += 1
        if self.requests % self.every == 0:
            head = re.sub(rb"(?im)^host:[^\r]*", b"Host: " + self.host, head)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        up_writer.write(head)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()

        forward = asyncio.create_task(pump(reader, up_writer))
        await pump(up_reader, writer)  # the answer, until Portico closes (Connection: close)
        forward.cancel()
        for w in (writer, up_writer):
            w.close()


class MisroutedTarget(LocalTarget):
    """Local mode with plain HTTP going through a `Misrouter` (HTTPS, so the runner's marker
    probes, goes straight to Portico)."""

    misrouter: Misrouter

    def endpoint(self, scheme: str) -> tuple[str, int]:
        if scheme == "http":
            return "127.0.0.1", self.misrouter.port
        return super().endpoint(scheme)


@pytest.mark.timeout(60)
async def test_a_proxy_that_misroutes_now_and_then_fails(tmp_path: Path) -> None:
    (scenario,) = load_file(write(tmp_path, "runner", TWO_HOSTS))
    async with MisroutedTarget(tmp_path) as target:
        target.misrouter = Misrouter(target.http_port, every=4, host=b"b.runner.example")
        await target.misrouter.start()
        try:
            outcome = await Runner(target, io.StringIO()).run_scenario(scenario)
        finally:
            await target.misrouter.stop()
    # Every request was sent once: the base one and the step's three, the last misrouted.
    assert target.misrouter.requests == 4
    assert outcome.differences == (
        "a moves to another pod: GET http://a.runner.example/: "
        "got 200 (service b, pod b-1), expected service a, pod a-2",
    )


class LaggingTarget(LocalTarget):
    """Local mode whose watch events reach the controller only `LAG` seconds after the last
    write (KubeSim holds them): requests sent as soon as objects are written see the old
    configuration."""

    LAG = 0.5
    _resume: asyncio.TimerHandle | None = None
    held = 0

    async def apply(self, obj: dict[str, Any]) -> None:
        self.sim.pause_events()
        self.held += 1
        await super().apply(obj)
        if self._resume is not None:
            self._resume.cancel()
        self._resume = asyncio.get_running_loop().call_later(self.LAG, self.sim.resume_events)


@pytest.mark.timeout(60)
async def test_requests_wait_for_the_change_to_be_served(tmp_path: Path) -> None:
    (scenario,) = load_file(write(tmp_path, "runner", TWO_HOSTS))
    async with LaggingTarget(tmp_path) as target:
        outcome = await Runner(target, io.StringIO()).run_scenario(scenario)
    assert target.held > 0
    assert outcome.passed, outcome.differences


@pytest.mark.timeout(90)
def test_cli_reports_failures_and_exits_1(tmp_path: Path) -> None:
    failing = GOOD.replace("name: good", "name: wrong-pod").replace(
        "service: web}", "service: web, pod: web-9}"
    )
    write(tmp_path, "mixed", scenario_file(GOOD + failing))
    result = subprocess.run(
        [sys.executable, "-m", "conformance", "--scenarios", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=80,
        check=False,
    )
    lines = result.stdout.splitlines()
    assert lines[0] == "PASS mixed/good", result.stderr[-3000:]
    assert lines[1] == (
        "FAIL mixed/wrong-pod: GET http://web.example/: got 200 (service web, pod web-1), "
        "expected pod web-9"
    )
    assert lines[-1] == "1 passed, 1 failed"
    assert result.returncode == 1
    assert "controller log" in result.stderr


def test_cli_usage_errors(tmp_path: Path) -> None:
    err = io.StringIO()
    assert main(["--scenarios", str(tmp_path / "missing")], out=err) == 2
    write(tmp_path, "one", scenario_file(GOOD))
    out = io.StringIO()
    assert main(["--scenarios", str(tmp_path), "--list"], out=out) == 0
    assert out.getvalue().startswith("one/good")
    assert main(["--scenarios", str(tmp_path), "-k", "absent"], out=out) == 2


# ---- when it cannot run ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("missing", "argv", "says"),
    [
        ("aiohttp", [], "the Python module aiohttp (aiohttp) is needed to run the echo backends"),
        (
            "yaml",
            ["--list"],
            "the Python module yaml (PyYAML) is needed to read the scenario files",
        ),
        ("cryptography", [], "cryptography (cryptography) is needed to make the test certificates"),
        ("httptools", [], "local mode runs `python -m controller` from"),
        ("kubernetes_asyncio", ["--kubeconfig=x"], "kubernetes_asyncio) is needed to talk to"),
    ],
)
def test_cannot_run_names_the_missing_module(missing: str, argv: list[str], says: str) -> None:
    # `None` in sys.modules makes an import fail as it does when the module is not installed.
    code = (
        f"import sys; sys.modules[{missing!r}] = None\n"
        "from conformance.__main__ import main\n"
        f"sys.exit(main({argv!r}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == EXIT_CANNOT_RUN, result.stderr
    assert says in result.stderr
    assert missing in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_cannot_run_without_a_checkout_or_an_old_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(preflight, "ROOT", tmp_path)
    (problem,) = preflight.local_mode()
    assert "local mode needs the API simulator in tests/kubesim" in problem
    assert "or give --kubeconfig" in problem
    assert preflight.python_version((3, 10)) == ["Python 3.11 or newer is needed (this is 3.10)"]
    assert preflight.python_version((3, 12)) == []


KUBECONFIG = """
apiVersion: v1
kind: Config
current-context: sim
contexts:
  - {name: sim, context: {cluster: sim, user: sim}}
"""


@pytest.mark.parametrize(
    ("text", "context", "says"),
    [
        (None, None, "does not exist"),
        ("", None, "holds no configuration"),
        ("a: [", None, "is not valid YAML"),
        (KUBECONFIG.replace("current-context: sim", ""), None, "sets no current-context"),
        (KUBECONFIG, "prod", "has no context 'prod' (it has ['sim'])"),
        (KUBECONFIG, None, None),
        (KUBECONFIG, "sim", None),
    ],
)
def test_kubeconfig_problems_are_named(
    tmp_path: Path, text: str | None, context: str | None, says: str | None
) -> None:
    path = tmp_path / "kubeconfig"
    if text is not None:
        path.write_text(text)
    problems = preflight.kubeconfig(path, context)
    if says is None:
        assert problems == []
    else:
        (problem,) = problems
        assert problem.startswith(f"kubeconfig {path} ")
        assert says in problem
    unreadable = preflight.kubeconfig(tmp_path, None)  # a directory
    assert unreadable == [f"kubeconfig {tmp_path} cannot be read: Is a directory"]


def test_request_defaults_and_sni() -> None:
    request = Request.model_validate({"expect": {"status": 200}})
    assert (request.method, request.scheme, request.path, request.count) == ("GET", "http", "/", 1)
    assert request.server_name is None
    named = Request.model_validate(
        {"scheme": "https", "host": "a.example", "expect": {"status": 200}}
    )
    assert named.server_name == "a.example"
    none = Request.model_validate(
        {"scheme": "https", "host": "a.example", "sni": "", "expect": {"status": 200}}
    )
    assert none.server_name is None
    assert none.describe() == "GET https://a.example/ sni=(none)"
