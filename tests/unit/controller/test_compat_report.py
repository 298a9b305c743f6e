"""`portico compat-report` on the real-world corpus and on small manifests: every annotation
accounted for, the JSON shape, exit codes, standard input, exact rows."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.cli import main
from tests.unenforced import unenforced  # noqa: F401 (a fixture)

# main() runs in this process: it must leave pytest's logging alone.
pytestmark = pytest.mark.usefixtures("cli_logging_off")
ROOT = Path(__file__).resolve().parents[3]
CORPUS = ROOT / "tests" / "data" / "corpus" / "ingress-nginx"
MANIFESTS = CORPUS / "nginx"
LIST = CORPUS / "nginx-ingresses-list.yaml"
PREFIXES = ("nginx.ingress.kubernetes.io/", "portico.dev/")
STATUSES = {"supported", "different", "unsupported", "refused", "unknown"}
N = PREFIXES[0]


def run(*argv: str, stdin: str = "") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["compat-report", *argv], out, err, io.StringIO(stdin))
    return code, out.getvalue(), err.getvalue()


def report_json(*argv: str, stdin: str = "") -> tuple[int, dict[str, Any]]:
    code, out, err = run(*argv, "--output", "json", stdin=stdin)
    assert out, err
    return code, json.loads(out)


def corpus_annotations() -> dict[tuple[str, str], dict[str, str]]:
    """(namespace, name) -> annotations under the two prefixes, read with plain YAML."""
    found: dict[tuple[str, str], dict[str, str]] = {}
    for path in sorted(MANIFESTS.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "Ingress":
                continue
            meta = doc["metadata"]
            key = (meta.get("namespace") or "default", meta["name"])
            annotations = meta.get("annotations") or {}
            found[key] = {k: v for k, v in annotations.items() if k.startswith(PREFIXES)}
    return found


def test_every_annotation_of_the_corpus_is_accounted_for() -> None:
    expected = corpus_annotations()
    assert len(expected) == 71
    code, report = report_json(str(MANIFESTS))
    assert code == 2  # snippets and unenforced access control
    got = {
        (i["namespace"], i["name"]): {a["name"]: a["value"] for a in i["annotations"]}
        for i in report["ingresses"]
    }
    assert got == expected
    rows = [a for i in report["ingresses"] for a in i["annotations"]]
    assert len(rows) == sum(len(a) for a in expected.values()) == 192
    assert all(a["status"] in STATUSES and a["detail"] for a in rows)
    assert report["summary"] == {s: sum(1 for a in rows if a["status"] == s) for s in STATUSES}
    # The corpus README's count: 7 names ingress-nginx does not know, 5 snippet keys (11 uses).
    assert len({a["name"] for a in rows if a["status"] == "unknown"}) == 7
    assert len({a["name"] for a in rows if a["status"] == "refused"}) == 5


def test_json_shape(tmp_path: Path) -> None:
    _, report = report_json(str(MANIFESTS), "--configmap", str(write_configmap_file(tmp_path)))
    assert set(report) == {"ingresses", "configMap", "summary"}
    for item in report["ingresses"]:
        assert set(item) == {"namespace", "name", "ingressClass", "annotations"}
        assert item["ingressClass"] is None or isinstance(item["ingressClass"], str)
        for row in item["annotations"]:
            assert set(row) == {"name", "value", "status", "detail"}
            assert all(isinstance(v, str) for v in row.values())
    assert report["configMap"]
    for row in report["configMap"]:
        assert set(row) == {"key", "value", "status", "detail"}
    assert set(report["summary"]) == STATUSES
    assert all(isinstance(v, int) for v in report["summary"].values())


def _find(report: dict[str, Any], ref: str) -> dict[str, Any]:
    namespace, name = ref.split("/")
    return next(i for i in report["ingresses"] if (i["namespace"], i["name"]) == (namespace, name))


def test_exact_rows() -> None:
    _, report = report_json(str(MANIFESTS))
    solver = _find(report, "shop/cm-acme-http-solver-x7k2p")
    assert solver["ingressClass"] == "nginx"  # the legacy annotation
    [row] = solver["annotations"]
    assert row["name"] == N + "whitelist-source-range"
    assert (row["value"], row["status"]) == ("0.0.0.0/0", "supported")  # enforced

    jump = _find(report, "jumpserver/jms-jumpserver-ingress")
    assert [(a["name"], a["status"]) for a in jump["annotations"]] == [
        (N + "proxy-body-size", "supported"),
        (N + "server-snippets", "unknown"),
    ]
    assert jump["annotations"][1]["detail"].endswith(f"did you mean {N}server-snippet?")

    grpc = _find(report, "argocd-opt2/argocd-server-grpc-ingress")
    assert grpc["annotations"] == [
        {
            "name": N + "backend-protocol",
            "value": "GRPC",
            "status": "different",  # accepted since issue 19 (gRPC to pods)
            "detail": grpc["annotations"][0]["detail"],
        }
    ]
    assert "HTTP/2 cleartext" in grpc["annotations"][0]["detail"]

    auth = _find(report, "kube-system/kube-explorer")
    assert auth["ingressClass"] is None  # no class at all: the default IngressClass's
    assert {a["name"]: a["status"] for a in auth["annotations"]} == {
        N + "auth-type": "different",
        N + "auth-secret": "supported",
        N + "auth-realm": "supported",
    }
    assert all("503" in a["detail"] for a in auth["annotations"])  # fails closed when unusable

    gitlab = _find(report, "gitlab/gitlab-webservice-default")
    assert gitlab["ingressClass"] == "gitlab-nginx"


def test_standard_input_with_a_kubectl_list() -> None:
    # `kubectl get ingress -A -o yaml`: the same Ingresses as the directory, same report.
    code, from_stdin = report_json("-", stdin=LIST.read_text())
    _, from_directory = report_json(str(MANIFESTS))
    assert code == 2
    assert from_stdin == from_directory


def test_files_and_duplicates() -> None:
    # The same Ingresses from two sources are reported once (the first source wins).
    _, both = report_json(str(LIST), str(MANIFESTS))
    _, one = report_json(str(LIST))
    assert both == one and len(one["ingresses"]) == 71


INGRESS = """\
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: app
  namespace: ns
  annotations: {annotations}
