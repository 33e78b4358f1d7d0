"""Every example DAG, run by real Airflow (``airflow dags test``) against the emulator."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.airflow_harness import REPO, airflow_version
from tests.conftest import API_KEY, configured

pytestmark = pytest.mark.airflow_run


def samples(emulator, *names: str) -> list[str]:
    return [f"{emulator.url}/samples/{n}" for n in names]


def assert_succeeded(result) -> None:
    assert result.returncode == 0 and result.state == "success", result.output[-4000:]


def test_example_dags_parse_without_warnings():
    # Airflow's own DagBag, as the DAG processor uses it, with every warning recorded.
    script = """
import pathlib, sys, warnings
try:
    from airflow.dag_processing.dagbag import DagBag
except ImportError:
    from airflow.models.dagbag import DagBag
bad = []
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.py")):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bag = DagBag(dag_folder=str(path))
    ours = ("example_dags", "airflow_provider_klingfx")
    mine = [str(w.message) for w in caught if any(o in w.filename for o in ours)]
    print(path.name, len(bag.dags), dict(bag.import_errors), mine)
    if len(bag.dags) != 1 or bag.import_errors or mine:
        bad.append(path.name)
sys.exit(1 if bad else 0)
"""
    proc = subprocess.run(
        [sys.executable, "-c", script, str(REPO / "example_dags")],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "AIRFLOW__CORE__LOAD_EXAMPLES": "False"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count(" 1 {} []") == len(list((REPO / "example_dags").glob("*.py"))) >= 5


def test_one_photo_effect(airflow, fresh_emulator):
    result = airflow.dags_test(
        "example_klingfx_squish", {"photo": samples(fresh_emulator, "person-1.png")[0]}
    )
    assert_succeeded(result)
    url = result.xcom("squish")
    gen_id = result.xcom("squish", "generation_id")
    assert url.startswith(fresh_emulator.url + "/files/")
    assert gen_id.endswith(":kling-video/v1.6/standard/effects")
    video = result.xcom("squish", "video")
    assert video["url"] == url and video["content_type"] == "video/mp4" and video["file_size"] > 0
    assert result.xcom("squish", "usage")["credits_used"] == 120000
    # The extra link was evaluated by the worker and points at the video.
    assert result.xcom("squish", "_link_KlingFxVideoLink") == url
    assert fresh_emulator.stats()["submissions"] == 1


def test_two_photo_effect_on_the_pro_model(airflow, fresh_emulator):
    left, right = samples(fresh_emulator, "person-1.png", "person-2.png")
    result = airflow.dags_test(
        "example_klingfx_hug", {"left_photo": left, "right_photo": right, "scene": "kiss"}
    )
    assert_succeeded(result)
    assert result.xcom("hug", "generation_id").endswith(":kling-video/v1.6/pro/effects")
    assert result.xcom("hug").startswith(fresh_emulator.url)


def test_scheduled_daily_generation_with_templated_inputs(airflow, fresh_emulator):
    result = airflow.dags_test(
        "example_klingfx_daily", env={"AIRFLOW_VAR_KLINGFX_PHOTO_BASE_URL": f"{fresh_emulator.url}/samples"}
    )
    assert_succeeded(result)
    assert result.xcom("daily_effect").startswith(fresh_emulator.url)
    (create,) = [r for r in fresh_emulator.stats()["requests"] if r["method"] == "POST"]
    assert create["client_request_id"].startswith("example_klingfx_daily:")


def test_dynamic_mapping_over_six_photos(airflow, fresh_emulator):
    photos = [
        f"{u}?n={i}"
        for i, u in enumerate(samples(fresh_emulator, *["person-1.png", "person-2.png", "person-3.png"] * 2))
    ]
    result = airflow.dags_test("example_klingfx_mapped", {"photos": photos})
    assert_succeeded(result)
    urls = [result.xcom("effect", map_index=i) for i in range(6)]
    assert len(set(urls)) == 6
    assert len({result.xcom("effect", "generation_id", map_index=i) for i in range(6)}) == 6
    assert result.xcom("collect") == urls
    assert fresh_emulator.stats()["submissions"] == 6


def test_chain_into_a_downstream_task(airflow, fresh_emulator):
    result = airflow.dags_test("example_klingfx_chain", {"photo": samples(fresh_emulator, "person-3.png")[0]})
    assert_succeeded(result)
    record = result.xcom("describe")
    assert record["url"] == result.xcom("generate")
    assert record["generation_id"] == result.xcom("generate", "generation_id")
    assert record["content_type"] == "video/mp4" and record["bytes"] > 0


@pytest.mark.parametrize(
    ("dag_id", "conf"),
    [
        ("example_klingfx_mapped", {"scene": "hug"}),  # a two-photo scene where one photo is given
        ("example_klingfx_hug", {"scene": "squish"}),  # and the other way round
        ("example_klingfx_hug", {"model": "klingai/kling-video-v1.6-turbo-effects"}),
    ],
    ids=["mapped-two-photo-scene", "hug-one-photo-scene", "hug-unknown-model"],
)
def test_scene_and_model_params_refuse_what_the_catalogue_does_not_allow(
    airflow, fresh_emulator, dag_id, conf
):
    result = airflow.dags_test(dag_id, conf)
    assert result.returncode != 0  # refused by the Param's enum, before a run starts
    assert f"Invalid input for param {next(iter(conf))}" in result.output, result.output[-3000:]
    assert fresh_emulator.stats()["requests"] == []


def test_not_deferrable_gives_the_same_xcoms(airflow, fresh_emulator):
    result = airflow.dags_test(
        "test_klingfx_not_deferrable", {"photo": samples(fresh_emulator, "person-1.png")[0]}
    )
    assert_succeeded(result)
    keys = {key for (_, _, key) in result.xcoms}
    assert {"return_value", "generation_id", "video", "usage"} <= keys
    assert "Pausing task as DEFERRED" not in result.output


@pytest.mark.parametrize("shape", ["detail", "name_message"])
def test_face_detection_failure_fails_the_task_after_one_submission(airflow, fresh_emulator, shape):
    with configured(fresh_emulator, error_shape=shape):
        left, right = samples(fresh_emulator, "person-1.png", "landscape-noface.png")
        result = airflow.dags_test("example_klingfx_hug", {"left_photo": left, "right_photo": right})
    assert result.state == "failed"
    assert result.task_states[("hug", -1)] == "failed"
    assert "Could not detect face in the image" in result.output
    assert "KlingFxGenerationFailedError" in result.output
    assert fresh_emulator.stats()["submissions"] == 1
    # What the views show: the request as asked, and why it failed.
    error = result.xcom("hug", "error")
    assert error["type"] == "KlingFxGenerationFailedError"
    assert "Could not detect face in the image" in error["message"]
    assert error["reason"].startswith("Could not detect face in the image")
    request = result.xcom("hug", "request")
    assert (request["effect_scene"], request["duration"]) == ("hug", 5)
    assert [p["shown"] for p in request["photos"]] == [left, right]


def test_legacy_endpoint_sends_every_request_to_the_legacy_path(airflow, fresh_emulator):
    conn = {
        "conn_type": "klingfx",
        "host": fresh_emulator.url,
        "password": API_KEY,
        "extra": {"endpoint": "legacy"},
    }
    result = airflow.dags_test(
        "example_klingfx_squish",
        {"photo": samples(fresh_emulator, "person-1.png")[0]},
        env={"AIRFLOW_CONN_KLINGFX_DEFAULT": json.dumps(conn)},
    )
    assert_succeeded(result)
    api_paths = {r["path"] for r in fresh_emulator.stats()["requests"] if r["path"].startswith("/v2/")}
    assert api_paths == {"/v2/generate/video/kling/generation"}


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({"scene": "hug", "left_photo": "https://example.com/a.png", "right_photo": ""}, "image 2 is empty"),
        (
            {"scene": "hug", "left_photo": "photos/a.png"},
            "image 1 ('photos/a.png') is neither a URL nor an absolute path",
        ),
    ],
    ids=["empty-photo", "relative-photo"],
)
def test_bad_input_fails_before_any_request(airflow, fresh_emulator, conf, message):
    result = airflow.dags_test("example_klingfx_hug", conf)
    assert result.state == "failed"
    assert message in result.output
    assert "KlingFxInvalidInputError" in result.output
    assert [r for r in fresh_emulator.stats()["requests"] if r["path"].startswith("/v2/")] == []


def test_the_key_is_nowhere_after_the_runs(airflow, fresh_emulator):
    """Search the metadata DB, logs and all output for the key after a paid, deferred run (the key
    read by the worker and the triggerer), and after whatever else this module ran before.

    It makes the run it checks, so it holds alone and in any order; the ``airflow`` fixture makes
    the same search again after the module's last test, whichever that is.
    """
    runs_before = len(airflow.outputs)
    result = airflow.dags_test("example_klingfx_chain", {"photo": samples(fresh_emulator, "person-2.png")[0]})
    assert_succeeded(result)
    assert "Pausing task as DEFERRED" in result.output  # the triggerer's side ran too
    assert fresh_emulator.stats()["submissions"] == 1
    assert len(airflow.outputs) == runs_before + 1 >= 2  # the migration, this run and any earlier
    # The search reaches where the run wrote: its generation id is in the trigger's row, the
    # XComs, the task state store and the run's output.
    gen_id = result.xcom("generate", "generation_id")
    found = set(airflow.places_containing(gen_id))
    expected = {"table trigger", "table xcom", f"command output #{runs_before}"}
    if airflow_version() >= (3, 3):
        expected.add("table task_state_store")
    assert expected <= found, found
    assert airflow.places_containing(API_KEY) == []


def test_submit_and_sense(airflow, fresh_emulator, tmp_path):
    """The operator submits and ends; the sensor waits, saves the video, and the preview uses it."""
    result = airflow.dags_test(
        "example_klingfx_submit_and_sense",
        {"photo": samples(fresh_emulator, "person-1.png")[0]},
        env={"AIRFLOW_VAR_KLINGFX_OUTPUT_BASE": tmp_path.as_uri()},
    )
    assert_succeeded(result)
    gen_id = result.xcom("submit")
    assert gen_id == result.xcom("submit", "generation_id")
    assert result.xcom("submit", "video") is None  # it did not wait
    assert result.xcom("wait") == result.xcom("wait", "video")["url"]
    assert result.xcom("wait", "generation_id") == gen_id
    saved = result.xcom("wait", "output_path")
    assert saved.startswith(tmp_path.as_uri()) and saved.endswith(".mp4")
    assert result.xcom("preview", "preview")["video_path"] == saved
    assert fresh_emulator.stats()["submissions"] == 1
