"""The migration guide (docs/migrating-from-ingress-nginx.md), walked: its commands run here.

Every ```sh block of the guide is split into commands (continuation lines joined, `|` pipelines
and `>` redirections understood) and each command is, by its program:

- `portico ...`: run (`python -m controller`) in a scratch directory holding what the guide's
  earlier commands would have written there: `kubectl get ingress -A -o yaml` is the test
  corpus's List (tests/data/corpus/ingress-nginx), the ConfigMap and the IngressClass are those
  of a default ingress-nginx install. A command that needs a cluster (`--kubeconfig`) is only
  parsed by Portico's own argument parser;
- `helm install|upgrade ... ./charts/portico`: rendered with `helm template` and the same values
  files (the guide's ```yaml blocks that start with `# file: NAME`) and flags;
- `helm` on ingress-nginx's chart, `kubectl`, `curl`: parsed (a JSON patch must be JSON);
- `cp`: done.

Every key of the values files, of the `--set` flags on Portico's chart and of the guide's table
of chart values exists in charts/portico/values.schema.json.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controller.cli import build_parser
from tests.helm_tools import CHART, find_helm

ROOT = Path(__file__).resolve().parents[3]
GUIDE = ROOT / "docs" / "migrating-from-ingress-nginx.md"
CORPUS = ROOT / "tests" / "data" / "corpus" / "ingress-nginx"
SCHEMA = json.loads((CHART / "values.schema.json").read_text())

# What `kubectl` prints for the reads the guide redirects into files, in a cluster running
# ingress-nginx's chart (release ingress-nginx) and the corpus's Ingresses.
CONFIGMAP = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: ingress-nginx-controller
  namespace: ingress-nginx
data:
  allow-snippet-annotations: "false"
  proxy-body-size: 8m
  proxy-read-timeout: "120"
  use-forwarded-headers: "true"
  hsts-preload: "false"
  use-gzip: "true"
"""
INGRESS_CLASS = """\
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: nginx
  annotations:
    ingressclass.kubernetes.io/is-default-class: "true"
spec:
  controller: k8s.io/ingress-nginx
"""
KUBECTL_READS = {
    "kubectl get ingress -A -o yaml": (CORPUS / "nginx-ingresses-list.yaml").read_text(),
    "kubectl -n ingress-nginx get configmap ingress-nginx-controller -o yaml": CONFIGMAP,
    "kubectl get ingressclass nginx -o yaml": INGRESS_CLASS,
}
KUBECTL_VERBS = {"get", "patch", "annotate", "rollout"}


@dataclass(frozen=True)
class Block:
    lang: str
    text: str
    line: int


def blocks() -> list[Block]:
    """The fenced blocks of the guide (indented ones, inside list items, dedented)."""
    found: list[Block] = []
    lines = GUIDE.read_text().splitlines()
    start: tuple[str, int] | None = None
    body: list[str] = []
    for number, line in enumerate(lines, 1):
        fence = re.match(r"^\s*```(\w*)\s*$", line)
        if fence is None:
            if start is not None:
                body.append(line)
            continue
        if start is None:
            start, body = (fence.group(1), number), []
        else:
            found.append(Block(start[0], textwrap.dedent("\n".join(body)), start[1]))
            start = None
    assert start is None, "unterminated code block"
    return found


def files() -> dict[str, str]:
    out = {}
    for block in blocks():
        first = block.text.splitlines()[0] if block.text else ""
        if block.lang == "yaml" and first.startswith("# file: "):
            out[first.removeprefix("# file: ").strip()] = block.text
    return out


Stage = list[str]


@dataclass(frozen=True)
class Command:
    pipeline: list[Stage]
    redirect: str | None  # `> FILE`
    line: int

    def __str__(self) -> str:
        return f"line {self.line}: " + " | ".join(shlex.join(s) for s in self.pipeline)


def commands() -> list[Command]:
    out = []
    for block in blocks():
        if block.lang != "sh":
            continue
        logical = block.text.replace("\\\n", " ")
        for offset, line in enumerate(logical.splitlines()):
            tokens = shlex.split(line, comments=True)
            if not tokens:
                continue
            redirect = None
            if ">" in tokens:
                at = tokens.index(">")
                redirect = tokens[at + 1]
                tokens = tokens[:at]
            pipeline: list[Stage] = [[]]
            for token in tokens:
                if token == "|":
                    pipeline.append([])
                else:
                    pipeline[-1].append(token)
            out.append(Command(pipeline, redirect, block.line + 1 + offset))
    return out


