"""The deployment harness's own checks that need no server: finding the binaries, and failing loudly
(not skipping) when they are missing. Part of ``make test``."""

from __future__ import annotations

import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pytest

from tests.deployment import harness
from tests.deployment.harness import Deployment, MissingServerError, parse_ts


def no_servers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A machine without PostgreSQL's server or Redis: nothing on PATH, nothing under /usr/lib."""
    monkeypatch.setattr(harness.shutil, "which", lambda name: None)
    real_glob = Path.glob

    def glob(self: Path, pattern: str):
        if str(self) == "/usr/lib/postgresql":
            return iter(())
        return real_glob(self, pattern)

    monkeypatch.setattr(Path, "glob", glob)
    real_is_file = Path.is_file
    monkeypatch.setattr(
        Path, "is_file", lambda self: not str(self).startswith("/usr/") and real_is_file(self)
    )


def test_a_missing_postgres_fails_the_celery_shape_with_the_install_step(monkeypatch, tmp_path):
    no_servers(monkeypatch, tmp_path)
    with pytest.raises(MissingServerError, match=r"postgres.*make servers"):
        Deployment(tmp_path / "airflow", shape="celery")


def test_a_missing_redis_names_the_install_step(monkeypatch, tmp_path):
    no_servers(monkeypatch, tmp_path)
    with pytest.raises(MissingServerError, match=r"redis-server.*make servers"):
        harness.redis_binary()


def test_the_local_shape_needs_no_server(monkeypatch, tmp_path):
    no_servers(monkeypatch, tmp_path)
    deployment = Deployment(tmp_path / "airflow", shape="local")
    assert deployment.postgres is None and deployment.redis is None
    assert deployment.env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert deployment.triggerer_names() == ["triggerer"]


def test_pg_bindir_prefers_pg_config_and_checks_the_server_is_there(monkeypatch, tmp_path):
    bindir = tmp_path / "pg" / "bin"
    bindir.mkdir(parents=True)
    for tool in ("postgres", "initdb", "pg_dump", "pg_isready"):
        (bindir / tool).write_text("")
    monkeypatch.setattr(harness.shutil, "which", lambda name: "/usr/bin/pg_config")
    monkeypatch.setattr(
        harness.subprocess,
        "run",
        lambda *a, **k: subprocess.CompletedProcess(a, 0, stdout=f"{bindir}\n", stderr=""),
    )
    assert harness.pg_bindir() == bindir


def test_unknown_shape_is_refused(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        Deployment(tmp_path / "airflow", shape="kubernetes")  # type: ignore[arg-type]


def test_parse_ts_reads_both_databases_timestamps():
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert parse_ts("2026-01-02 03:04:05.000000") == when.timestamp()
    assert parse_ts(when) == when.timestamp()
    assert parse_ts(None) is None
