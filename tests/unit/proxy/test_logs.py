"""proxy/logs.py: JSON records on stderr through a queue, in a process of their own (the
logging configuration is process-wide)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def _run(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_records_are_json_lines_with_their_extra_fields() -> None:
    done = _run(
        "import logging\n"
        "from proxy.logs import configure_logging\n"
        "configure_logging('info')\n"
        "logging.getLogger('portico.test').info('thing.happened', extra={'count': 3})\n"
        "logging.getLogger('portico.test').debug('not.shown')\n"
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert len(lines) == 1
    assert lines[0]["event"] == "thing.happened" and lines[0]["count"] == 3
    assert lines[0]["logger"] == "portico.test" and lines[0]["level"] == "info"


def test_configured_twice_exits_cleanly() -> None:
    """The first listener, replaced, is not stopped again at exit (that raised in atexit)."""
    done = _run(
        "import logging\n"
        "from proxy.logs import configure_logging\n"
        "configure_logging('info')\n"
        "configure_logging('debug')\n"
        "logging.getLogger('portico.test').debug('after.reconfiguring')\n"
    )
    assert done.returncode == 0
    assert [json.loads(line)["event"] for line in done.stderr.splitlines()] == [
        "after.reconfiguring"
    ]
