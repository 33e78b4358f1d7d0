"""OpenLineage in real Airflow: each generation's events name its photos (as given, never presigned)
as inputs and its video as the output, captured by the OpenLineage provider's own ``file`` transport;
with the provider installed but not configured, nothing happens at all.
"""

from __future__ import annotations

import contextlib
import json
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.airflow_harness import AirflowEnv
from tests.conftest import API_KEY

pytestmark = pytest.mark.airflow_run

SECRETS = ("X-Amz-Signature", "X-Amz-Credential", "AKIDLINEAGETEST", API_KEY)


def ol_env(events: Path) -> dict[str, str]:
    """Enable the OpenLineage provider with its ``file`` transport: one JSON event per line.

    The listener runs as it does by default, in a fork of the task process.
    """
    events.parent.mkdir(parents=True, exist_ok=True)
    return {
        "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
            {"type": "file", "log_file_path": str(events), "append": True}
        ),
        "AIRFLOW__OPENLINEAGE__NAMESPACE": "klingfx-tests",
    }


def task_events(events: Path, job: str, event_type: str) -> dict[int, dict[str, Any]]:
    """The events of one type of task ``job`` (``dag_id.task_id``), by map index."""
    found: dict[int, dict[str, Any]] = {}
    for line in events.read_text().splitlines():
        event = json.loads(line)
        if event["job"]["name"] == job and event["eventType"] == event_type:
            found[event["run"]["facets"]["airflow"]["taskInstance"].get("map_index", -1)] = event
    return found


def names(datasets: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(d["namespace"], d["name"]) for d in datasets]


def assert_clean_run(result, events: Path) -> None:
    """The listener neither stalled nor failed on this operator, and no event holds a credential."""
    assert "expired and will be terminated" not in result.output, result.output[-6000:]
    assert "OpenLineage start:" not in result.output and "OpenLineage complete:" not in result.output
    assert "Failed to extract OpenLineage" not in result.output
    text = events.read_text()
    assert [s for s in SECRETS if s in text] == []


def sample(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as resp:
        return resp.read()


def test_each_mapped_generation_names_its_s3_photo_and_its_saved_video(
    airflow: AirflowEnv, fresh_emulator, s3
):
    client = s3["client"]
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket="lineage-photos")
    for name in ("person-1.png", "person-2.png"):
        body = sample(f"{fresh_emulator.url}/samples/{name}")
        client.put_object(Bucket="lineage-photos", Key=f"people/{name}", Body=body)
    events = airflow.home / "openlineage" / "s3.jsonl"

    result = airflow.dags_test(
        "example_klingfx_s3_photos",
        {
            "photos": "s3://aws_moto@lineage-photos/people",
            "videos": "s3://aws_moto@videos/lineage",
            "scene": "squish",
        },
        env={
            **s3["env"],
            **ol_env(events),
            "AIRFLOW_VAR_KLINGFX_PHOTO_LOCATIONS": "s3://aws_moto@lineage-photos/people/",
        },
    )
    assert result.returncode == 0 and result.state == "success", result.output[-6000:]

    # The generations run in the mapped task group per_photo: one chain (generate → preview) per photo.
    starts = task_events(events, "example_klingfx_s3_photos.per_photo.generate", "START")
    completes = task_events(events, "example_klingfx_s3_photos.per_photo.generate", "COMPLETE")
    assert sorted(completes) == sorted(starts) == [0, 1]
    for map_index, photo in enumerate(("person-1", "person-2")):
        # The photo as given (the bucket, not the connection id in s3://aws_moto@lineage-photos), and the
        # video where the task saved it: at start from output_path, at completion from what was saved.
        inputs = [("s3://lineage-photos", f"people/{photo}.png")]
        outputs = [("s3://videos", f"lineage/{photo}.mp4")]
        for event in (starts[map_index], completes[map_index]):
            assert names(event["inputs"]) == inputs
            assert names(event["outputs"]) == outputs
        facet = completes[map_index]["run"]["facets"]["klingfx"]
        assert (facet["effectScene"], facet["model"], facet["duration"]) == (
            "squish",
            "klingai/kling-video-v1.6-standard-effects",
            5,
        )
        assert facet["generationId"] == result.xcom("per_photo.generate", "generation_id", map_index)
        saved = f"s3://aws_moto@videos/{outputs[0][1]}"
        assert result.xcom("per_photo.generate", "output_path", map_index) == saved
    assert_clean_run(result, events)


