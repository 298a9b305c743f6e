"""`portico serve` on proxy-bench's manifests with annotations added: what a route with them costs.

proxy-bench (../shared/bench) writes its own manifests (Ingresses `bench` and `bench-tls`, one
Prefix path "/" each) and starts `<--portico> serve --manifests DIR ...`. Given as `--portico`,
this script edits those two Ingresses in DIR according to a profile, then runs Portico in its
place, so the same bench loads a route carrying the profile's annotations:

    PORTICO_ACCESS_LOG=false ../shared/bench/proxy-bench \
        --portico "python -m tests.bench.annotated_serve regex-rewrite"

Profiles (each keeps the path the backend sees, so proxy-bench's answer check still holds):
- `regex-rewrite`: path `/(.*)` (ImplementationSpecific) with `use-regex` and
  `rewrite-target: /$1`: a regex lookup and a rewrite of the upstream head per request.
- `cors`: `enable-cors` with a `cors-allow-origin` list (an exact origin and a wildcard): each
  request's head is searched for an Origin (proxy-bench sends none, so no field is added).
- `cors-any`: `enable-cors` alone (every origin): the Access-Control-* fields, rendered once,
  added to every response.
- `plain`: the manifests unchanged (the same process chain, for an A/B of the wrapper itself).
- `canary-weight`: each bench Ingress gets a canary Ingress (`canary-weight: 50`) for the same
  host and path, whose Service is a copy of the bench Service (same pods, its EndpointSlices
  copied): half the requests go to each backend, chosen by a random draw per request.
- `passthrough-other`: `--enable-ssl-passthrough` and one more Ingress with `ssl-passthrough`
  for another host (`passthrough.bench.local`): the bench hosts are not passthrough, so this is
  what passthrough costs every other HTTPS connection (the SNI peek before the handshake).
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from typing import Any

import yaml

PROFILES: dict[str, tuple[dict[str, str], str, str]] = {
    # profile -> (annotations, path, pathType)
    "regex-rewrite": (
        {
            "nginx.ingress.kubernetes.io/use-regex": "true",
            "nginx.ingress.kubernetes.io/rewrite-target": "/$1",
        },
        "/(.*)",
        "ImplementationSpecific",
    ),
    "cors": (
        {
            "nginx.ingress.kubernetes.io/enable-cors": "true",
            "nginx.ingress.kubernetes.io/cors-allow-origin": (
                "https://app.bench.example, https://*.bench.example"
            ),
        },
        "/",
        "Prefix",
    ),
    "cors-any": ({"nginx.ingress.kubernetes.io/enable-cors": "true"}, "/", "Prefix"),
    "plain": ({}, "/", "Prefix"),
    "canary-weight": ({}, "/", "Prefix"),
    "passthrough-other": ({}, "/", "Prefix"),
}
# profile -> the annotations of a canary Ingress added next to each bench Ingress.
CANARY_PROFILES: dict[str, dict[str, str]] = {
    "canary-weight": {
        "nginx.ingress.kubernetes.io/canary": "true",
        "nginx.ingress.kubernetes.io/canary-weight": "50",
    },
}
CANARY_SUFFIX = "-canary"
# profile -> a passthrough host added beside the bench hosts (with --enable-ssl-passthrough).
PASSTHROUGH_PROFILES: dict[str, str] = {"passthrough-other": "passthrough.bench.local"}
BENCH_INGRESSES = ("bench", "bench-tls")


def annotate(directory: Path, profile: str) -> None:
    annotations, path, path_type = PROFILES[profile]
    for file in sorted(directory.glob("*.yaml")):
        docs: list[Any] = list(yaml.safe_load_all(file.read_text()))
        for doc in docs:
            if not isinstance(doc, dict) or doc.get("kind") != "Ingress":
                continue
            if doc["metadata"]["name"] not in BENCH_INGRESSES:
                continue
            doc["metadata"].setdefault("annotations", {}).update(annotations)
            for rule in doc["spec"]["rules"]:
                for each in rule["http"]["paths"]:
                    each["path"], each["pathType"] = path, path_type
        file.write_text(yaml.safe_dump_all(docs))
    if profile in CANARY_PROFILES:
        add_canaries(directory, CANARY_PROFILES[profile])
    if profile in PASSTHROUGH_PROFILES:
        add_passthrough(directory, PASSTHROUGH_PROFILES[profile])


def add_passthrough(directory: Path, host: str) -> None:
    """A copy of the plain bench Ingress for `host`, with ssl-passthrough."""
    for file in sorted(directory.glob("*.yaml")):
        for doc in yaml.safe_load_all(file.read_text()):
            if (
                isinstance(doc, dict)
                and doc.get("kind") == "Ingress"
                and doc["metadata"]["name"] == BENCH_INGRESSES[0]
            ):
                passthrough = copy.deepcopy(doc)
                passthrough["metadata"]["name"] = "bench-passthrough"
                passthrough["metadata"]["annotations"] = {
                    "nginx.ingress.kubernetes.io/ssl-passthrough": "true"
                }
                passthrough["spec"]["rules"][0]["host"] = host
                (directory / "zz-passthrough.yaml").write_text(yaml.safe_dump(passthrough))
                return


def add_canaries(directory: Path, annotations: dict[str, str]) -> None:
    """A canary Ingress per bench Ingress (a copy naming a copy of its Service), and the
    copies of those Services and of their EndpointSlices, in one more manifest file."""
    docs: list[Any] = [
        doc
        for file in sorted(directory.glob("*.yaml"))
        for doc in yaml.safe_load_all(file.read_text())
        if isinstance(doc, dict)
    ]
    added: list[Any] = []
    services: set[str] = set()
    for doc in docs:
        if doc.get("kind") != "Ingress" or doc["metadata"]["name"] not in BENCH_INGRESSES:
            continue
        canary = copy.deepcopy(doc)
        canary["metadata"]["name"] += CANARY_SUFFIX
        canary["metadata"]["annotations"] = dict(annotations)
        canary["spec"].pop("tls", None)
        for rule in canary["spec"]["rules"]:
            for each in rule["http"]["paths"]:
                service = each["backend"]["service"]
                services.add(service["name"])
                service["name"] += CANARY_SUFFIX
        added.append(canary)
    for doc in docs:
        kind, metadata = doc.get("kind"), doc.get("metadata", {})
        labels = metadata.get("labels", {})
        if kind == "Service" and metadata.get("name") in services:
            copied = copy.deepcopy(doc)
            copied["metadata"]["name"] += CANARY_SUFFIX
            added.append(copied)
        elif kind == "EndpointSlice" and labels.get("kubernetes.io/service-name") in services:
            copied = copy.deepcopy(doc)
            copied["metadata"]["name"] += CANARY_SUFFIX
            copied["metadata"]["labels"]["kubernetes.io/service-name"] += CANARY_SUFFIX
            added.append(copied)
    (directory / "zz-canary.yaml").write_text(yaml.safe_dump_all(added))


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[0] not in PROFILES or "--manifests" not in argv:
        sys.exit(f"usage: annotated_serve.py {{{','.join(PROFILES)}}} serve --manifests DIR ...")
    profile, args = argv[0], argv[1:]
    annotate(Path(args[args.index("--manifests") + 1]), profile)
    if profile in PASSTHROUGH_PROFILES:
        args.append("--enable-ssl-passthrough")
    os.execv(sys.executable, [sys.executable, "-m", "controller", *args])


if __name__ == "__main__":
    main(sys.argv[1:])
