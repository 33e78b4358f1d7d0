"""Example DAGs of every shape still succeed, paying exactly once per task, while the API misbehaves."""

from __future__ import annotations

import json

import pytest

from klingfx_emulator import FaultRule
from tests.conftest import API_KEY

pytestmark = pytest.mark.airflow_run

# One of each trouble, in a row: the first two creates are refused (nothing accepted, so the
# create is retried), then the first fetch sequence meets 503, 500, 429, a dropped connection
# (aiohttp silently retries a dropped GET once, hence times=2), a garbage 200 and an answer slower
# than the connection's 1 s read timeout. That is more than one fetch's 5 attempts, so the trigger
# also has to wait out a failed poll.
FAULTS = [
    {"action": "status", "status": 429, "route": "create", "times": 1, "retry_after": 0.2},
    {"action": "status", "status": 503, "route": "create", "skip": 1, "times": 1},
    {"action": "status", "status": 503, "route": "fetch", "times": 1},
    {"action": "status", "status": 500, "route": "fetch", "skip": 1, "times": 1},
    {"action": "status", "status": 429, "route": "fetch", "skip": 2, "times": 1, "retry_after": 0.2},
    {"action": "drop", "route": "fetch", "skip": 3, "times": 2},
    {"action": "garbage", "route": "fetch", "skip": 5, "times": 1},
    {"action": "slow", "route": "fetch", "skip": 6, "times": 1, "delay": 2.5},
]


def photo(emulator, name="person-1.png"):
    return f"{emulator.url}/samples/{name}"


# One DAG of each shape: a single generation (hug: two photos), mapped ones, and one a downstream
# task reads. squish and daily are the single shape again; test_example_dags runs them fault-free.
CASES = {
    "example_klingfx_hug": (lambda e: {"left_photo": photo(e), "right_photo": photo(e, "person-2.png")}, 1),
    "example_klingfx_mapped": (
        lambda e: {"photos": [photo(e, f"person-{i % 3 + 1}.png") + f"?i={i}" for i in range(4)]},
        4,
    ),
    "example_klingfx_chain": (lambda e: {"photo": photo(e)}, 1),
}


@pytest.mark.parametrize("dag_id", list(CASES))
def test_example_dag_survives_faults_with_one_paid_submission_per_task(airflow, fresh_emulator, dag_id):
    conf_for, tasks = CASES[dag_id]
    fresh_emulator.set_faults([FaultRule(**rule) for rule in FAULTS])
    conn = {
        "conn_type": "klingfx",
        "host": fresh_emulator.url,
        "password": API_KEY,
        "extra": {"read_timeout": 1},
    }
    env = {
        "AIRFLOW_CONN_KLINGFX_DEFAULT": json.dumps(conn),
        "AIRFLOW_VAR_KLINGFX_PHOTO_BASE_URL": f"{fresh_emulator.url}/samples",
    }
    result = airflow.dags_test(dag_id, conf_for(fresh_emulator), env=env)
    assert result.returncode == 0 and result.state == "success", result.output[-5000:]
    stats = fresh_emulator.stats()
    assert stats["submissions"] == tasks
    assert stats["faults_injected"] >= 9
    assert "waiting out a transient API error" in result.output
    creates = [r for r in stats["requests"] if r["method"] == "POST"]
    assert [r["status"] for r in creates[:2]] == [429, 503]
