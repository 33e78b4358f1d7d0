"""After a paid submission, no failure may lead to a second paid submission: real Airflow, both lines.

On Airflow 3.3+ a retry finds the generation an earlier try paid for (``task_state_store``) and
reattaches; on 3.1/3.2 there is no such store, so the task fails without retries and names the
generation instead. Either way the emulator must count exactly one paid submission.
"""

from __future__ import annotations

import json
import urllib.request

import pytest

from klingfx_emulator import EmulatorConfig, FaultRule, run_emulator_in_thread
from tests.airflow_harness import REPO, airflow_version
from tests.conftest import API_KEY, configured

pytestmark = pytest.mark.airflow_run

REATTACHES = airflow_version() >= (3, 3)


def photo(emulator, name: str = "person-1.png") -> str:
    return f"{emulator.url}/samples/{name}"


def only_generation(emulator) -> str:
    stats = emulator.stats()
    assert stats["submissions"] == 1, stats["submissions"]
    (gen_id,) = stats["generations"]
    return gen_id


def assert_no_second_payment(result, emulator) -> None:
    """3.3+: the retry reattached and the run succeeded; before: one try, failed, naming the id."""
    gen_id = only_generation(emulator)
    if REATTACHES:
        assert result.state == "success", result.output[-5000:]
        assert f"Reattaching to generation {gen_id}" in result.output
    else:
        assert result.state == "failed"
        assert "KlingFxRetryWouldResubmitError" in result.output
        assert f"KlingFxGenerationSensor(generation_id={gen_id!r})" in result.output
        assert "Reattaching" not in result.output


def test_a_timeout_shorter_than_the_generation_pays_once(airflow, fresh_emulator):
    """retries=2 and a 1 s timeout for a 2.5 s generation: each try that times out must not pay again."""
    with configured(fresh_emulator, generating_seconds=2.5):
        result = airflow.dags_test("test_klingfx_retry_reattach", {"photo": photo(fresh_emulator)})
    assert "did not finish within 1s" in result.output
    assert_no_second_payment(result, fresh_emulator)


def test_a_download_that_keeps_breaking_pays_once_and_leaves_no_partial_file(
    airflow, fresh_emulator, tmp_path
):
    """The CDN cuts every download of the first try halfway: the video is paid for, the file never half."""
    dest = tmp_path / "out" / "squish.mp4"
    # One try's download makes 5 attempts; all of them are cut.
    fresh_emulator.set_faults([FaultRule(action="truncate", route="video", times=5)])
    result = airflow.dags_test(
        "test_klingfx_retries_after_payment", {"photo": photo(fresh_emulator), "output_path": dest.as_uri()}
    )
    assert "KlingFxDownloadError: could not save the video of generation" in result.output
    assert_no_second_payment(result, fresh_emulator)
    leftovers = sorted(p.name for p in dest.parent.iterdir()) if dest.parent.exists() else []
    if REATTACHES:
        assert leftovers == ["squish.mp4"]  # whole, and no temporary file beside it
        with urllib.request.urlopen(result.xcom("squish"), timeout=30) as resp:  # the faults are spent
            assert dest.read_bytes() == resp.read()
    else:
        assert leftovers == []


def test_a_create_answer_without_an_id_is_never_sent_again(airflow, fresh_emulator):
    """The API accepted the create (2xx) but its answer names no generation: ambiguous, no retry."""
    fresh_emulator.set_faults([FaultRule(action="accept_unreadable", route="create")])
    result = airflow.dags_test("test_klingfx_retries_after_payment", {"photo": photo(fresh_emulator)})
    assert result.state == "failed"
    assert "KlingFxAmbiguousSubmissionError" in result.output
    assert "answer has no generation id" in result.output
    posts = [r for r in fresh_emulator.stats()["requests"] if r["method"] == "POST"]
    assert len(posts) == 1
    assert fresh_emulator.stats()["submissions"] == 1


def test_a_secrets_backend_hiccup_is_retried_not_called_a_missing_connection(
    airflow, fresh_emulator, tmp_path
):
    """The workers' secrets backend cannot start once: the task is retried (nothing was paid yet)."""
    armed = tmp_path / "armed"
    armed.touch()
    env = {
        "AIRFLOW__WORKERS__SECRETS_BACKEND": "tests.flaky_secrets.OnceBrokenBackend",
        "AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS": json.dumps({"armed": str(armed)}),
        "PYTHONPATH": str(REPO),
    }
    result = airflow.dags_test(
        "test_klingfx_retries_after_payment", {"photo": photo(fresh_emulator)}, env=env
    )
    assert not armed.exists(), "the backend was never started"
    assert result.state == "success", result.output[-5000:]
    assert "KlingFxConnectionLookupError: could not read connection 'klingfx_default'" in result.output
    assert "is not defined" not in result.output
    assert fresh_emulator.stats()["submissions"] == 1


@pytest.mark.skipif(not REATTACHES, reason="Airflow 3.1/3.2 have no task_state_store")
def test_the_edges_of_paying_once_a_record_that_cannot_be_written_and_a_connection_that_moved(
    airflow, fresh_emulator
):
    """Two tasks, each paid once: the record of one cannot be written (so a retry could not find it);
    the other's retry finds its record, but the connection now names another API, which would not
    know the id (404) and be paid again."""
    elsewhere = EmulatorConfig(api_key=API_KEY, queued_seconds=0, generating_seconds=0, render="off")
    with run_emulator_in_thread(elsewhere) as moved, configured(fresh_emulator, generating_seconds=2.5):
        conn = {"conn_type": "klingfx", "host": moved.url, "password": API_KEY}
        result = airflow.dags_test(
            "test_klingfx_paying_once_at_the_edges",
            {"photo": photo(fresh_emulator)},
            env={"AIRFLOW_CONN_KLINGFX_MOVED": json.dumps(conn)},
        )
        assert moved.stats()["submissions"] == 0
    states = result.task_states
    assert states == {("store_fails", -1): "failed", ("connection_moves", -1): "failed"}, result.output[
        -5000:
    ]
    stats = fresh_emulator.stats()
    assert stats["submissions"] == 2  # one per task, no more
    assert "RuntimeError: the task state store did not answer. Not retrying" in result.output
    made_at = f"{fresh_emulator.url}/v2/video/generations"
    assert f"was made at {made_at}, but connection 'klingfx_moved' now points at {moved.url}" in result.output
    assert "not submitting (and paying) again" in result.output


def test_durable_execution_reattaches_and_not_durable_pays_again(airflow, fresh_emulator):
    with configured(fresh_emulator, generating_seconds=2.5):
        result = airflow.dags_test("test_klingfx_durable", {"photo": photo(fresh_emulator)})
    posts = [r for r in fresh_emulator.stats()["requests"] if r["method"] == "POST"]
    by_task = {
        t: sum(1 for r in posts if f":{t}:" in r["client_request_id"])
        for t in ("durable_true", "durable_false")
    }
    # Not durable: the first try times out, the retry submits (and pays for) a second generation.
    assert by_task["durable_false"] == 2, by_task
    # Durable: one generation, whatever the tries (3.3+ reattaches, 3.1/3.2 fail without retrying).
    assert by_task["durable_true"] == 1, by_task
    if REATTACHES:
        assert result.task_states[("durable_true", -1)] == "success", result.output[-5000:]
    else:
        assert result.task_states[("durable_true", -1)] == "failed"
        assert "KlingFxRetryWouldResubmitError" in result.output
