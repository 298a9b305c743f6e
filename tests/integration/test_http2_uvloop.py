"""The HTTP/2 tests of test_http2.py again on uvloop, the workers' event loop (its transports
pause, buffer and hand over protocols in their own code)."""

from __future__ import annotations

import pytest
from test_http2 import *  # noqa: F403 (every test and fixture of the module, rerun here)

pytestmark = [pytest.mark.timeout(60), pytest.mark.uvloop]
