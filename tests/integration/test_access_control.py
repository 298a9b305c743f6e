"""Access control Portico does not enforce yet fails closed, with an answer: 403, never the pod.

One row per annotation of the catalogue that fails closed (a test keeps the table equal to that
set): the annotations an Ingress needs for ingress-nginx to refuse the request the row sends
(its e2e tests, test/e2e/annotations/auth.go, authtls.go are the model: no credentials, no
client certificate). Each Ingress
is compiled by the real compiler and served by a proxy on real sockets in front of one counting
test pod:

- `full.test` carries the row's annotations: answered 403 by Portico, reason
  `AccessControlNotEnforced` in the access log, and the pod never sees the request;
- `alone.test` carries the row's annotation only: refused as well (whatever the annotations
  around it, its presence is enough);
- `open.test` carries none and reaches the pod (the pod is reachable: the 403 is the policy's);
- with `--serve-without-access-control` the `full.test` request reaches the pod.
"""

from __future__ import annotations

import json
from typing import NamedTuple

import pytest
from backends import Client, Pod
from tls_env import compiled, running, tls_client

from controller.compiler import CompileSettings
from controller.compiler.catalogue import ANNOTATIONS
from controller.configmap import compile_settings, overlay, read
from controller.settings import Settings
from proxy.server import ProxyServer
from tests.kube_factory import Raw, ingress, rule
from tests.unenforced import UNENFORCED, unenforced  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.uvloop, pytest.mark.timeout(30)]

N = "nginx.ingress.kubernetes.io/"


class Row(NamedTuple):
    companions: dict[str, str]  # the other annotations ingress-nginx needs to refuse
    value: str  # the annotation's own value
    scheme: str = "http"
    refused_by_ingress_nginx: int = 401  # what ingress-nginx answers the request (for the record)


ROWS: dict[str, Row] = {
    # Basic auth, external auth and satisfy are enforced (issue 18): tests/integration/
    # test_basic_auth.py and test_external_auth.py; client certificates:
    # test_client_certificates.py. The rule is shown with a stand-in (tests/unenforced.py): an
    # auth-tls-match-cn made unenforced (without auth-tls-secret it does nothing else).
    UNENFORCED: Row({}, "CN=client", "https", refused_by_ingress_nginx=403),
}


@pytest.mark.usefixtures("unenforced")
def test_the_table_is_the_catalogue_fail_closed_set() -> None:
    assert set(ROWS) == {name for name, e in ANNOTATIONS.items() if e.fails_closed}


def _ingress(name: str, annotations: dict[str, str]) -> Raw:
    host = f"{name}.test"
    return ingress(name, annotations={N + k: v for k, v in annotations.items()}, rules=[rule(host)])


async def _get(proxy: ProxyServer, scheme: str, host: str) -> int:
    if scheme == "https":
        client = await tls_client(proxy.https_port, host)
    else:
        client = await Client.connect(proxy.http_port)
    try:
        return int((await client.request("GET", "/private", host=host)).status)
    finally:
        await client.close()


@pytest.mark.parametrize("name", sorted(ROWS))
@pytest.mark.usefixtures("unenforced")
async def test_refused_with_403_and_never_forwarded(
    pod: Pod, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    row = ROWS[name]
    objects = (
        _ingress("full", {**row.companions, name: row.value}),
        _ingress("alone", {name: row.value}),
        _ingress("open", {}),
    )
    result = compiled(*objects, pod=(pod.host, pod.port))
    async with running(result.snapshot, access_log=True) as proxy:
        assert await _get(proxy, row.scheme, "full.test") == 403
        assert await _get(proxy, row.scheme, "alone.test") == 403
        assert pod.requests == 0
        assert await _get(proxy, row.scheme, "open.test") == 200
        assert pod.requests == 1
        assert proxy.access is not None
        proxy.access.flush()
        lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if '"access"' in x]
        refused = [(x["ingress"], x["status"], x.get("reason")) for x in lines]
        assert refused[:2] == [
            ("default/full", 403, "AccessControlNotEnforced"),
            ("default/alone", 403, "AccessControlNotEnforced"),
        ]
        # The operator's choice serves it, unprotected.
        settings = CompileSettings(serve_without_access_control=True)
        proxy.apply(compiled(*objects, pod=(pod.host, pod.port), settings=settings).snapshot)
        assert await _get(proxy, row.scheme, "full.test") == 200
        assert pod.requests == 2


async def test_configmap_global_access_control_answers_403_and_never_forwards(pod: Pod) -> None:
    # The ingress-nginx ConfigMap's block-cidrs applies to every Ingress; Portico does not
    # enforce it yet. (global-auth-url is enforced: tests/integration/test_external_auth.py.)
    data = {"block-cidrs": "192.0.2.0/24"}
    reading = read(data, "ingress-nginx/ingress-nginx-controller")
    settings = compile_settings(overlay(Settings(), reading), reading)
    objects = (_ingress("open", {}), _ingress("other", {}))
    result = compiled(*objects, pod=(pod.host, pod.port), settings=settings)
    async with running(result.snapshot) as proxy:
        assert await _get(proxy, "http", "open.test") == 403
        assert await _get(proxy, "http", "other.test") == 403
        assert await _get(proxy, "https", "open.test") == 403
        assert pod.requests == 0
        # --serve-without-access-control serves them, unprotected.
        served = compile_settings(
            overlay(Settings(serve_without_access_control=True), reading), reading
        )
        proxy.apply(compiled(*objects, pod=(pod.host, pod.port), settings=served).snapshot)
        assert await _get(proxy, "http", "open.test") == 200
        assert pod.requests == 1
