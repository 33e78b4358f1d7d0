"""Shared fixtures: a real emulator on 127.0.0.1, connections, and a fake clock for sleeps."""

from __future__ import annotations

import copy
import dataclasses
import json
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pytest

from klingfx_emulator import (
    EmulatorConfig,
    FaultRule,
    RunningEmulator,
    run_emulator_in_thread,
)
from tests.support import FakeTime, MotoServer

#: A key unique to this test session, so finding it anywhere proves a leak.
API_KEY = f"sk-klingfx-test-{secrets.token_hex(12)}"


@pytest.fixture(scope="session")
def api_key() -> str:
    return API_KEY


@pytest.fixture(scope="session")
def emulator_server() -> Iterator[RunningEmulator]:
    config = EmulatorConfig(api_key=API_KEY, queued_seconds=0.05, generating_seconds=0.2, render="off")
    with run_emulator_in_thread(config) as emu:
        yield emu


@pytest.fixture
def emulator(emulator_server: RunningEmulator) -> Iterator[RunningEmulator]:
    """The session's emulator, with no faults and empty stats for this test; its config is put back
    after it, whatever the test changed (change it with :func:`configured`)."""
    with configured(emulator_server):
        emulator_server.reset()
        emulator_server.set_faults([])
        yield emulator_server
        emulator_server.set_faults([])


@pytest.fixture
def connection(monkeypatch: pytest.MonkeyPatch, emulator: RunningEmulator):
    """Define ``klingfx_default`` (and others on demand) as env-var connections to the emulator."""

    def define(conn_id: str = "klingfx_default", **fields: Any) -> str:
        conn = {"conn_type": "klingfx", "host": emulator.url, "password": API_KEY} | fields
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
        return conn_id

    define()
    return define


@pytest.fixture
def sleeps() -> FakeTime:
    """The sleeps and clock of the code under test, in virtual time (see :class:`tests.support.FakeTime`)."""
    return FakeTime()


def faults(*rules: dict[str, Any]) -> list[FaultRule]:
    return [FaultRule(**r) for r in rules]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the figures tests recorded with ``record_property("summary", ...)`` (works under xdist)."""
    lines = [
        value
        for outcome in ("passed", "failed")
        for report in terminalreporter.stats.get(outcome, [])
        if getattr(report, "when", "") == "call"
        for name, value in getattr(report, "user_properties", [])
        if name == "summary"
    ]
    if lines:
        terminalreporter.section("klingfx figures")
        for line in lines:
            terminalreporter.write_line(line)


CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(EmulatorConfig))


@contextmanager
def configured(emulator: RunningEmulator, **changes: Any) -> Iterator[RunningEmulator]:
    """Change fields of a running emulator's config for the block; then put its whole config back.

    The one way tests change a running emulator's config. The config is copied (deeply, on the
    emulator's loop) before the change and restored field by field after the block, so whatever
    the block changed in it, in place or not, is undone. With no changes it only restores: the
    shared emulators' fixtures wrap every test in it. The emulator reads its config at each
    request; a generation takes its durations when it is created.

    :param emulator: a running emulator.
    :param changes: config fields and their values for the block (not validated, as on a running
        emulator: e.g. ``rate_limit=0`` turns the limit off).
    """
    unknown = set(changes) - CONFIG_FIELDS
    if unknown:
        raise TypeError(f"EmulatorConfig has no field {', '.join(sorted(unknown))}")
    saved = emulator.call(lambda: copy.deepcopy(emulator.config))
    emulator.call(lambda: _assign(emulator.config, changes))
    try:
        yield emulator
    finally:
        emulator.call(lambda: _assign(emulator.config, vars(saved)))


def _assign(config: EmulatorConfig, values: Mapping[str, Any]) -> None:
    for name, value in values.items():
        setattr(config, name, value)


@pytest.fixture(scope="session")
def s3() -> Iterator[dict]:
    """An S3-compatible server (moto) on 127.0.0.1 with a bucket and an Airflow connection to it."""
    server = MotoServer()
    client = server.client("s3")
    client.create_bucket(Bucket="videos")
    yield {"client": client, "env": {"AIRFLOW_CONN_AWS_MOTO": json.dumps(server.connection())}}
    server.stop()