# ---- the chart's values -------------------------------------------------------------------------


def schema_has(path: list[str]) -> bool:
    node: dict[str, Any] = SCHEMA
    for key in path:
        properties = node.get("properties") or {}
        if key not in properties:
            return False
        node = properties[key]
    return True


def value_paths(values: Any, prefix: tuple[str, ...] = ()) -> list[list[str]]:
    """The key paths of a values document, stopping at free-form maps (annotations, config)."""
    if not isinstance(values, dict) or prefix[-1:] in (("annotations",), ("config",)):
        return [list(prefix)] if prefix else []
    out = [list(prefix)] if prefix else []
    for key, value in values.items():
        out += value_paths(value, (*prefix, str(key)))
    return out


def test_values_files_use_chart_values() -> None:
    import yaml

    written = files()
    assert set(written) >= {
        "portico-values.yaml",
        "portico-takeover-values.yaml",
        "portico-address-values.yaml",
        "portico-final-values.yaml",
    }
    for name, text in written.items():
        for path in value_paths(yaml.safe_load(text)):
            assert schema_has(path), f"{name}: {'.'.join(path)} is not a chart value"


def test_table_of_chart_values() -> None:
    rows = re.findall(r"^\| (`controller\..*?) \| (.*?) \|$", GUIDE.read_text(), re.M)
    assert len(rows) >= 12
    for _, portico in rows:
        for value in re.findall(r"`([a-zA-Z.]+)`", portico):
            path = value.split(".")
            if value.startswith("."):  # `.pathOverride`: beside the previous value
                continue
            assert schema_has(path), f"{value} is not a chart value"


# ---- the commands -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def walked(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run the guide's commands in order in one scratch directory; what each printed."""
    work = tmp_path_factory.mktemp("guide")
    manifests = work / "manifests"
    manifests.mkdir()
    for source in sorted((CORPUS / "nginx").glob("*.yaml")):
        if source.name != "00-ingressclass.yaml":  # the cluster's classes come from kubectl
            shutil.copy(source, manifests / source.name)
    for name, text in files().items():
        (work / name).write_text(text)
    helm, why = find_helm()
    results: dict[str, Any] = {"portico": [], "helm": [], "parsed": [], "helm_skipped": why}
    walk = Walk(work, helm, results)
    for command in commands():
        stdin: str | None = None
        for stage in command.pipeline:
            stdin = run_stage(stage, stdin, command, walk)
        if command.redirect is not None:
            assert stdin is not None, f"{command}: nothing to write to {command.redirect}"
            (work / command.redirect).write_text(stdin)
    return results


@dataclass(frozen=True)
class Walk:
    """Where the guide is walked: the scratch directory, Helm (None: missing), the results."""

    work: Path
    helm: Path | None
    results: dict[str, Any]


def run_stage(stage: Stage, stdin: str | None, command: Command, walk: Walk) -> str | None:
    work, helm, results = walk.work, walk.helm, walk.results
    program = stage[0]
    if program == "kubectl":
        assert stdin is None, f"{command}: kubectl reads nothing here"
        assert kubectl_verb(stage) in KUBECTL_VERBS, f"{command}: kubectl verb"
        if "-p" in stage:
            json.loads(stage[stage.index("-p") + 1])
        results["parsed"].append(stage)
        return KUBECTL_READS.get(shlex.join(stage))
    if program == "portico":
        return run_portico(stage[1:], stdin, command, work, results)
    if program == "helm":
        run_helm(stage[1:], command, work, helm, results)
        return None
    if program == "cp":
        shutil.copy(work / stage[1], work / stage[2])
        return None
    assert program == "curl", f"{command}: no rule for {program}"
    assert any(t.startswith("http") for t in stage), str(command)
    results["parsed"].append(stage)
    return None


def kubectl_verb(stage: Stage) -> str:
    """The verb of a kubectl command line, after its global options (-n NAMESPACE, -A)."""
    tokens = stage[1:]
    at = 0
    while at < len(tokens) and tokens[at].startswith("-"):
        at += 2 if tokens[at] in ("-n", "--namespace") else 1
    return tokens[at] if at < len(tokens) else ""


