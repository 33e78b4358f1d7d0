"""Real Airflow against the API as the vendor's docs describe it, not as round 1 believed it was.

The emulator's switches give the answers the docs say the real API may give: ``succeeded`` as the
final status, usage only on the create answer (``tokens_used`` in older answers), live error
bodies, signed photo URLs; the sensor watches generations made elsewhere, and the example DAG that
saves videos lets a trigger choose a file name, not a place.
"""

from __future__ import annotations

import secrets
import sqlite3

import pytest

from klingfx_emulator import FaultRule
from tests.conftest import configured

pytestmark = pytest.mark.airflow_run


def photo(emulator, name: str = "person-1.png") -> str:
    return f"{emulator.url}/samples/{name}"


def test_the_api_as_documented_succeeded_and_usage_on_the_create_answer(airflow, fresh_emulator):
    """``succeeded`` ends the wait (it used to be polled until the timeout), and the spend the create
    answer reports (``meta.usage.tokens_used``, ``x-aimlapi-*`` headers) reaches XCom and the log."""
    with configured(
        fresh_emulator,
        status_words={"completed": "succeeded"},
        usage_in="create",
        usage_field="tokens_used",
        error_body="live",
    ):
        result = airflow.dags_test("example_klingfx_squish", {"photo": photo(fresh_emulator)})
    assert result.returncode == 0 and result.state == "success", result.output[-5000:]
    gen_id = result.xcom("squish", "generation_id")
    assert f"Generation {gen_id} is succeeded" in result.output
    usage = result.xcom("squish", "usage")
    assert usage["credits_used"] == 120000
    assert usage["usd_spent"] > 0
    assert f"Generation {gen_id} completed: " in result.output
    assert "cost: 120000 credits, $" in result.output
    assert fresh_emulator.stats()["submissions"] == 1


@pytest.mark.parametrize("word", ["failed", "cancelled"])
def test_a_failure_word_ends_the_wait_at_once(airflow, fresh_emulator, word):
    """``failed``/``cancelled`` are the end, not "still running": the task fails without waiting out
    its 30-minute timeout and without a retry."""
    left, right = photo(fresh_emulator), photo(fresh_emulator, "landscape-noface.png")
    with configured(fresh_emulator, status_words={"error": word}):
        result = airflow.dags_test("example_klingfx_hug", {"left_photo": left, "right_photo": right})
    assert result.state == "failed"
    assert "KlingFxGenerationFailedError" in result.output
    assert "Could not detect face in the image" in result.output
    assert "did not finish within" not in result.output
    assert fresh_emulator.stats()["submissions"] == 1


def test_signed_photo_urls_never_reach_logs_events_or_xcom(airflow, fresh_emulator):
    """The vendor's failure quotes the photo URL; a presigned URL's query is a credential."""
    signature = f"X-Amz-Signature={secrets.token_hex(16)}"
    left = f"{photo(fresh_emulator)}?X-Amz-Expires=900&{signature}"
    right = f"{photo(fresh_emulator, 'landscape-noface.png')}?X-Amz-Expires=900&{signature}"
    result = airflow.dags_test("example_klingfx_hug", {"left_photo": left, "right_photo": right})
    assert result.state == "failed"
    # The photo is still named, as scheme://host/path, so the user knows which one failed.
    assert f"{fresh_emulator.url}/samples/landscape-noface.png" in result.output
    assert signature not in result.output
    logs = [p for p in (airflow.home / "logs").rglob("*") if p.is_file()]
    assert [str(p) for p in logs if signature in p.read_text(errors="replace")] == []
    with sqlite3.connect(airflow.db_path) as db:
        # XCom, the trigger's event (kept as the task's next_kwargs) and trigger rows. The DAG run's
        # conf and rendered template fields hold what the user passed in, by design.
        for table in ("xcom", "task_instance", "trigger"):
            rows = db.execute(f'SELECT * FROM "{table}"').fetchall()
            assert not any(signature in str(v) for row in rows for v in row), table


def test_the_sensor_in_both_modes_recovers_a_generation_made_elsewhere(airflow, fresh_emulator):
    """A task submits with the hook; a deferred and a poking sensor wait for it. A burst of 503s
    (more than one fetch's retries: the API looks down) is waited out behind probes, not a failure."""
    fresh_emulator.set_faults([FaultRule(action="status", status=503, route="fetch", skip=1, times=8)])
    with configured(fresh_emulator, status_words={"completed": "succeeded"}, generating_seconds=1.0):
        result = airflow.dags_test("test_klingfx_sensor", {"photo": photo(fresh_emulator)})
    assert result.returncode == 0 and result.state == "success", result.output[-5000:]
    assert result.xcom("submit")
    for task_id in ("wait_deferred", "wait_poke"):
        assert result.xcom(task_id).startswith(f"{fresh_emulator.url}/files/")
        assert result.xcom(task_id, "video")["content_type"] == "video/mp4"
    assert result.xcom("wait_deferred") == result.xcom("wait_poke")
    assert "looks down: 5 requests in a row failed" in result.output
    assert "answers again after" in result.output
    assert fresh_emulator.stats()["submissions"] == 1


@pytest.mark.parametrize(
    "name",
    ["../escape.mp4", "/etc/cron.d/x.mp4", "s3://aws_default@their-bucket/x.mp4", "video.sh"],
    ids=["parent-folder", "absolute", "other-connection", "not-mp4"],
)
def test_the_example_dag_lets_a_trigger_name_the_file_not_the_place(airflow, fresh_emulator, name):
    conf = {"left_photo": photo(fresh_emulator), "right_photo": photo(fresh_emulator, "person-2.png")}
    result = airflow.dags_test("example_klingfx_hug", conf | {"output_name": name})
    assert result.returncode != 0  # refused before a run starts
    assert "output_name" in result.output
    assert fresh_emulator.stats()["submissions"] == 0


def test_the_example_dag_saves_under_the_admins_folder(airflow, fresh_emulator, tmp_path):
    base = tmp_path / "videos"
    conf = {
        "left_photo": photo(fresh_emulator),
        "right_photo": photo(fresh_emulator, "person-2.png"),
        "output_name": "team-hug.mp4",
    }
    result = airflow.dags_test(
        "example_klingfx_hug", conf, env={"AIRFLOW_VAR_KLINGFX_OUTPUT_BASE": base.as_uri()}
    )
    assert result.state == "success", result.output[-5000:]
    assert result.xcom("hug", "output_path") == (base / "team-hug.mp4").as_uri()
    assert sorted(p.name for p in base.iterdir()) == ["team-hug.mp4"]
