"""Run the simulator standalone: `python -m tests.kubesim --port N --kubeconfig PATH`.

For humans (point kubectl or the controller at the kubeconfig) and for subprocess-based e2e
tests, which can wait for the kubeconfig file to appear (it is written atomically once the
server listens) or read the URL from the first line of stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from tests.kubesim.server import KubeSim


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tests.kubesim", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--kubeconfig", type=Path, help="write a kubeconfig for clients here")
    parser.add_argument("--tls", action="store_true", help="serve HTTPS with a throwaway CA")
    parser.add_argument(
        "-f",
        "--manifests",
        type=Path,
        action="append",
        default=[],
        help="YAML file of objects to create at start (repeatable)",
    )
    parser.add_argument("--bookmark-interval", type=float, default=5.0)
    parser.add_argument(
        "--reject-watch-list",
        action="store_true",
        help="answer sendInitialEvents with 422, as a Kubernetes 1.33 server does",
    )
    parser.add_argument(
        "--reject-loopback-endpoints",
        action="store_true",
        help="validate EndpointSlice addresses like a real server (no 127.0.0.0/8)",
    )
    parser.add_argument("--require-auth", action="store_true", help="401 without the token")
    parser.add_argument("--verbose", "-v", action="store_true")
    return parser


async def _run(args: argparse.Namespace) -> None:
    sim = KubeSim(
        host=args.host,
        port=args.port,
        tls=args.tls,
        require_auth=args.require_auth,
        bookmark_interval=args.bookmark_interval,
        watch_list=not args.reject_watch_list,
        allow_loopback_endpoints=not args.reject_loopback_endpoints,
    )
    for path in args.manifests:
        sim.load_manifests(path.read_text())
    await sim.start()
    if args.kubeconfig:
        sim.write_kubeconfig(args.kubeconfig)
    sys.stdout.write(f"{sim.url}\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await sim.stop()


def main() -> None:
    args = _parser().parse_args()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO)
    asyncio.run(_run(args))


if __name__ == "__main__":
    main()