def run_portico(
    argv: list[str], stdin: str | None, command: Command, work: Path, results: dict[str, Any]
) -> str:
    build_parser().parse_args(argv)  # SystemExit on a flag Portico does not have
    if "--kubeconfig" in argv:  # needs a cluster: parsed only
        results["parsed"].append(["portico", *argv])
        return ""
    done = subprocess.run(
        [sys.executable, "-m", "controller", *argv],
        input=stdin,
        cwd=work,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    assert not done.stderr.startswith("portico:"), f"{command}: {done.stderr}"
    assert done.returncode in (0, 1, 2), f"{command}: exit {done.returncode}: {done.stderr}"
    results["portico"].append((argv, done.returncode, done.stdout))
    return done.stdout


def run_helm(
    argv: list[str], command: Command, work: Path, helm: Path | None, results: dict[str, Any]
) -> None:
    verb = argv[0]
    assert verb in ("install", "upgrade", "uninstall"), str(command)
    options = [a for a in argv[1:] if a.startswith("-")]
    assert all(o.startswith("--") or o in ("-f", "-n") for o in options), str(command)
    positional = [a for a in argv[1:] if not a.startswith("-")]
    if verb == "uninstall" or "./charts/portico" not in positional:
        # ingress-nginx's release and chart: not here.
        assert positional[0] == "ingress-nginx", str(command)
        results["parsed"].append(["helm", *argv])
        return
    release = argv[1]
    args = ["template", release, str(CHART)]
    rest = iter(argv[3:])
    for arg in rest:
        if arg in ("-f", "--namespace", "-n"):
            value = next(rest)
            args += [arg, str(work / value) if arg == "-f" else value]
        elif arg == "--set":
            value = next(rest)
            assert schema_has(value.partition("=")[0].split(".")), f"{command}: {value}"
            args += [arg, value]
        elif arg != "--create-namespace":
            pytest.fail(f"{command}: no rule for {arg}")
    if helm is None:
        return
    done = subprocess.run(
        [str(helm), *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"{command}: {done.stderr}"
    results["helm"].append((argv, done.stdout))


def test_compat_report_on_the_corpus(walked: dict[str, Any]) -> None:
    reports = [r for r in walked["portico"] if r[0][0] == "compat-report"]
    assert len(reports) == 2  # the file, and standard input
    for argv, code, out in reports:
        assert code == 2, argv  # the corpus has snippets and access control
        assert "Ingresses: 71: " in out
    (with_configmap,) = [out for argv, _, out in reports if "--configmap" in argv]
    assert "ConfigMap ingress-nginx/ingress-nginx-controller:" in with_configmap
    assert "supported    proxy-body-size" in with_configmap


def test_check_on_the_manifests(walked: dict[str, Any]) -> None:
    (check,) = [r for r in walked["portico"] if r[0][0] == "check"]
    _, code, out = check
    assert code == 1
    # The Ingresses of class nginx (and the legacy annotation) are Portico's; the ConfigMap's
    # keys without effect are named.
    assert "UnsupportedConfigMapKey: key use-gzip" in out
    assert "ingresses: 0 owned" not in out
    assert re.search(r"ingresses: [1-9][0-9]* owned", out), out


def test_chart_commands_render(walked: dict[str, Any]) -> None:
    if walked["helm_skipped"]:
        pytest.skip(walked["helm_skipped"])
    rendered = {" ".join(argv): out for argv, out in walked["helm"]}
    assert len(rendered) == 4  # install, take over, final values, final values + address
    takeover = [out for argv, out in rendered.items() if "portico-takeover-values.yaml" in argv]
    assert takeover and all(
        'value: "portico.dev/ingress-controller,k8s.io/ingress-nginx"' in out for out in takeover
    )
    final = [out for argv, out in rendered.items() if "portico-address-values.yaml" in argv]
    assert final and all('loadBalancerIP: "203.0.113.10"' in out for out in final)


def test_every_command_is_accounted_for(walked: dict[str, Any]) -> None:
    ran = len(walked["portico"]) + len(walked["helm"])
    parsed = len(walked["parsed"])
    assert ran >= 6 and parsed >= 10


def test_readme_links_the_guide() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "docs/migrating-from-ingress-nginx.md" in readme
