"""Fixtures the integration tests share: test pods, echo pods, the API simulator, an HTTP
client session, and the event loop a test runs on.

A module marked `pytest.mark.uvloop` runs its tests (and their fixtures) on uvloop, as the
workers do; every other test runs on asyncio's own loop. A module that needs a fixture of
one of these names shaped otherwise defines its own, which pytest prefers to these.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping

import aiohttp
import pytest
import uvloop
from backends import Pod

from tests.integration.serving import echo_pods
from tests.kubesim import KubeSim

WEB = ("127.0.0.2", "web", "web-1")  # (address, Service, pod name) of an echo pod
API = ("127.0.0.3", "api", "api-1")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "uvloop: run on uvloop's event loop, as the workers do")


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    if item.get_closest_marker("uvloop") is not None:
        return {"uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}


# ---- test pods (backends.Pod) in the test's loop ------------------------------------------------


@pytest.fixture
async def pod() -> AsyncIterator[Pod]:
    """One test pod on 127.0.0.2."""
    started = await Pod("127.0.0.2").start()
    yield started
    await started.stop()


@pytest.fixture
async def pods() -> AsyncIterator[list[Pod]]:
    """Two test pods, on 127.0.0.2 and 127.0.0.3."""
    started = [await Pod(f"127.0.0.{i}").start() for i in (2, 3)]
    yield started
    for each in started:
        await each.stop()


# ---- `portico echo` pods ------------------------------------------------------------------------


@pytest.fixture
async def pod_port() -> AsyncIterator[int]:
    """The port of echo pod web-1 (Service web) on 127.0.0.2."""
    async with echo_pods(WEB) as port:
        yield port


@pytest.fixture
async def pods_port() -> AsyncIterator[int]:
    """The port of echo pods web-1 (Service web) on 127.0.0.2 and api-1 (Service api) on
    127.0.0.3."""
    async with echo_pods(WEB, API) as port:
        yield port


# ---- the API simulator and a client -------------------------------------------------------------


@pytest.fixture
async def sim() -> AsyncIterator[KubeSim]:
    """KubeSim on a free port, bookmarks every second (watch timings of a short test)."""
    async with KubeSim(bookmark_interval=1.0) as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client whose every request gives up after 5 s."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as client:
        yield client
