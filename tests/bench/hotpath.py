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
`--basic-auth`: the route has basic auth (a bcrypt cost-10 hash, as `htpasswd -B` makes) and
every request sends the right credentials: after the first, the per-worker cache answers (the
bcrypt check is not paid again) and the Authorization field is removed from the upstream head.
(proxy-bench cannot measure this: its load generator sends no Authorization.)
"""

from __future__ import annotations

import asyncio
import cProfile
import pstats
import sys
import time

from proxy.config import DEFAULT_OPTIONS, BasicAuth, BodyLimit, Rewrite, RouteOptions
from tests.fakes import REQUEST, build, run


async def main() -> None:
    kind = next((a for a in sys.argv[1:] if not a.startswith("-")), "small")
    loop = asyncio.get_running_loop()
    policy = RouteOptions(policy=(BodyLimit(1 << 20),))
    options = policy if "--policy" in sys.argv else DEFAULT_OPTIONS
    regex = "/small(/|$)(.*)" if "--regex" in sys.argv or "--rewrite" in sys.argv else None
    if "--rewrite" in sys.argv:
        options = RouteOptions(policy=(*options.policy, Rewrite("/small(/|$)(.*)", "/$2")))
    request = REQUEST
    if "--basic-auth" in sys.argv:
        import base64

        import bcrypt

        hashed = bcrypt.hashpw(b"bench", bcrypt.gensalt(10)).decode()
        options = RouteOptions(policy=(*options.policy, BasicAuth("bench", ("bench",), (hashed,))))
        credentials = b"Authorization: Basic " + base64.b64encode(b"bench:bench") + b"\r\n"
        request = REQUEST[:-2] + credentials + b"\r\n"
    down, up = build(
        loop,
        options=options,
        secure="--secure" in sys.argv,
        access_log="--no-log" not in sys.argv,
        regex_path=regex,
    )
    run(2000, kind, down, up, request)
    assert up.exchange is None and down.active is None, "request did not complete"
    n = 200000 if "--long" in sys.argv else 50000
    if "--profile" in sys.argv:
        prof = cProfile.Profile()
        prof.enable()
        run(n, kind, down, up, request)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return
    if "--once" in sys.argv:  # for `perf stat -e instructions`: a fixed amount of work
        run(n, kind, down, up, request)
        return
    best = 1e9
    for _ in range(5):
        t0 = time.perf_counter()
        run(n, kind, down, up, request)
        best = min(best, (time.perf_counter() - t0) / n)
    print(f"{kind}: {best * 1e6:.2f} us/request")


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
