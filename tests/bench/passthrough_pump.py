"""Passthrough byte pump: asyncio transports against os.splice, on loopback (a measurement tool).

    PYTHONPATH=. python tests/bench/passthrough_pump.py [--mib 512] [--rounds 3]

A source writes `--mib` MiB as fast as it can; the pump under test relays it to a sink, which
counts. Source and sink are processes with blocking sockets, so the event loop (uvloop, as the
workers run) serves only the pump. Prints MiB/s per round and the worker's CPU seconds per GiB
(what the pump costs the worker, the figure that matters when the machine is shared).
This is how proxy/passthrough.py's choice of pump was made; the figures are in its docstring.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import multiprocessing
import os
import resource
import socket
import time
from collections.abc import Callable

import uvloop

from proxy.passthrough import splice_sockets

CHUNK = 256 * 1024


_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
_F_SETPIPE_SZ = 1031


class _Direction:
    """src -> pipe -> dst with os.splice: the bytes never enter user space."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, src: int, dst: int, done: Callable[[], None]
    ) -> None:
        self.loop, self.src, self.dst, self.done = loop, src, dst, done
        self.read_end, self.write_end = os.pipe2(os.O_NONBLOCK)
        with contextlib.suppress(OSError):
            fcntl.fcntl(self.write_end, _F_SETPIPE_SZ, CHUNK)
        self.buffered = 0
        loop.add_reader(src, self.readable)

    def readable(self) -> None:
        try:
            n = os.splice(self.src, self.write_end, CHUNK - self.buffered, flags=_SPLICE_FLAGS)
        except BlockingIOError:
            return
        if n == 0:
            self.loop.remove_reader(self.src)
            self.flush()
            if not self.buffered:
                self.finish()
            return
        self.buffered += n
        self.flush()

    def flush(self) -> None:
        while self.buffered:
            try:
                n = os.splice(self.read_end, self.dst, self.buffered, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                self.loop.remove_reader(self.src)
                self.loop.add_writer(self.dst, self.writable)
                return
            self.buffered -= n

    def writable(self) -> None:
        self.flush()
        if not self.buffered:
            self.loop.remove_writer(self.dst)
            self.loop.add_reader(self.src, self.readable)

    def finish(self) -> None:
        os.close(self.read_end)
        os.close(self.write_end)
        self.done()


def _splice_pump(
    loop: asyncio.AbstractEventLoop,
    client: socket.socket,
    pod: socket.socket,
    ended: Callable[[], None],
) -> None:
    def done() -> None:  # the bench only sends pod -> client
        client.shutdown(socket.SHUT_WR)
        client.close()
        pod.close()
        ended()

    _Direction(loop, pod.fileno(), client.fileno(), done)


def _source(listener: socket.socket, total: int) -> None:
    conn, _ = listener.accept()
    block = b"x" * CHUNK
    sent = 0
    while sent < total:
        conn.sendall(block)
        sent += len(block)
    conn.shutdown(socket.SHUT_WR)
    conn.recv(1)
    conn.close()


def _sink(port: int, result: multiprocessing.SimpleQueue[float]) -> None:
    sock = socket.create_connection(("127.0.0.1", port))
    start = time.perf_counter()
    received = 0
    while True:
        data = sock.recv(CHUNK)
        if not data:
            break
        received += len(data)
    result.put(time.perf_counter() - start)
    result.put(received)
    sock.close()


async def _round(kind: str, total: int) -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    upstream = socket.create_server(("127.0.0.1", 0))
    front = socket.create_server(("127.0.0.1", 0))
    fork = multiprocessing.get_context("fork")
    source = fork.Process(target=_source, args=(upstream, total), daemon=True)
    source.start()
    result: multiprocessing.SimpleQueue[float] = fork.SimpleQueue()
    sink = fork.Process(target=_sink, args=(front.getsockname()[1], result), daemon=True)
    sink.start()
    client, _ = await loop.sock_accept(front)
    pod = socket.create_connection(upstream.getsockname())
    client.setblocking(False)
    pod.setblocking(False)
    done = loop.create_future()
    cpu = resource.getrusage(resource.RUSAGE_THREAD)
    if kind == "splice":
        _splice_pump(loop, client, pod, lambda: done.set_result(None))
    else:
        await splice_sockets(loop, client, pod, 60.0, lambda *_: done.set_result(None))
    await done
    after = resource.getrusage(resource.RUSAGE_THREAD)
    seconds, received = result.get(), result.get()
    sink.join()
    source.join()
    upstream.close()
    front.close()
    assert received == total, (received, total)
    used = (after.ru_utime - cpu.ru_utime) + (after.ru_stime - cpu.ru_stime)
    return total / 2**20 / seconds, used / (total / 2**30)


async def main(mib: int, rounds: int) -> None:
    kinds = ["transport"] + (["splice"] if hasattr(os, "splice") else [])
    for _ in range(rounds):
        for kind in kinds:  # interleaved, so load from other processes hits both alike
            rate, cpu = await _round(kind, mib * 2**20)
            print(f"{kind:9s} {rate:8.0f} MiB/s  {cpu:6.2f} CPU s/GiB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    uvloop.run(main(args.mib, args.rounds))
