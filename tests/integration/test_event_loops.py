"""The loop a test runs on: uvloop where its module is marked `uvloop` (as the workers run),
asyncio's own loop elsewhere; its async fixtures run on the same loop (see conftest.py)."""

from __future__ import annotations

import asyncio

import pytest
import uvloop
from backends import Pod


@pytest.mark.uvloop
async def test_a_marked_test_and_its_fixtures_run_on_uvloop(pod: Pod) -> None:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, uvloop.Loop)
    assert pod.server is not None and pod.server.get_loop() is loop


async def test_an_unmarked_test_and_its_fixtures_run_on_asyncio(pod: Pod) -> None:
    loop = asyncio.get_running_loop()
    assert not isinstance(loop, uvloop.Loop)
    assert pod.server is not None and pod.server.get_loop() is loop
