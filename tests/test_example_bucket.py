"""The bucket-to-published example reads S3 event records written by whoever can upload to the
bucket: which records name a photo to review, and where its video and the published copy go."""

from __future__ import annotations

import importlib.util
from types import ModuleType
from typing import Any

import pytest

from tests.airflow_harness import REPO


@pytest.fixture(scope="module")
def example() -> ModuleType:
    path = REPO / "example_dags" / "example_klingfx_bucket_to_published.py"
    spec = importlib.util.spec_from_file_location("example_klingfx_bucket_to_published", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def record(
    example: ModuleType, key: str, *, bucket: str | None = None, event: str = "ObjectCreated:Put"
) -> dict[str, Any]:
    """An S3 event record as SQS delivers it (the key URL-encoded, as S3 sends it)."""
    name = example.BUCKET if bucket is None else bucket
    return {"eventName": event, "s3": {"bucket": {"name": name}, "object": {"key": key, "eTag": '"e1"'}}}


def test_a_new_photo_under_incoming_is_one_to_review(example: ModuleType) -> None:
    photo = example._photo_of(record(example, "incoming/anna+smith.png"))  # S3 encodes a space as "+"
    assert photo is not None
    assert photo["key"] == "incoming/anna smith.png"
    assert photo["etag"] == "e1"
    root = f"s3://{example.AWS_CONN_ID}@{example.BUCKET}/"
    assert photo["photo"] == root + "incoming/anna smith.png"
    assert photo["video"] == f"{root}{example.VIDEOS}anna smith.mp4"
    assert photo["published"] == f"{root}{example.PUBLISHED}anna smith.mp4"


@pytest.mark.parametrize(
    "key",
    [
        "incoming/../published/anna.png",  # would publish past the review
        "incoming/%2E%2E/published/anna.png",  # the same, URL-encoded as S3 sends it
        "incoming/./anna.png",
        "incoming/a/../../videos/anna.png",
    ],
)
def test_a_key_with_dot_segments_is_no_photo(example: ModuleType, key: str) -> None:
    assert example._photo_of(record(example, key)) is None


@pytest.mark.parametrize(
    ("key", "kwargs"),
    [
        ("published/anna.png", {}),  # outside incoming/
        ("incoming/anna.txt", {}),  # not a photo
        ("incoming/anna.png", {"bucket": "another-bucket"}),
        ("incoming/anna.png", {"event": "ObjectRemoved:Delete"}),
    ],
)
def test_other_records_are_no_photo(example: ModuleType, key: str, kwargs: dict[str, str]) -> None:
    assert example._photo_of(record(example, key, **kwargs)) is None
