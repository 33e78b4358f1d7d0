"""Photos from S3 and local disks in real Airflow: presigned or inline, checked before paying, and
no presigned signature left in logs, XCom or the metadata DB."""

from __future__ import annotations

import base64
import hashlib
import io
import sqlite3
import urllib.request
from collections.abc import Iterator

import pytest
from PIL import Image

from klingfx_emulator import EmulatorConfig, RunningEmulator, run_emulator_in_thread
from tests.conftest import API_KEY, configured
from tests.integration.test_retries_after_payment import assert_no_second_payment

pytestmark = pytest.mark.airflow_run


@pytest.fixture(scope="module")
def dag_emulator() -> Iterator[RunningEmulator]:
    # This module's own emulator renders each video from the photos it downloads (the session one
    # does not render), so a test can tell the real photo reached it.
    config = EmulatorConfig(api_key=API_KEY, queued_seconds=0, generating_seconds=0.5, render="eager")
    with run_emulator_in_thread(config) as emu:
        yield emu


def png(size: tuple[int, int], fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (90, 140, 200)).save(out, fmt)
    return out.getvalue()


def sample(emulator: RunningEmulator, name: str) -> bytes:
    with urllib.request.urlopen(f"{emulator.url}/samples/{name}", timeout=30) as resp:
        return resp.read()


def generations(emulator: RunningEmulator) -> list[tuple[tuple[str, ...], tuple[int, ...]]]:
    """What each generation was given, and which of its photos the emulator could not use."""
    return emulator.call(
        lambda: [(g.image_urls, g.fallback_images) for g in emulator.state.generations.values()]
    )


def signatures_found(airflow, *secrets: str) -> list[str]:
    return [place for secret in secrets for place in airflow.places_containing(secret)]


def test_s3_photos_reach_the_api_presigned_and_become_videos_and_previews(airflow, fresh_emulator, s3):
    client = s3["client"]
    client.create_bucket(Bucket="people")
    for name in ("person-1.png", "person-2.png"):
        client.put_object(Bucket="people", Key=f"in/{name}", Body=sample(fresh_emulator, name))
    client.put_object(Bucket="people", Key="in/notes.txt", Body=b"not a photo")  # ignored by the DAG

    result = airflow.dags_test(
        "example_klingfx_s3_photos",
        {"photos": "s3://aws_moto@people/in", "videos": "s3://aws_moto@videos/s3-photos", "scene": "squish"},
        env={**s3["env"], "AIRFLOW_VAR_KLINGFX_PHOTO_LOCATIONS": "s3://aws_moto@people/in/"},
    )
    assert result.returncode == 0 and result.state == "success", result.output[-6000:]

    made = generations(fresh_emulator)
    assert len(made) == 2
    endpoint = client.meta.endpoint_url
    for (url,), fallbacks in made:
        # The emulator downloaded each photo from the bucket through its presigned URL, and used it.
        assert url.startswith(f"{endpoint}/people/in/person-")
        assert "X-Amz-Signature=" in url and "X-Amz-Expires=3600" in url
        assert fallbacks == ()
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket="videos", Prefix="s3-photos/")["Contents"])
    assert keys == [
        f"s3-photos/person-{i}.{ext}" for i in (1, 2) for ext in ("mp4", "poster.jpg", "preview.gif")
    ]
    # One chain per photo (the mapped task group per_photo): each preview read its own photo's video.
    for i in (0, 1):
        video = f"s3://aws_moto@videos/s3-photos/person-{i + 1}.mp4"
        assert result.xcom("per_photo.generate", "output_path", map_index=i) == video
        assert result.xcom("per_photo.preview", "preview", map_index=i)["video_path"] == video
    assert "Photo 1: s3://people/in/person-1.png (PNG 512x512" in result.output
    # The signatures are credentials: in no log, XCom, DB row or command output.
    # (The signature values themselves: DAG files may well mention the parameter's name.)
    secrets = [url.split("X-Amz-Signature=", 1)[1].split("&")[0] for (url,), _ in made]
    queries = [url.split("?", 1)[1][:60] for (url,), _ in made]
    assert signatures_found(airflow, *secrets, *queries) == []


def test_one_bad_photo_stops_only_its_own_preview(airflow, fresh_emulator, s3):
    client = s3["client"]
    client.create_bucket(Bucket="mixed")
    # Listed first (map index 0): a photo too small for Kling, refused before anything is paid.
    client.put_object(Bucket="mixed", Key="in/a-tiny.png", Body=png((200, 400)))
    for name in ("person-1.png", "person-2.png"):
        client.put_object(Bucket="mixed", Key=f"in/{name}", Body=sample(fresh_emulator, name))

    result = airflow.dags_test(
        "example_klingfx_s3_photos",
        {"photos": "s3://aws_moto@mixed/in", "videos": "s3://aws_moto@videos/mixed", "scene": "squish"},
        env={**s3["env"], "AIRFLOW_VAR_KLINGFX_PHOTO_LOCATIONS": "s3://aws_moto@mixed/in/"},
    )
    assert result.state == "failed"
    states = {
        (task, i): result.task_states[(f"per_photo.{task}", i)]
        for task in ("generate", "preview")
        for i in range(3)
    }
    assert states == {
        ("generate", 0): "failed",
        ("preview", 0): "upstream_failed",
        ("generate", 1): "success",
        ("preview", 1): "success",
        ("generate", 2): "success",
        ("preview", 2): "success",
    }
    assert "image 1 (s3://mixed/in/a-tiny.png) is 200x400 px" in result.output.replace("\n", " ")
    assert fresh_emulator.stats()["submissions"] == 2
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket="videos", Prefix="mixed/")["Contents"])
    assert keys == [f"mixed/person-{i}.{ext}" for i in (1, 2) for ext in ("mp4", "poster.jpg", "preview.gif")]


