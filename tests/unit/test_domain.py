"""The domain model: scenes, request validation, generation parsing, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airflow_provider_klingfx.domain import (
    EFFECT_SCENES,
    MODELS,
    ONE_SUBJECT_SCENES,
    PHOTO_LOCAL,
    PHOTO_STORAGE,
    PHOTO_URL,
    PRO_EFFECTS_MODEL,
    TWO_PERSON_SCENES,
    EffectRequest,
    Generation,
    KlingFxError,
    KlingFxGenerationFailedError,
    KlingFxInvalidInputError,
    KlingFxMalformedResponseError,
    client_request_id,
    image_count_range,
    photo_kind,
)

SCHEMA = Path(__file__).resolve().parents[1] / "contract" / "kling-v1.6-effects.openapi.json"
A = "https://example.com/a.png"
B = "https://example.com/b.jpg"


def test_scene_list_matches_the_vendor_schema():
    spec = json.loads(SCHEMA.read_text())
    variants = spec["paths"]["/v2/video/generations"]["post"]["requestBody"]["content"]["application/json"][
        "schema"
    ]["oneOf"]
    assert [v["properties"]["model"]["enum"][0] for v in variants] == list(MODELS)
    for variant in variants:
        assert variant["properties"]["effect_scene"]["enum"] == list(EFFECT_SCENES)
        assert variant["properties"]["duration"]["enum"] == [5, 10]


def test_there_are_80_distinct_scenes():
    assert len(EFFECT_SCENES) == len(set(EFFECT_SCENES)) == 80


@pytest.mark.parametrize("scene", EFFECT_SCENES)
def test_every_scene_accepts_its_documented_image_count(scene):
    low, high = image_count_range(scene)
    images = [A, B][:low]
    request = EffectRequest.build(scene, images, 10, PRO_EFFECTS_MODEL)
    body = request.to_body()
    assert body["effect_scene"] == scene
    assert body["duration"] == 10
    assert body["model"] == PRO_EFFECTS_MODEL
    # One image is sent as a string, two as a list, as the vendor's examples do.
    assert body["image_url"] == (A if low == 1 else [A, B])
    if high == 2:
        assert EffectRequest.build(scene, [A, B]).to_body()["image_url"] == [A, B]
    if low == 1:
        assert EffectRequest.build(scene, A).image_urls == (A,)


@pytest.mark.parametrize("scene", sorted(TWO_PERSON_SCENES))
@pytest.mark.parametrize("images", [[A], [A, B, A]], ids=["one", "three"])
def test_two_person_scenes_need_exactly_two_images(scene, images):
    with pytest.raises(
        KlingFxInvalidInputError,
        match=rf"'{scene}' takes 2 images .*first image is placed on the left.*got {len(images)}",
    ):
        EffectRequest.build(scene, images)


@pytest.mark.parametrize(
    "scene", [*sorted(ONE_SUBJECT_SCENES), "santa_hug", "siblings", "fight", "girlfriend"]
)
def test_every_scene_but_the_two_person_ones_needs_exactly_one_image(scene):
    # Kling's effects spec: only hug, kiss and heart_gesture are dual-image effects, whatever a name says.
    with pytest.raises(
        KlingFxInvalidInputError,
        match=rf"'{scene}' takes 1 image \(only hug, kiss and heart_gesture take two\), got 2",
    ):
        EffectRequest.build(scene, [A, B])


@pytest.mark.parametrize(
    ("typo", "suggestion"),
    [
        ("hugg", "hug"),
        ("Hug", "hug"),
        ("kis", "kiss"),
        ("heart-gesture", "heart_gesture"),
        ("squeesh", "squish"),
        ("expanssion", "expansion"),
        ("lets_ride", "let's_ride"),
    ],
)
def test_typo_in_scene_names_the_closest_scene(typo, suggestion):
    with pytest.raises(KlingFxInvalidInputError, match=f"did you mean {suggestion!r}") as info:
        EffectRequest.build(typo, [A, B])
    assert "\n" not in str(info.value)


def test_unrelated_scene_has_no_suggestion_but_says_where_the_list_is():
    with pytest.raises(KlingFxInvalidInputError, match=r"Unknown effect_scene 'zzzzqqq' .*EFFECT_SCENES"):
        EffectRequest.build("zzzzqqq", A)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"duration": 7}, "duration must be one of 5, 10 seconds, got 7"),
        ({"duration": "7"}, "got '7'"),
        ({"duration": True}, "got True"),
        ({"duration": 5.5}, "got 5.5"),
        (
            {"model": "klingai/kling-video-v1.6-standard"},
            "did you mean 'klingai/kling-video-v1.6-standard-effects'",
        ),
        ({"model": "gpt"}, "Unknown model 'gpt'"),
        ({"image_urls": None}, "takes 1 image, got 0"),
        ({"image_urls": []}, "takes 1 image, got 0"),
        ({"image_urls": [""]}, "image 1 is empty"),
        ({"image_urls": [None]}, "image 1 is empty"),
        ({"image_urls": "not a url"}, "is neither a URL nor an absolute path"),
        ({"image_urls": "photos/a.png"}, "is neither a URL nor an absolute path"),
        ({"image_urls": "file://otherhost/a.png"}, "must be a file:///absolute/path URL"),
        ({"image_urls": "s3://bucket/"}, "must name one object: s3://bucket/path/photo.jpg"),
        ({"image_urls": "s3:///photo.jpg"}, "must name one object"),
        ({"image_urls": "data:image/png;base64,AAAA"}, "inline_base64_images=True"),
        ({"image_urls": "https://"}, "must be a public http"),
        ({"image_urls": "https://exa mple.com/a.png"}, "must be a public http"),
        ({"image_urls": 42}, "or a list of them, got int"),
        ({"effect_scene": ""}, "effect_scene must be a non-empty string"),
        ({"effect_scene": None}, "effect_scene must be a non-empty string"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_inputs_are_rejected_with_one_readable_line(kwargs, message):
    args = {"effect_scene": "squish", "image_urls": A, "duration": 5} | kwargs
    with pytest.raises(KlingFxInvalidInputError) as info:
        EffectRequest.build(**args)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_templated_values_are_accepted():
    request = EffectRequest.build("hug", str([A, B]), "10")
    assert request.image_urls == (A, B)
    assert request.duration == 10
    assert EffectRequest.build("hug", json.dumps([A, B])).image_urls == (A, B)


def test_invalid_input_fails_without_retries():
    from airflow_provider_klingfx._compat import AirflowFailException

    assert issubclass(KlingFxInvalidInputError, AirflowFailException)
    assert issubclass(KlingFxGenerationFailedError, AirflowFailException)


@pytest.mark.parametrize("status", ["queued", "generating", "waiting", "active", "Rendering", "paused"])
def test_non_terminal_statuses_are_pending(status):
    gen = Generation.from_api({"id": "g", "status": status})
    assert gen.is_pending
    assert not gen.is_completed
    assert gen.is_known_status == (status in {"queued", "generating", "waiting", "active"})


def test_completed_generation_carries_video_and_usage():
    gen = Generation.from_api(
        {
            "id": "aa8d:kling-video/v1.6/standard/effects",
            "status": "completed",
            "video": {
                "url": "https://cdn/x.mp4",
                "content_type": "video/mp4",
                "file_name": "output.mp4",
                "file_size": 5375765,
            },
            "meta": {"usage": {"credits_used": 120000}},
        },
        {"X-Aimlapi-Usd-Spent": "0.21"},
    )
    assert gen.is_completed
    assert gen.video is not None
    assert gen.video.to_dict() == {
        "url": "https://cdn/x.mp4",
        "content_type": "video/mp4",
        "file_name": "output.mp4",
        "file_size": 5375765,
    }
    assert gen.usage is not None
    assert (gen.usage.credits_used, gen.usage.usd_spent) == (120000.0, 0.21)


def test_usage_from_headers_only():
    gen = Generation.from_api({"id": "g", "status": "queued"}, {"x-aimlapi-credits-used": "42"})
    assert gen.usage is not None
    assert gen.usage.credits_used == 42.0


def test_completed_without_url_is_malformed():
    with pytest.raises(KlingFxMalformedResponseError, match=r"completed but has no video.url"):
        Generation.from_api({"id": "g", "status": "completed", "video": None})


@pytest.mark.parametrize(
    "payload", [[], "x", None, {"status": "queued"}, {"id": "g"}, {"id": "", "status": "queued"}]
)
def test_answers_that_are_not_generations_are_malformed(payload):
    with pytest.raises(KlingFxMalformedResponseError):
        Generation.from_api(payload)


@pytest.mark.parametrize(
    ("error", "reason", "error_type"),
    [
        (
            {
                "detail": [
                    {
                        "loc": ["body", "image_url"],
                        "msg": "Could not detect face in the image",
                        "type": "face_detection_error",
                        "input": "https://x/noface.png",
                    }
                ]
            },
            "Could not detect face in the image (image_url: https://x/noface.png)",
            "face_detection_error",
        ),
        (
            {"name": "FaceDetectionError", "message": "Could not detect face in the image"},
            "Could not detect face in the image",
            "FaceDetectionError",
        ),
        ({"detail": "Internal failure"}, "Internal failure", None),
        ("plain text reason", "plain text reason", None),
        (None, "the API reported status 'error' without a reason", None),
        ({"weird": 1}, 'unrecognised error: {"weird": 1}', None),
    ],
    ids=["detail-shape", "name-message-shape", "detail-string", "string", "null", "unknown-shape"],
)
def test_vendor_failure_reason_from_either_shape(error, reason, error_type):
    gen = Generation.from_api({"id": "g1", "status": "error", "error": error})
    assert gen.is_failed
    assert gen.error is not None
    assert (gen.error.reason, gen.error.error_type) == (reason, error_type)
    with pytest.raises(KlingFxGenerationFailedError, match="generation g1 failed at the vendor") as info:
        gen.raise_for_failure()
    assert info.value.reason == reason


def test_client_request_id_is_safe_and_bounded():
    rid = client_request_id("my dag", "manual__2026-01-01T00:00:00+00:00", "task/x", 3, 1)
    assert rid == "my_dag:manual__2026-01-01T00:00:00_00:00:task_x:3:1"
    long = client_request_id("d" * 300, "r", "t")
    assert len(long) == 128
    assert long != client_request_id("d" * 301, "r", "t")
    import re

    assert re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", long)


def test_errors_are_airflow_exceptions():
    from airflow.sdk.exceptions import AirflowException

    assert issubclass(KlingFxError, AirflowException)


@pytest.mark.parametrize(
    ("given", "ref", "kind"),
    [
        ("https://cdn.example.com/a.jpg?sig=1", "https://cdn.example.com/a.jpg?sig=1", PHOTO_URL),
        ("s3://aws_moto@photos/people/a b.jpg", "s3://aws_moto@photos/people/a b.jpg", PHOTO_STORAGE),
        ("gs://bucket/a.png", "gs://bucket/a.png", PHOTO_STORAGE),
        ("ftp://example.com/a.png", "ftp://example.com/a.png", PHOTO_STORAGE),
        ("/srv/photos/My photo.png", "file:///srv/photos/My photo.png", PHOTO_LOCAL),
        ("file:///srv/a.png", "file:///srv/a.png", PHOTO_LOCAL),
        ("file://localhost/srv/a.png", "file:///srv/a.png", PHOTO_LOCAL),
    ],
)
def test_photo_references_are_kept_in_one_canonical_form(given, ref, kind):
    request = EffectRequest.build("squish", given)
    assert request.image_urls == (ref,)
    assert photo_kind(ref) == kind


def test_an_object_storage_path_keeps_its_connection():
    from airflow.sdk import ObjectStoragePath

    # A connection id no other test uses: Airflow caches a path's filesystem per connection id.
    request = EffectRequest.build("squish", ObjectStoragePath("s3://aws_unit_test@photos/a.jpg"))
    assert request.image_urls == ("s3://aws_unit_test@photos/a.jpg",)
    assert EffectRequest.build("squish", [ObjectStoragePath("s3://photos/a.jpg")]).image_urls == (
        "s3://photos/a.jpg",
    )


def test_only_a_request_of_urls_can_be_sent_but_any_can_be_fingerprinted():
    request = EffectRequest.build("hug", ["s3://bucket/left.jpg", "https://example.com/right.jpg"])
    assert len(request.fingerprint()) == 32
    with pytest.raises(KlingFxInvalidInputError, match=r"image 1 \(s3://bucket/left.jpg\) is not a URL"):
        request.to_body()


@pytest.mark.parametrize(
    "url", ["javascript:alert(1)", "file:///etc/passwd", "data:text/html,<script>x</script>", "//cdn/x.mp4"]
)
def test_a_video_url_that_is_not_http_is_no_video(url):
    # The URL lands in XCom, the extra link's button and the views: a vendor answer must not make it
    # anything a browser or a worker would treat as other than a download.
    with pytest.raises(KlingFxMalformedResponseError, match=r"is completed but has no video\.url"):
        Generation.from_api({"id": "g1", "status": "completed", "video": {"url": url}})
    with pytest.raises(KlingFxMalformedResponseError, match=r"is completed but has no video\.url"):
        Generation.from_api({"id": "g1", "status": "completed", "video": url})
    pending = Generation.from_api({"id": "g1", "status": "generating", "video": {"url": url}})
    assert pending.video is None and pending.is_pending
