"""Media workflows in real Airflow: keep the MP4 in object storage (local and S3), preview it,
publish a manifest, announce it as an Asset, and render a folder of photos every day."""

from __future__ import annotations

import json
import sqlite3
import urllib.request
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


def video_bytes(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as resp:  # the emulator's own copy, to compare with
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
        {"photo": f"{fresh_emulator.url}/samples/person-1.png", "output_base": base.as_uri()},
    )
    assert result.returncode == 0 and result.state == "success", result.output[-4000:]
    ds = logical_ds(airflow, result)
    expected = base / ds / "generate.mp4"
    assert result.xcom("generate", "output_path") == expected.as_uri()
    assert expected.read_bytes() == video_bytes(result.xcom("generate"))
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
    # The saved video was announced on the Asset, with where it landed.
    with sqlite3.connect(airflow.db_path) as db:
        extras = [json.loads(e) for (e,) in db.execute("SELECT extra FROM asset_event")]
    assert {
        "generation_id": manifest["generation_id"],
        "video_url": result.xcom("generate"),
        "output_path": expected.as_uri(),
    } in extras


def test_media_pipeline_keeps_the_video_in_s3(airflow, fresh_emulator, s3):
    result = airflow.dags_test(
        "example_klingfx_media_pipeline",
        {"photo": f"{fresh_emulator.url}/samples/person-2.png", "output_base": "s3://aws_moto@videos/media"},
        env=s3["env"],
    )
    assert result.returncode == 0 and result.state == "success", result.output[-4000:]
    ds = logical_ds(airflow, result)
    assert result.xcom("generate", "output_path") == f"s3://aws_moto@videos/media/{ds}/generate.mp4"

    def read(url: str) -> bytes:
        key = url.split("@videos/", 1)[1]
        return s3["client"].get_object(Bucket="videos", Key=key)["Body"].read()

    assert read(result.xcom("generate", "output_path")) == video_bytes(result.xcom("generate"))
    check_preview(result.xcom("preview"), read)
    keys = sorted(
        o["Key"] for o in s3["client"].list_objects_v2(Bucket="videos", Prefix=f"media/{ds}/")["Contents"]
    )
    assert keys == [f"media/{ds}/generate.{s}" for s in ("manifest.json", "mp4", "poster.jpg", "preview.gif")]


def test_daily_folder_renders_each_arrived_photo(airflow, fresh_emulator, tmp_path):
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    env = {
        "AIRFLOW_VAR_KLINGFX_INBOX": inbox.as_uri(),
        "AIRFLOW_VAR_KLINGFX_INBOX_PUBLIC_URL": f"{fresh_emulator.url}/samples",
        "AIRFLOW_VAR_KLINGFX_OUTBOX": outbox.as_uri(),
    }
    # dags test runs "now": put the photos in today's folder (UTC), as the day's arrivals.
    import pendulum

    ds = pendulum.now("UTC").to_date_string()
    (inbox / ds).mkdir(parents=True)
    for name in ("alice.png", "bob.jpg", "notes.txt"):
        (inbox / ds / name).write_bytes(b"photo")
    result = airflow.dags_test("example_klingfx_daily_folder", env=env)
    assert result.returncode == 0 and result.state == "success", result.output[-4000:]
    assert sorted(p.name for p in (outbox / ds).iterdir()) == ["alice.mp4", "bob.mp4"]
    assert fresh_emulator.stats()["submissions"] == 2
    assert API_KEY not in result.output