def test_each_photo_rule_fails_its_task_before_any_api_request(airflow, fresh_emulator, s3, tmp_path):
    client = s3["client"]
    client.create_bucket(Bucket="checks")
    bad = {
        "s3://aws_moto@checks/anim.gif": (png((640, 480), "GIF"), "is a GIF image: Kling takes JPEG or PNG"),
        "s3://aws_moto@checks/tiny.png": (
            png((200, 400)),
            "is 200x400 px: Kling takes photos at least 300 px",
        ),
        "s3://aws_moto@checks/wide.png": (png((1200, 400)), "is 1200x400 px, an aspect ratio of 3.00:1"),
        "s3://aws_moto@checks/page.jpg": (
            b"<html>denied</html>",
            "is not an image Kling takes (it looks like an HTML or XML page)",
        ),
    }
    for ref, (data, _) in bad.items():
        client.put_object(Bucket="checks", Key=ref.rsplit("/", 1)[1], Body=data)
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * (11 * 1024 * 1024))
    local = tmp_path / "me.png"
    local.write_bytes(png((400, 400)))
    photos = [*bad, str(big), str(local)]

    result = airflow.dags_test(
        "test_klingfx_photos", {"photos": photos, "inline": False, "check_urls": False}, env=s3["env"]
    )
    assert result.state == "failed"
    assert {i: result.task_states[("squish", i)] for i in range(len(photos))} == dict.fromkeys(
        range(len(photos)), "failed"
    )
    for ref, (_, words) in bad.items():
        shown = ref.replace("aws_moto@", "")
        assert f"image 1 ({shown}) {words}" in result.output.replace("\n", " ")
    assert f"image 1 (file://{local}) is a local file, which the API cannot download" in result.output
    # The big local photo is refused for where it is before its size is even looked at.
    assert f"image 1 (file://{big}) is a local file" in result.output
    assert fresh_emulator.stats()["requests"] == []

    # Opted in, the same big local file fails on its size, still before any request.
    result = airflow.dags_test(
        "test_klingfx_photos", {"photos": [str(big)], "inline": True, "check_urls": False}
    )
    assert result.state == "failed"
    size = big.stat().st_size
    assert f"image 1 (file://{big}) is {size:,} bytes: Kling takes photos of at most 10 MB" in result.output
    assert fresh_emulator.stats()["requests"] == []


def test_a_local_photo_goes_inline_when_opted_in(airflow, fresh_emulator, tmp_path):
    photo = tmp_path / "selfie.png"
    photo.write_bytes(sample(fresh_emulator, "person-3.png"))
    with configured(fresh_emulator, accept_data_uris=True):
        result = airflow.dags_test(
            "test_klingfx_photos", {"photos": [str(photo)], "inline": True, "check_urls": False}
        )
    assert result.state == "success", result.output[-6000:]
    (gen_id,) = fresh_emulator.stats()["generations"]
    received = fresh_emulator.generation(gen_id)
    # The emulator shows a data: URI only as its type and length; the bytes it got are the photo's.
    assert received["image_urls"][0].startswith("data:image/png;base64,… (")
    assert received["image_sha256"] == [hashlib.sha256(photo.read_bytes()).hexdigest()]
    assert received["fallback_images"] == []
    assert f"Photo 1: file://{photo} (PNG 512x512" in result.output
    assert "sent inline as base64" in result.output
    # The photo's bytes went to the API only: not into a log, XCom or the DB.
    encoded = base64.b64encode(photo.read_bytes()).decode()
    assert signatures_found(airflow, encoded[1000:1060]) == []
    with sqlite3.connect(airflow.db_path) as db:
        (rendered,) = db.execute(
            "SELECT rendered_fields FROM rendered_task_instance_fields WHERE dag_id = 'test_klingfx_photos' "
            "ORDER BY rowid DESC LIMIT 1"
        ).fetchone()
    assert str(photo) in rendered  # the user's own input, as given


def test_a_retry_reattaches_although_its_presigned_url_differs(airflow, fresh_emulator, s3):
    """Each try presigns anew; the retry compares the photo's path, so it reattaches (3.3+)."""
    s3["client"].create_bucket(Bucket="retries")
    s3["client"].put_object(Bucket="retries", Key="me.png", Body=sample(fresh_emulator, "person-1.png"))
    with configured(fresh_emulator, generating_seconds=2.5):
        result = airflow.dags_test(
            "test_klingfx_retry_reattach", {"photo": "s3://aws_moto@retries/me.png"}, env=s3["env"]
        )
    assert_no_second_payment(result, fresh_emulator)
