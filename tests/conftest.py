"""Fixtures every kind of test may use (the integration tests add theirs in
tests/integration/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture
def cli_logging_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """`controller.cli.main` in the test's process leaves logging as pytest set it up.

    main() installs the JSON handler on the root logger; inside pytest that would outlive the
    test (and its captured stderr). Tests that run the CLI as a subprocess cover the real
    set-up.
    """
    monkeypatch.setattr("controller.cli.configure_logging", lambda level: None)