spec:
  ingressClassName: nginx
  rules:
    - host: app.test
      http:
        paths:
          - {{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}
"""

EXIT_ROWS: list[tuple[dict[str, str], int]] = [
    # (annotations, exit status)
    ({}, 0),
    ({N + "proxy-read-timeout": "30", "cert-manager.io/cluster-issuer": "le"}, 0),
    ({N + "load-balance": "ewma"}, 1),  # different
    ({N + "mirror-target": "http://mirror/"}, 1),  # unsupported
    ({N + "rewite-target": "/"}, 1),  # unknown
    ({N + "backend-protocol": "FCGI"}, 1),  # a value Portico does not accept
    ({N + "whitelist-source-range": "10.0.0.0/8"}, 0),  # enforced
    ({N + "denylist-source-range": "10.0.0.0/8,::1"}, 0),
    ({N + "whitelist-source-range": "10.0.0.0/8,"}, 2),  # not readable: fails closed (503)
    ({N + "auth-url": "http://auth/"}, 0),  # enforced (issue 18)
    ({N + "auth-url": "ftp://auth/"}, 2),  # not readable: fails closed (503)
    ({N + "auth-tls-match-cn": "CN=client"}, 2),  # not enforced: fails closed (403)
    ({N + "configuration-snippet": "deny all;"}, 2),  # refused
]


@pytest.mark.parametrize(("annotations", "status"), EXIT_ROWS)
@pytest.mark.usefixtures("unenforced")
def test_exit_status(tmp_path: Path, annotations: dict[str, str], status: int) -> None:
    path = tmp_path / "app.yaml"
    path.write_text(INGRESS.format(annotations=json.dumps(annotations)))
    code, out, err = run(str(path))
    assert code == status, out + err


@pytest.mark.usefixtures("unenforced")
def test_text_output_is_grouped_with_totals(tmp_path: Path) -> None:
    path = tmp_path / "app.yaml"
    annotations = {N + "auth-tls-match-cn": "CN=client", N + "proxy-body-size": "8m"}
    path.write_text(INGRESS.format(annotations=json.dumps(annotations)))
    code, out, _ = run(str(path))
    assert code == 2
    lines = out.splitlines()
    assert lines[0].startswith(
        "Ingress ns/app (class nginx): FAILS CLOSED, every request answered by Portico"
    )
    assert lines[1].split() == ["unsupported", f"{N}auth-tls-match-cn:", '"CN=client"']
    assert f"supported    {N}proxy-body-size: " in out
    assert "Ingresses: 1: 0 served, 0 refused (snippets), 1 answered 403" in out
    assert "Annotations: 2: 1 supported, 0 different, 1 unsupported, 0 refused, 0 unknown" in out
    assert "Request bodies: ingress-nginx: buffered whole" in out  # the defaults that differ
    assert "Request body size" not in out  # the same as ingress-nginx


def write_configmap_file(directory: Path) -> Path:
    path = directory / "cm.yaml"
    path.write_text(
        "apiVersion: v1\nkind: ConfigMap\n"
        "metadata: {name: ingress-nginx-controller, namespace: ingress-nginx}\n"
        'data: {hsts: "false", use-gzip: "true"}\n'
    )
    return path


def test_configmap_keys(tmp_path: Path) -> None:
    clean = tmp_path / "app.yaml"
    clean.write_text(INGRESS.format(annotations="{}"))
    code, report = report_json(str(clean), "--configmap", str(write_configmap_file(tmp_path)))
    assert code == 1
    rows = {r["key"]: r for r in report["configMap"]}
    assert set(rows) == {"hsts", "use-gzip"}
    # The rows are what --nginx-configmap does (controller/configmap.py): hsts is applied (and
    # "false" behaves as in ingress-nginx), use-gzip has no Portico equivalent.
    assert rows["hsts"]["status"] == "supported" and "--hsts" in rows["hsts"]["detail"]
    assert rows["use-gzip"]["status"] == "unsupported"
    assert "no equivalent" in rows["use-gzip"]["detail"]
    # Global access control: enforced (0), not enforced (2: every request answered 403), or not
    # readable (2: those Ingresses answer 503).
    for data, expected, says in (
        ("{whitelist-source-range: 10.0.0.0/8}", 0, "--allow-source-ranges"),
        ("{global-auth-url: 'http://auth/'}", 0, "External authentication"),
        ("{global-auth-url: 'ftp://auth/'}", 2, "503"),
        ("{block-cidrs: 192.0.2.0/24}", 2, "answered 403"),
        ("{denylist-source-range: 'example.com'}", 2, "503"),
    ):
        guarded = tmp_path / "guarded.yaml"
        guarded.write_text(
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n"
            "  metadata: {name: c, namespace: n}\n"
            f"  data: {data}\n"
        )
        code, report = report_json(str(clean), "--configmap", str(guarded))
        assert code == expected, data
        assert says in report["configMap"][0]["detail"], data


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        ((), "needs manifest PATHs"),
        (("/nonexistent/file.yaml",), "cannot read"),
        ((str(MANIFESTS), "--configmap", "/nonexistent.yaml"), "cannot read"),
    ],
)
def test_usage_errors(argv: tuple[str, ...], says: str) -> None:
    code, _, err = run(*argv)
    assert code == 2 and says in err


def test_invalid_manifest_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("kind: Ingress\nmetadata: [\n")
    code, _, err = run(str(tmp_path / "bad.yaml"))
    assert code == 2 and "bad.yaml#0" in err
    (tmp_path / "typo.yaml").write_text(
        "apiVersion: networking.k8s.io/v1\nkind: Ingres\nmetadata: {name: x}\n"
    )
    code, _, err = run(str(tmp_path / "typo.yaml"))
    assert code == 2 and "UnknownKind" in err
