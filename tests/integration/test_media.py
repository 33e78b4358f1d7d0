"""Media workflows in real Airflow: keep the MP4 in object storage (local and S3), preview it,
publish a manifest, announce it as an Asset, and render a folder of photos every day."""

from __future__ import annotations

import json
import sqlite3
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.airflow_harness import AirflowEnv, DagRunResult
from tests.conftest import API_KEY

pytestmark = pytest.mark.airflow_run


def logical_ds(airflow: AirflowEnv, result: DagRunResult) -> str:
    with sqlite3.connect(airflow.db_path) as db:
        (logical_date,) = db.execute(
            "SELECT logical_date FROM dag_run WHERE run_id = ?", (result.run_id,)
        ).fetchone()
    return str(logical_date)[:10]


def url_bytes(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as resp:  # the emulator's own copies of videos and samples
        return resp.read()


def check_preview(preview: dict, read) -> None:
    from io import BytesIO

    from PIL import Image

    with Image.open(BytesIO(read(preview["gif_path"]))) as gif:
        assert gif.format == "GIF"
        assert getattr(gif, "n_frames", 1) > 1
    with Image.open(BytesIO(read(preview["poster_path"]))) as poster:
        assert poster.format == "JPEG"
        assert min(poster.size) > 0  # at the video's own size (the GIF is scaled to `width`)


def test_media_pipeline_keeps_the_video_on_the_local_filesystem(airflow, fresh_emulator, tmp_path):
    base = tmp_path / "media"
    result = airflow.dags_test(
        "example_klingfx_media_pipeline",
        {"photo": f"{fresh_emulator.url}/samples/person-1.png"},
        env={"KLINGFX_MEDIA_FOLDER": base.as_uri()},
    )
    assert result.returncode == 0 and result.state == "success", result.output[-4000:]
    ds = logical_ds(airflow, result)
    expected = base / ds / "generate.mp4"
    assert result.xcom("generate", "output_path") == expected.as_uri()
    assert expected.read_bytes() == url_bytes(result.xcom("generate"))
    assert sorted(p.name for p in (base / ds).iterdir()) == [
        "generate.manifest.json",
        "generate.mp4",
        "generate.poster.jpg",
        "generate.preview.gif",
    ]
    check_preview(result.xcom("preview"), lambda url: Path(url.removeprefix("file://")).read_bytes())
    manifest = json.loads((base / ds / "generate.manifest.json").read_text())
    assert manifest["generation_id"] == result.xcom("generate", "generation_id")
    assert manifest["video"]["file_size"] == expected.stat().st_size
    assert manifest["usage"]["credits_used"] == 120000
    # The saved video was announced on the Asset, with where it landed, and the Asset's URI names
    # the folder it landed in.
    with sqlite3.connect(airflow.db_path) as db:
        events = [
            (name, uri, json.loads(extra))
            for name, uri, extra in db.execute(
                "SELECT a.name, a.uri, e.extra FROM asset_event e JOIN asset a ON a.id = e.asset_id"
            )
        ]
    announced = {
        "generation_id": manifest["generation_id"],
        "video_url": result.xcom("generate"),
        "output_path": expected.as_uri(),
    }
    assert ("klingfx_media_videos", base.as_uri(), announced) in events


@pytest.fixture
def other_deployment(tmp_path_factory: pytest.TempPathFactory, dag_emulator) -> Iterator[AirflowEnv]:
    """An Airflow home of its own: another deployment, with another media folder.

    The media folder is the Asset's URI: in the module's home, where the local test already made the
    Asset ``klingfx_media_videos`` with a ``file://`` URI, a second URI for the same name is inactive
    (only the scheduler retires the old one) and the generating task is refused before it starts.
    """
    env = AirflowEnv(
        tmp_path_factory.mktemp("airflow_home_s3"),
        {"conn_type": "klingfx", "host": dag_emulator.url, "password": API_KEY},
    )
    env.migrate()
    yield env
    assert env.places_containing(API_KEY) == []


def test_media_pipeline_keeps_the_video_in_s3(other_deployment, fresh_emulator, s3):
    result = other_deployment.dags_test(
        "example_klingfx_media_pipeline",
        {"photo": f"{fresh_emulator.url}/samples/person-2.png"},
        env={**s3["env"], "KLINGFX_MEDIA_FOLDER": "s3://aws_moto@videos/media"},
    )
    assert result.returncode == 0 and result.state == "success", result.output[-4000:]
    ds = logical_ds(other_deployment, result)
    assert result.xcom("generate", "output_path") == f"s3://aws_moto@videos/media/{ds}/generate.mp4"

    def read(url: str) -> bytes:
        key = url.split("@videos/", 1)[1]
        return s3["client"].get_object(Bucket="videos", Key=key)["Body"].read()

    assert read(result.xcom("generate", "output_path")) == url_bytes(result.xcom("generate"))
    check_preview(result.xcom("preview"), read)
    keys = sorted(
        o["Key"] for o in s3["client"].list_objects_v2(Bucket="videos", Prefix=f"media/{ds}/")["Contents"]
    )
    assert keys == [f"media/{ds}/generate.{s}" for s in ("manifest.json", "mp4", "poster.jpg", "preview.gif")]


def test_daily_folder_renders_each_arrived_photo(airflow, fresh_emulator, s3):
    """Photos in a private bucket, given to the operator as storage paths: no public URL anywhere."""
    client = s3["client"]
    client.create_bucket(Bucket="inbox")
    env = {
        **s3["env"],
        "AIRFLOW_VAR_KLINGFX_INBOX": "s3://aws_moto@inbox/in",
        "AIRFLOW_VAR_KLINGFX_OUTBOX": "s3://aws_moto@videos/outbox",
    }
    # dags test runs "now": put the photos in today's folder (UTC), as the day's arrivals.
    import pendulum

    ds = pendulum.now("UTC").to_date_string()
    # The format is told by content, not by name: a PNG named .jpg is a photo too.
    for name, sample in (("alice.png", "person-1.png"), ("bob.jpg", "person-2.png")):
        client.put_object(
            Bucket="inbox", Key=f"in/{ds}/{name}", Body=url_bytes(f"{fresh_emulator.url}/samples/{sample}")
        )
    client.put_object(Bucket="inbox", Key=f"in/{ds}/notes.txt", Body=b"not a photo")
    result = airflow.dags_test("example_klingfx_daily_folder", env=env)
    assert result.returncode == 0 and result.state == "success", result.output[-4000:]
    keys = sorted(
        o["Key"] for o in client.list_objects_v2(Bucket="videos", Prefix=f"outbox/{ds}/")["Contents"]
    )
    assert keys == [f"outbox/{ds}/alice.mp4", f"outbox/{ds}/bob.mp4"]
    assert fresh_emulator.stats()["submissions"] == 2
    # Each photo reached the API as a URL the operator presigned on the inbox's connection.
    endpoint = client.meta.endpoint_url
    sent = fresh_emulator.call(
        lambda: sorted(g.image_urls for g in fresh_emulator.state.generations.values())
    )
    assert [url.split("?", 1)[0] for (url,) in sent] == [
        f"{endpoint}/inbox/in/{ds}/alice.png",
        f"{endpoint}/inbox/in/{ds}/bob.jpg",
    ]
    assert all("X-Amz-Signature=" in url for (url,) in sent)
    assert API_KEY not in result.output
