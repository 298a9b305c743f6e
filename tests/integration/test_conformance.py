"""The conformance suite: scenario loading and rendering (pure), answer comparison (pure), and
the runner's local mode end to end (KubeSim + echo pods + `portico controller` subprocess).

The full run asserts that every shipped scenario passes; the CLI run uses a scenario
directory with one scenario meant to pass and one meant to fail, so the runner is shown to
report a failure (and exit 1) as well as a success.
"""

from __future__ import annotations

import asyncio
import io
import ssl
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from conformance.__main__ import SCENARIOS, main
from conformance.certificate import PeerCertificate, generate
from conformance.client import Answer, ClientError, parse_response, send
from conformance.runner import compare, compare_all
from conformance.scenario import (
    Certificate,
    CertificateSpec,
    Environment,
    Expect,
    Request,
    ScenarioError,
    created,
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
    }
    names = [s.full_name for s in scenarios]
    assert len(names) == len(set(names))
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
    ],
)
def test_loading_rejects_bad_scenarios(tmp_path: Path, old: str, new: str, message: str) -> None:
    assert old in GOOD or old in INGRESS
    path = write(tmp_path, "bad", scenario_file(GOOD.replace(old, new)))
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
    assert order[0] == ("Ingress", "web")
    assert order[-1] == ("IngressClass", "other")


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
