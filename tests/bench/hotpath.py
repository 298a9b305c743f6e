"""Micro-benchmark of the proxy's per-request Python cost, with fake transports (no sockets).

Drives one DownstreamProtocol and one pooled UpstreamProtocol through keep-alive requests: a
client request read, the upstream head written, the pod's response read, the client response
written. Run: `.venv/bin/python -m tests.bench.hotpath [small|64k|chunked] [--profile]`. The
proxy and its fake transports come from tests/fakes.py, which unit tests use too.

`--secure`: the client connection is one of the HTTPS listener (TLS itself is not run: the
transports are fakes), so the proxy-wide HSTS response step applies. `--policy`: the route
carries a policy step run per request (a body limit the request is within). `--regex`: the
route is a use-regex rule (`/small(/|$)(.*)`, matched with RE2 per request) instead of Prefix
"/"; `--rewrite`: that rule also rewrites the path (rewrite-target `/$2`, the ingress-nginx
example), so the pod is sent `GET / HTTP/1.1` (compare with the default to quote the cost).
"""

from __future__ import annotations

import asyncio
import cProfile
import pstats
import sys
import time

from proxy.config import DEFAULT_OPTIONS, BodyLimit, Rewrite, RouteOptions
from tests.fakes import build, run


async def main() -> None:
    kind = next((a for a in sys.argv[1:] if not a.startswith("-")), "small")
    loop = asyncio.get_running_loop()
    policy = RouteOptions(policy=(BodyLimit(1 << 20),))
    options = policy if "--policy" in sys.argv else DEFAULT_OPTIONS
    regex = "/small(/|$)(.*)" if "--regex" in sys.argv or "--rewrite" in sys.argv else None
    if "--rewrite" in sys.argv:
        options = RouteOptions(policy=(*options.policy, Rewrite("/small(/|$)(.*)", "/$2")))
    down, up = build(
        loop,
        options=options,
        secure="--secure" in sys.argv,
        access_log="--no-log" not in sys.argv,
        regex_path=regex,
    )
    run(2000, kind, down, up)
    assert up.exchange is None and down.active is None, "request did not complete"
    n = 200000 if "--long" in sys.argv else 50000
    if "--profile" in sys.argv:
        prof = cProfile.Profile()
        prof.enable()
        run(n, kind, down, up)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return
    if "--once" in sys.argv:  # for `perf stat -e instructions`: a fixed amount of work
        run(n, kind, down, up)
        return
    best = 1e9
    for _ in range(5):
        t0 = time.perf_counter()
        run(n, kind, down, up)
        best = min(best, (time.perf_counter() - t0) / n)
    print(f"{kind}: {best * 1e6:.2f} us/request")


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
