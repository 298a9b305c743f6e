"""`portico check DIR`: exit codes, one readable line per problem, the summary."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from controller.cli import main

# main() runs in this process: it must leave pytest's logging alone.
pytestmark = pytest.mark.usefixtures("cli_logging_off")
ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples"

GOOD = """\
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: portico}
spec: {controller: portico.dev/ingress-controller}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: site, namespace: ns}
spec:
  ingressClassName: portico
  rules:
    - host: site.local
      http:
        paths:
          - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: ns}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, namespace: ns, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8081}]
endpoints: [{addresses: [127.0.0.2], conditions: {ready: true}}]
"""


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


def write(directory: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return directory


def test_examples_are_clean() -> None:
    code, out, _ = run("check", str(EXAMPLES))
    assert code == 0, out
    summary = out.strip().splitlines()[-1]
    assert "0 problems" in summary
    assert "3 owned" in summary
    assert "demo.local" in summary
    assert "secure.demo.local" in summary
    assert "skipped objects (kinds not read): 1" in summary


def test_good_directory(tmp_path: Path) -> None:
    write(tmp_path, {"app.yaml": GOOD})
    code, out, _ = run("check", str(tmp_path))
    assert code == 0
    assert out.count("\n") == 1
    assert "1 owned, 0 ignored" in out
    assert "endpoints: 1" in out


@pytest.mark.parametrize(
    ("broken", "ref", "reason_text"),
    [
        ("a: [unclosed\n", "broken.yaml#0", "invalid YAML"),
        ("kind: Service\nmetadata: {name: x}\n", "broken.yaml#0", "no apiVersion"),
        ("apiVersion: v1\nmetadata: {name: x}\n", "broken.yaml#0", "no kind"),
        ("- just\n- a list\n", "broken.yaml#0", "not an object"),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ok}\n---\n"
            "apiVersion: v1\nkind: Service\nmetadata: {name: web2, namespace: ns}\n"
            "spec: {ports: [{port: eighty}]}\n",
            "broken.yaml#1",
            "spec.ports[0].port",
        ),
        (
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ok}\n---\n"
            "apiVersion: v1\nkind: Service\nmetadata: {name: web2\n",
            "broken.yaml#1",
            "invalid YAML",
        ),
    ],
)
def test_broken_file_is_a_problem(tmp_path: Path, broken: str, ref: str, reason_text: str) -> None:
    write(tmp_path, {"app.yaml": GOOD, "broken.yaml": broken})
    code, out, _ = run("check", str(tmp_path))
    assert code == 1
    lines = [line for line in out.splitlines() if "InvalidManifest" in line]
    assert len(lines) == 1, out
    assert lines[0].startswith(f"File {ref}: InvalidManifest: ")
    assert reason_text in lines[0]
    assert "1 problem;" in out
    # The rest of the directory still compiles.
    assert "1 owned" in out


def test_compile_problems_are_listed(tmp_path: Path) -> None:
    missing = GOOD.replace("name: web, port: {number: 80}", "name: nothere, port: {number: 80}")
    write(tmp_path, {"app.yaml": missing})
    code, out, _ = run("check", str(tmp_path))
    assert code == 1
    assert any("ServiceNotFound" in line and "ns/site" in line for line in out.splitlines())


def test_duplicate_object_first_file_wins(tmp_path: Path) -> None:
    copy = GOOD.split("---\n")[2]  # the Service
    write(tmp_path, {"a.yaml": GOOD, "sub/z.yaml": copy})
    code, out, _ = run("check", str(tmp_path))
    assert code == 1
    lines = [line for line in out.splitlines() if "DuplicateObject" in line]
    assert len(lines) == 1
    assert lines[0].startswith("File sub/z.yaml#0: DuplicateObject: ")
    assert "a.yaml#2" in lines[0]


def test_list_kind_and_skipped_kinds(tmp_path: Path) -> None:
    items = "\n".join("  - " + doc.strip().replace("\n", "\n    ") for doc in GOOD.split("---\n"))
    listed = f"apiVersion: v1\nkind: List\nitems:\n{items}\n"
    skipped = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: ns}\n"
    write(tmp_path, {"list.yml": listed, "deploy.yaml": skipped, "notes.txt": "not yaml: ["})
    code, out, _ = run("check", str(tmp_path))
    assert code == 0, out
    assert "1 owned" in out
    assert "endpoints: 1" in out
    assert "skipped objects (kinds not read): 1" in out
    assert "skipped deploy.yaml#0: apps/v1 Deployment ns/web (kind not read)" in out


def doc(api_version: str, kind: str, meta: str = "{name: web, namespace: ns}") -> str:
    return f"apiVersion: {api_version}\nkind: {kind}\nmetadata: {meta}\n"


def note(what: str) -> str:
    return f"skipped x.yaml#1: {what} (kind not read)"


# (document, the line `check` prints for it, exit code): every skipped object is named
# (file#document, apiVersion, kind, name); one that looks meant for Portico is a problem.
SKIPPED = [
    (doc("apps/v1", "Deployment"), note("apps/v1 Deployment ns/web"), 0),
    (doc("v1", "ServiceAccount", "{name: sa}"), note("v1 ServiceAccount sa"), 0),
    (doc("v1", "Endpoints"), note("v1 Endpoints ns/web"), 0),
    (doc("v1", "ServiceAccount", "{}"), note("v1 ServiceAccount <unnamed>"), 0),
    (
        doc("networking.k8s.io/v1", "Ingres"),
        "File x.yaml#1: UnknownKind: networking.k8s.io/v1 Ingres ns/web is not read (skipped): "
        "did you mean kind: Ingress?",
        1,
    ),
    (
        doc("networking.k8s.io/v1", "ingress"),
        "File x.yaml#1: UnknownKind: networking.k8s.io/v1 ingress ns/web is not read (skipped): "
        "did you mean kind: Ingress?",
        1,
    ),
    (
        doc("discovery.k8s.io/v1", "EndpointSlices"),
        "File x.yaml#1: UnknownKind: discovery.k8s.io/v1 EndpointSlices ns/web is not read "
        "(skipped): did you mean kind: EndpointSlice?",
        1,
    ),
    (
        doc("networking.k8s.io/v1beta1", "Ingress"),
        "File x.yaml#1: UnsupportedAPIVersion: networking.k8s.io/v1beta1 Ingress ns/web is not "
        "read (skipped): Portico reads Ingress as apiVersion: networking.k8s.io/v1",
        1,
    ),
    (
        doc("extensions/v1beta1", "Ingress"),
        "File x.yaml#1: UnsupportedAPIVersion: extensions/v1beta1 Ingress ns/web is not read "
        "(skipped): Portico reads Ingress as apiVersion: networking.k8s.io/v1",
        1,
    ),
    (
        doc("discovery.k8s.io/v1beta1", "EndpointSlice"),
        "File x.yaml#1: UnsupportedAPIVersion: discovery.k8s.io/v1beta1 EndpointSlice ns/web is "
        "not read (skipped): Portico reads EndpointSlice as apiVersion: discovery.k8s.io/v1",
        1,
    ),
    (
        "apiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Servce, metadata: {name: a}}",
        "File x.yaml#1: UnknownKind: items[0]: v1 Servce a is not read (skipped): "
        "did you mean kind: Service?",
        1,
    ),
]


@pytest.mark.parametrize(("document", "line", "code"), SKIPPED, ids=[r[1][:60] for r in SKIPPED])
def test_skipped_objects_are_named(tmp_path: Path, document: str, line: str, code: int) -> None:
    # Document 0 is an ordinary object, so the index shown is the document's own.
    write(tmp_path, {"app.yaml": GOOD, "x.yaml": f"{doc('v1', 'ServiceAccount')}---\n{document}"})
    exit_code, out, _ = run("check", str(tmp_path))
    assert exit_code == code, out
    assert line in out.splitlines()
    assert "skipped x.yaml#0: v1 ServiceAccount ns/web (kind not read)" in out
    assert "skipped objects (kinds not read): 2" in out
    assert f"{code} problem{'s' if code != 1 else ''};" in out
    # A skipped object, even a mistaken one, leaves the rest of its file and directory in use.
    assert "1 owned" in out


def test_ignored_ingress_is_reported_but_not_a_problem(tmp_path: Path) -> None:
    write(tmp_path, {"app.yaml": GOOD.replace("ingressClassName: portico", "ingressClassName: x")})
    code, out, _ = run("check", str(tmp_path))
    assert code == 0
    assert "ignored Ingress ns/site:" in out
    assert "0 owned, 1 ignored" in out


def test_class_flag_changes_what_is_ours(tmp_path: Path) -> None:
    text = GOOD.replace("ingressClassName: portico", "ingressClassName: other").replace(
        "metadata: {name: portico}\nspec: {controller: portico.dev/ingress-controller}",
        "metadata: {name: other}\nspec: {controller: example.com/other}",
    )
    write(tmp_path, {"app.yaml": text})
    assert "0 owned" in run("check", str(tmp_path))[1]
    code, out, _ = run("check", str(tmp_path), "--controller-name", "example.com/other")
    assert code == 0
    assert "1 owned" in out


def test_missing_directory_is_a_usage_error(tmp_path: Path) -> None:
    code, _, err = run("check", str(tmp_path / "nope"))
    assert code == 2
    assert "not a directory" in err


def test_python_m_controller_check_examples() -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "controller", "check", str(EXAMPLES)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "0 problems" in completed.stdout
