"""Every way a user can misconfigure a task fails it with one clear line, before any paid call."""

from __future__ import annotations

import json

import pytest

from tests.conftest import API_KEY, configured

pytestmark = pytest.mark.airflow_run


def api_requests(emulator) -> list[dict]:
    return [r for r in emulator.stats()["requests"] if r["path"].startswith("/v2/")]


@pytest.mark.parametrize(
    ("conn", "line"),
    [
        ({"password": None}, "KlingFxConnectionConfigError: connection 'klingfx_default' has no API key"),
        ({"host": "http://api.aimlapi.com"}, "refusing plain http:// to api.aimlapi.com"),
        ({"extra": {"endpoint": "v3"}}, "has endpoint='v3' in extra; use 'universal' or 'legacy'"),
    ],
    ids=["no-key", "plain-http-host", "bad-endpoint"],
)
def test_connection_problems_fail_before_any_request(airflow, fresh_emulator, conn, line):
    fields = {"conn_type": "klingfx", "host": fresh_emulator.url, "password": API_KEY} | conn
    result = airflow.dags_test(
        "example_klingfx_squish",
        {"photo": f"{fresh_emulator.url}/samples/person-1.png"},
        env={"AIRFLOW_CONN_KLINGFX_DEFAULT": json.dumps(fields)},
    )
    assert result.state == "failed"
    assert line in result.output
    assert api_requests(fresh_emulator) == []


def test_missing_connection_fails_before_any_request(airflow, fresh_emulator):
    result = airflow.dags_test("test_klingfx_missing_connection")
    assert result.state == "failed"
    assert (
        "connection 'klingfx_nowhere' is not defined: create a connection of type 'klingfx'" in result.output
    )
    assert api_requests(fresh_emulator) == []


def test_bad_key_fails_at_once_with_the_vendor_words(airflow, fresh_emulator):
    fields = {"conn_type": "klingfx", "host": fresh_emulator.url, "password": "sk-not-the-right-key-42"}
    result = airflow.dags_test(
        "example_klingfx_squish",
        {"photo": f"{fresh_emulator.url}/samples/person-1.png"},
        env={"AIRFLOW_CONN_KLINGFX_DEFAULT": json.dumps(fields)},
    )
    assert result.state == "failed"
    assert (
        "KlingFxAuthError: AI/ML API answered 401 to POST /v2/video/generations: Unauthorized"
        in result.output
    )
    assert [r["status"] for r in api_requests(fresh_emulator)] == [401]  # tried once, never retried
    assert "sk-not-the-right-key-42" not in result.output


def test_out_of_credits_fails_at_once(airflow, fresh_emulator):
    with configured(fresh_emulator, credits=0):
        fresh_emulator.reset()  # the budget is armed from the config on reset
        result = airflow.dags_test(
            "example_klingfx_squish", {"photo": f"{fresh_emulator.url}/samples/person-1.png"}
        )
    assert result.state == "failed"
    assert "AI/ML API answered 403 to POST /v2/video/generations: Insufficient credits" in result.output
    assert fresh_emulator.stats()["submissions"] == 0


def test_execution_timeout_ends_the_wait_and_names_the_generation(airflow, fresh_emulator):
    with configured(fresh_emulator, generating_seconds=120):
        result = airflow.dags_test(
            "test_klingfx_execution_timeout", {"photo": f"{fresh_emulator.url}/samples/person-1.png"}
        )
    assert result.state == "failed"
    (gen_id,) = fresh_emulator.stats()["generations"]
    assert "AirflowTaskTimeout" in result.output
    assert f"Stopped watching Kling generation {gen_id}; the API has no cancel call" in result.output
