"""Fixtures shared by the tests of models we did not write."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from elastiserve_store import constructors


@pytest.fixture
def trusted(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No factory trusted from an earlier test: each test trusts its own, as the training
    CLI trusts the factory its user named (modules that need it wrap it with ``autouse``)."""
    monkeypatch.setattr(constructors, "_trusted", set())
    monkeypatch.delenv(constructors.ALLOW_ENV, raising=False)
    yield
