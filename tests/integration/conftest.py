"""A real Airflow (SQLite metadata DB, ``airflow dags test``) pointed at the emulator."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from klingfx_emulator import EmulatorConfig, RunningEmulator, run_emulator_in_thread
from tests.airflow_harness import AirflowEnv
from tests.conftest import API_KEY, configured


@pytest.fixture(scope="session")
def dag_emulator() -> Iterator[RunningEmulator]:
    # Instant generations: the first poll, right after deferring, sees the video. The status
    # machine itself is covered by the hook and trigger tests.
    config = EmulatorConfig(api_key=API_KEY, queued_seconds=0, generating_seconds=0, render="off")
    with run_emulator_in_thread(config) as emu:
        yield emu


@pytest.fixture(scope="module")
def airflow(tmp_path_factory: pytest.TempPathFactory, dag_emulator: RunningEmulator) -> Iterator[AirflowEnv]:
    # One Airflow home per test module: a module's checks (e.g. the key search) see only its own
    # runs, and nothing one module leaves behind can touch another's metadata DB.
    env = AirflowEnv(
        tmp_path_factory.mktemp("airflow_home"),
        {"conn_type": "klingfx", "host": dag_emulator.url, "password": API_KEY},
    )
    env.migrate()
    yield env
    # Whatever the module ran, the key must be nowhere in its DB, logs or command output.
    assert env.places_containing(API_KEY) == []


@pytest.fixture
def fresh_emulator(dag_emulator: RunningEmulator) -> Iterator[RunningEmulator]:
    """The module's emulator, with no faults and empty stats for this test; its config is put back
    after it, whatever the test changed (change it with :func:`tests.conftest.configured`)."""
    with configured(dag_emulator):
        dag_emulator.reset()
        dag_emulator.set_faults([])
        yield dag_emulator
