"""Saving a video is atomic: whole and size-checked at the destination, or nothing there at all; and
every failure, HTTP or storage, is a KlingFxDownloadError naming the (paid) generation."""

from __future__ import annotations

import uuid
from urllib.request import urlopen

import pytest

from airflow_provider_klingfx.media import KlingFxDownloadError, save_video
from tests.conftest import faults
from tests.test_hook import make_hook, squish


@pytest.fixture
def finished(emulator, connection, sleeps):
    """A completed generation: (hook, generation id, video)."""
    hook = make_hook(sleeps)
    gen_id = hook.submit(squish(emulator)).id
    generation = hook.wait_for_generation(gen_id, poll_interval=0.05, timeout=30)
    assert generation.video is not None
    return hook, gen_id, generation.video


@pytest.fixture(params=["file", "s3"])
def folder(request, s3, monkeypatch, tmp_path):
    """An empty destination folder on the local disk or in a (moto) S3 bucket, and a lister for it."""
    if request.param == "file":
        base = tmp_path / "videos"
        return base.as_uri(), lambda: sorted(p.name for p in base.iterdir()) if base.exists() else []
    for name, value in s3["env"].items():
        monkeypatch.setenv(name, value)
    prefix = f"saved/{uuid.uuid4().hex}"

    def listing() -> list[str]:
        answer = s3["client"].list_objects_v2(Bucket="videos", Prefix=prefix + "/")
        return sorted(o["Key"].rsplit("/", 1)[1] for o in answer.get("Contents", []))

    return f"s3://aws_moto@videos/{prefix}", listing


def test_a_download_cut_halfway_leaves_nothing_behind_then_lands_whole(emulator, finished, folder):
    hook, gen_id, video = finished
    base, listing = folder
    emulator.set_faults(faults({"action": "truncate", "route": "video", "times": -1}))
    with pytest.raises(KlingFxDownloadError, match=f"could not save the video of generation {gen_id}"):
        save_video(hook, gen_id, video, f"{base}/clip.mp4")
    assert listing() == []  # no half video, no temporary file
    emulator.set_faults([])
    saved = save_video(hook, gen_id, video, f"{base}/clip.mp4")
    assert listing() == ["clip.mp4"]
    from airflow_provider_klingfx.media import as_storage_path

    with urlopen(video.url, timeout=30) as resp:
        assert as_storage_path(saved).read_bytes() == resp.read()


def test_storage_errors_become_download_errors_naming_the_generation(
    emulator, finished, s3, monkeypatch, tmp_path
):
    hook, gen_id, video = finished
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for name, value in s3["env"].items():
        monkeypatch.setenv(name, value)
    for dest in (f"{blocker.as_uri()}/clip.mp4", "s3://aws_moto@no-such-bucket/clip.mp4"):
        with pytest.raises(KlingFxDownloadError, match=gen_id) as info:
            save_video(hook, gen_id, video, dest)
        assert "KlingFxGenerationSensor" in str(info.value)
