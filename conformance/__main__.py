"""`python -m conformance`: run the Ingress conformance scenarios, locally or against a cluster.

Local mode (the default) starts KubeSim, echo backends and `portico controller` on loopback;
`--kubeconfig` targets a real cluster where Portico is installed (see conformance/cluster.py).
Prints `PASS name` / `FAIL name: what differed` per scenario, then `N passed, N failed` alone on
the last line; exits 1 when anything failed (or could not start), 2 on usage errors.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from conformance.runner import Outcome, Runner, summary_line
from conformance.scenario import Scenario, ScenarioError, load_scenarios

SCENARIOS = Path(__file__).resolve().parent / "scenarios"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m conformance", description="Run the Ingress conformance scenarios."
    )
    parser.add_argument(
        "--kubeconfig",
        type=Path,
        help="run against the cluster of this kubeconfig (Portico must be installed there); "
        "default: local mode (KubeSim + a controller subprocess on loopback)",
    )
    parser.add_argument("--scenarios", type=Path, default=SCENARIOS, metavar="DIR")
    parser.add_argument(
        "-k", dest="select", metavar="NAME", help="only scenarios whose area/name contains NAME"
    )
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    cluster = parser.add_argument_group("cluster mode")
    cluster.add_argument("--context", help="kubeconfig context (default: the current one)")
    cluster.add_argument(
        "--namespace",
        default="portico-conformance",
        help="namespace for the scenario objects and echo pods (created)",
    )
    cluster.add_argument(
        "--image",
        default="portico/portico:0.1.0",
        help="image of the echo pods (runs `portico echo`)",
    )
    cluster.add_argument(
        "--address",
        help="send requests here instead of the address in the "
        "Ingress status (e.g. 127.0.0.1 with a port-forward)",
    )
    cluster.add_argument("--http-port", type=int, default=80)
    cluster.add_argument("--https-port", type=int, default=443)
    parser.add_argument(
        "--controller-log",
        type=Path,
        metavar="PATH",
        help="local mode: keep the controller's log in this directory",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log the runner's steps")
    return parser


async def _run_local(
    scenarios: Sequence[Scenario], out: TextIO, err: TextIO, logdir: Path | None
) -> list[Outcome]:
    from conformance.local import LocalTarget, SetupError

    with tempfile.TemporaryDirectory(prefix="portico-conformance-") as tmp:
        workdir = logdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            async with LocalTarget(workdir) as target:
                outcomes = await Runner(target, out).run(scenarios)
                if not all(o.passed for o in outcomes):
                    print(f"--- controller log (last lines)\n{target.log_tail()}", file=err)
                return outcomes
        except SetupError as exc:
            print(f"conformance: local set-up failed: {exc}", file=err)
            return [Outcome(s.full_name, ("not run: set-up failed",)) for s in scenarios]


async def _run_cluster(
    args: argparse.Namespace, scenarios: Sequence[Scenario], out: TextIO, err: TextIO
) -> list[Outcome]:
    from conformance.cluster import ClusterError, ClusterTarget

    try:
        async with ClusterTarget(
            args.kubeconfig,
            context=args.context,
            namespace=args.namespace,
            image=args.image,
            address=args.address,
            http_port=args.http_port,
            https_port=args.https_port,
        ) as target:
            return await Runner(target, out, status_wait=60.0).run(scenarios)
    except ClusterError as exc:
        print(f"conformance: cluster set-up failed: {exc}", file=err)
        return [Outcome(s.full_name, ("not run: set-up failed",)) for s in scenarios]


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    out = sys.stdout if out is None else out
    err = sys.stderr
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=err)
    try:
        scenarios = load_scenarios(args.scenarios, args.select)
    except ScenarioError as exc:
        print(f"conformance: {exc}", file=err)
        return 2
    if args.list:
        for scenario in scenarios:
            print(f"{scenario.full_name}: {scenario.description}", file=out)
        return 0
    if not scenarios:
        print(f"conformance: no scenario matches {args.select!r}", file=err)
        return 2
    if args.kubeconfig is None:
        outcomes = asyncio.run(_run_local(scenarios, out, err, args.controller_log))
    else:
        outcomes = asyncio.run(_run_cluster(args, scenarios, out, err))
    print(summary_line(outcomes), file=out, flush=True)
    return 0 if all(o.passed for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
