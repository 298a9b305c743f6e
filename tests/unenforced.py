"""A stand-in for access control Portico does not enforce, for the tests of the fail-closed rule.

Issue 18 made every ingress-nginx access-control annotation enforced, so none is left to show
that an unenforced one fails closed (403 AccessControlNotEnforced). The `unenforced` fixture
makes `auth-tls-match-cn` one again for a test: its catalogue row becomes "unsupported, access
control" (the screening caches are cleared around it). Without `auth-tls-secret` the annotation
does nothing else, so the Ingress is what an Ingress with unenforced access control was.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from controller.compiler import screening
from controller.compiler.catalogue import ANNOTATIONS, ISSUE_PROTECTION, Entry

UNENFORCED: str = "auth-tls-match-cn"


def make_unenforced(monkeypatch: pytest.MonkeyPatch, name: str = UNENFORCED) -> str:
    """Make the annotation `name` (without prefix) unenforced access control until the test
    ends (the monkeypatch undoes it; the screening cache is cleared now and then)."""
    row = Entry(
        name,
        "unsupported",
        "access-control",
        "Access control Portico does not enforce (a test's stand-in).",
        access_control=True,
        issue=ISSUE_PROTECTION,
    )
    monkeypatch.setitem(ANNOTATIONS, name, row)
    screening._cache.clear()
    monkeypatch.setattr(screening, "_cache", {})
    return name


@pytest.fixture
def unenforced(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The annotation name (without prefix) that is unenforced access control for the test."""
    yield make_unenforced(monkeypatch)
    screening._cache.clear()
