"""`python -m conformance`: run the Ingress conformance scenarios, locally or against a cluster.

Local mode (the default) starts KubeSim, echo backends and `portico controller` on loopback;
`--kubeconfig` targets a real cluster where Portico is installed (see conformance/cluster.py).
Prints `PASS name` / `FAIL name: what differed` / `SKIP name: what it needs` per scenario, then
`N passed, N failed` (`, N skipped`) alone on the last line; exits 1 when anything failed, 2 on
usage errors, 3 when it cannot run at all -- a missing Python module, no checkout for local
mode, an unreadable kubeconfig, a controller or cluster that cannot be set up -- after saying
exactly what is missing (conformance/preflight.py).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final, TextIO

from conformance import preflight

if TYPE_CHECKING:  # imported once preflight has checked they can be
    from conformance.runner import Outcome
    from conformance.scenario import Scenario

SCENARIOS: Final = Path(__file__).resolve().parent / "scenarios"
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_CANNOT_RUN: Final = 3


class CannotRun(Exception):
    """The run could not start; the message says what is missing."""


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
        "--unwatched-namespace",
        metavar="NAME",
        help="a namespace Portico does not watch (it is installed namespaced): enables the "
        "scenarios that need one (created if missing)",
    )
    cluster.add_argument(
        "--one-worker",
        action="store_true",
        help="Portico runs one replica with one worker: enables the scenarios that count "
        "answers per pod (balancers keep their state per worker)",
    )
    cluster.add_argument(
        "--image",
        default="portico/portico:0.1.0",
        help="image of the echo pods (runs `portico echo`)",
    )
    cluster.add_argument("--echo-port", type=int, default=8080, help="port the echo pods listen on")
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
    from conformance.runner import Runner

    with tempfile.TemporaryDirectory(prefix="portico-conformance-") as tmp:
        workdir = logdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            async with LocalTarget(workdir) as target:
                outcomes = await Runner(target, out).run(scenarios)
                if any(o.failed for o in outcomes):
                    print(f"--- controller log (last lines)\n{target.log_tail()}", file=err)
                return outcomes
        except SetupError as exc:
            raise CannotRun(f"local set-up failed: {exc}") from exc


async def _run_cluster(
    args: argparse.Namespace, scenarios: Sequence[Scenario], out: TextIO
) -> list[Outcome]:
    from conformance.cluster import ClusterError, ClusterTarget
    from conformance.runner import Runner

    try:
        async with ClusterTarget(
            args.kubeconfig,
            context=args.context,
            namespace=args.namespace,
            unwatched_namespace=args.unwatched_namespace,
            one_worker=args.one_worker,
            image=args.image,
            echo_port=args.echo_port,
            address=args.address,
            http_port=args.http_port,
            https_port=args.https_port,
        ) as target:
            return await Runner(target, out, status_wait=60.0).run(scenarios)
    except ClusterError as exc:
        raise CannotRun(f"cluster set-up failed: {exc}") from exc


def _cannot_run(problems: Sequence[str], err: TextIO) -> int:
    for problem in problems:
        print(f"conformance: cannot run: {problem}", file=err)
    print(f"conformance: {preflight.environment_hint()}", file=err)
    return EXIT_CANNOT_RUN


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    out = sys.stdout if out is None else out
    err = sys.stderr
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=err)
    if problems := preflight.check(args.kubeconfig, args.context, run=not args.list):
        return _cannot_run(problems, err)
    from conformance.runner import summary_line
    from conformance.scenario import ScenarioError, load_scenarios

    try:
        scenarios = load_scenarios(args.scenarios, args.select)
    except ScenarioError as exc:
        print(f"conformance: {exc}", file=err)
        return EXIT_USAGE
    if args.list:
        for scenario in scenarios:
            print(f"{scenario.full_name}: {scenario.description}", file=out)
        return 0
    if not scenarios:
        print(f"conformance: no scenario matches {args.select!r}", file=err)
        return EXIT_USAGE
    try:
        if args.kubeconfig is None:
            outcomes = asyncio.run(_run_local(scenarios, out, err, args.controller_log))
        else:
            outcomes = asyncio.run(_run_cluster(args, scenarios, out))
    except CannotRun as exc:
        return _cannot_run([str(exc)], err)
    print(summary_line(outcomes), file=out, flush=True)
    return EXIT_FAILED if any(o.failed for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