def test_http_photos_and_unsaved_videos_are_named_by_url_without_query(airflow: AirflowEnv, fresh_emulator):
    events = airflow.home / "openlineage" / "url.jsonl"
    result = airflow.dags_test(
        "test_klingfx_lineage_signed_urls",
        {"samples": f"{fresh_emulator.url}/samples"},
        env=ol_env(events),
    )
    assert result.returncode == 0 and result.state == "success", result.output[-6000:]

    (unmapped,) = task_events(events, "test_klingfx_lineage_signed_urls.squish", "COMPLETE").items()
    mapped = task_events(events, "test_klingfx_lineage_signed_urls.squish_each", "COMPLETE")
    assert sorted(mapped) == [0, 1]
    emulator = f"http://{urlsplit(fresh_emulator.url).netloc}"
    for (task_id, map_index, photo), event in [
        (("squish", -1, "person-1"), unmapped[1]),
        (("squish_each", 0, "person-1"), mapped[0]),
        (("squish_each", 1, "person-2"), mapped[1]),
    ]:
        # Each photo was sent with its X-Amz-* query; its dataset has none.
        assert names(event["inputs"]) == [(emulator, f"/samples/{photo}.png")]
        video = urlsplit(result.xcom(task_id, "video", map_index)["url"])
        assert names(event["outputs"]) == [(f"{video.scheme}://{video.netloc}", video.path)]
        generation_id = result.xcom(task_id, "generation_id", map_index)
        assert event["run"]["facets"]["klingfx"]["generationId"] == generation_id
    assert "XCom not found" not in result.output
    assert_clean_run(result, events)


def test_the_provider_installed_but_not_configured_stays_off(airflow: AirflowEnv, fresh_emulator, tmp_path):
    def listeners(env: dict[str, str]) -> list[str]:
        proc = airflow.run("plugins", "--output", "json", env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        plugins = json.loads(proc.stdout[proc.stdout.index("[") :])
        (plugin,) = [p for p in plugins if p["name"] == "OpenLineageProviderPlugin"]
        return plugin["listeners"]

    assert listeners(ol_env(tmp_path / "events.jsonl")) != []  # configured: it listens
    assert listeners({}) == []  # not configured: no listener, so no operator method is ever called

    photo = f"{fresh_emulator.url}/samples/person-1.png"
    result = airflow.dags_test("example_klingfx_squish", {"photo": photo})
    assert result.returncode == 0 and result.state == "success", result.output[-6000:]
    assert "openlineage" not in result.output.lower(), result.output[-6000:]
    assert not (tmp_path / "events.jsonl").exists()


# ---------------------------------------------------------------------------------------------
# The lineage functions on their own: naming, redaction, and never raising into the task
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("s3://aws_moto@photos/people/a.png", ("s3://photos", "people/a.png")),
        ("gs://bucket/dir/a.jpg", ("gs://bucket", "dir/a.jpg")),
        ("gcs://bucket/dir/a.jpg", ("gs://bucket", "dir/a.jpg")),
        ("file:///srv/photos/a.png", ("file", "/srv/photos/a.png")),
        ("/srv/videos/v.mp4", ("file", "/srv/videos/v.mp4")),
        ("https://cdn.example.com/p/a.png?X-Amz-Signature=abc#x", ("https://cdn.example.com", "/p/a.png")),
        ("https://u:pw@Example.com:8443/a.png", ("https://example.com:8443", "/a.png")),
        ("data:image/png;base64,iVBORw0KGgo=", None),
    ],
)
def test_dataset_naming_follows_the_openlineage_spec(ref, expected):
    from airflow_provider_klingfx._lineage import dataset_naming

    assert dataset_naming(ref) == expected


def operator(**kwargs: Any):
    from airflow_provider_klingfx.operators.klingfx import KlingFxEffectOperator

    return KlingFxEffectOperator(
        task_id="gen", effect_scene="squish", image_urls="s3://aws_moto@photos/a.png", **kwargs
    )


def test_on_complete_names_the_vendor_video_without_its_signed_query():
    from airflow_provider_klingfx.operators.klingfx import Delivered

    op = operator()
    op.delivered = Delivered("gen-1", "https://cdn.example.com/v/out.mp4?Expires=1&Signature=s3cr3t", None)
    lineage = op.get_openlineage_facets_on_complete(None)
    assert [(d.namespace, d.name) for d in lineage.inputs] == [("s3://photos", "a.png")]
    assert [(d.namespace, d.name) for d in lineage.outputs] == [("https://cdn.example.com", "/v/out.mp4")]
    assert lineage.run_facets["klingfx"].generationId == "gen-1"


def test_a_task_that_delivered_nothing_names_only_its_photos():
    lineage = operator(output_path="s3://aws_moto@videos/v.mp4").get_openlineage_facets_on_complete(None)
    assert [(d.namespace, d.name) for d in lineage.inputs] == [("s3://photos", "a.png")]
    assert lineage.outputs == []


def test_lineage_never_raises_into_the_task():
    # Inputs the task itself refuses: an empty lineage, not an exception.
    bad = operator()
    bad.image_urls = "photos/relative.png"
    assert bad.get_openlineage_facets_on_start().inputs == []
    assert bad.get_openlineage_facets_on_complete(None).outputs == []
