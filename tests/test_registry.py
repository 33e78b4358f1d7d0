"""The generation registry: one record per request paid for, created atomically, on disk and on S3."""

from __future__ import annotations

import threading
import uuid

import pytest

from airflow_provider_klingfx.domain import EffectRequest
from airflow_provider_klingfx.registry import (
    CLAIM_WAIT_SECONDS,
    GenerationRegistry,
    KlingFxRegistryError,
    photo_version,
    request_key,
)
from tests.support import FakeTime


@pytest.fixture(params=["file", "s3"])
def registry_location(request, tmp_path, s3, monkeypatch) -> str:
    if request.param == "file":
        return (tmp_path / "registry").as_uri()
    for name, value in s3["env"].items():
        monkeypatch.setenv(name, value)
    bucket = f"registry-{uuid.uuid4().hex[:12]}"
    s3["client"].create_bucket(Bucket=bucket)
    return f"s3://aws_moto@{bucket}/claims/"


def registry(location: str) -> GenerationRegistry:
    """A registry whose waiting for another run's record takes no real time."""
    sleeps = FakeTime()
    return GenerationRegistry(location, sleep=sleeps, clock=sleeps.clock)


def test_of_many_runs_claiming_at_once_exactly_one_gets_the_claim(registry_location):
    claims: list[object] = []
    barrier = threading.Barrier(8)

    def claim(i: int) -> None:
        one = registry(registry_location)
        barrier.wait()
        try:
            claims.append(one.claim("k1", f"run-{i}"))
        except KlingFxRegistryError:
            claims.append("waited in vain")  # no generation recorded: the others wait, then say so

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert claims.count(None) == 1, claims


def test_a_later_run_finds_the_generation_the_first_recorded(registry_location):
    first, second = registry(registry_location), registry(registry_location)
    assert first.claim("k2", "run-a") is None
    first.record("k2", "run-a", "gen-1")
    found = second.claim("k2", "run-b")
    assert found is not None and found["generation_id"] == "gen-1" and found["claimed_by"] == "run-a"
    # A retry of the claiming task instance finds its own record too (the generation it paid for).
    assert first.claim("k2", "run-a")["generation_id"] == "gen-1"


def test_a_claim_without_a_generation_is_waited_for_then_never_taken_over(registry_location):
    sleeps = FakeTime()
    waiting = GenerationRegistry(registry_location, sleep=sleeps, clock=sleeps.clock)
    assert registry(registry_location).claim("k3", "run-a") is None
    with pytest.raises(KlingFxRegistryError, match="run-a claimed these photos in the generation registry"):
        waiting.claim("k3", "run-b")
    # It read the claim every 2 s (virtual) for the whole wait, then gave up.
    assert set(sleeps.calls) == {2.0}
    assert CLAIM_WAIT_SECONDS - 2 <= sum(sleeps.calls) <= CLAIM_WAIT_SECONDS
    # The claimer's retry carries on with its own claim; a claim released (nothing paid) frees the photos.
    assert registry(registry_location).claim("k3", "run-a") is None
    registry(registry_location).release("k3", "run-a")
    assert registry(registry_location).claim("k3", "run-b") is None


def test_the_key_is_the_request_and_each_photos_version(tmp_path, s3, monkeypatch):
    for name, value in s3["env"].items():
        monkeypatch.setenv(name, value)
    client = s3["client"]
    client.create_bucket(Bucket="versions")
    client.put_object(Bucket="versions", Key="me.png", Body=b"first")
    ref = "s3://aws_moto@versions/me.png"
    first = request_key(EffectRequest.build("squish", ref), [photo_version(ref)])
    assert first == request_key(EffectRequest.build("squish", ref), [photo_version(ref)])
    other_scene = request_key(EffectRequest.build("expansion", ref), [photo_version(ref)])
    client.put_object(Bucket="versions", Key="me.png", Body=b"replaced under the same key")
    replaced = request_key(EffectRequest.build("squish", ref), [photo_version(ref)])
    assert len({first, other_scene, replaced}) == 3
    local = tmp_path / "me.png"
    local.write_bytes(b"x")
    assert photo_version(str(local)) != photo_version(str(local).replace("me", "me"))[:-1]
    url = "https://cdn.example.com/me.png?X-Amz-Signature=1"
    assert photo_version(url) == url  # no version to ask: a new presigned URL never matches
