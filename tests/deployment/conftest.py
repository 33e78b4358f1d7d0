"""Markers of the deployment tests (``deployment`` itself is registered in pyproject.toml)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "production: the production-shaped deployment (PostgreSQL, CeleryExecutor with Redis, two "
        "workers, two triggerers); needs `make servers` and the `deploy` extra: `make test-production`",
    )
