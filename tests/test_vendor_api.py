"""Every answer the vendor's docs say the real API may give, over real HTTP against the emulator, on the
worker path (hook wait), the triggerer path (trigger) and the sensor, which must all read it alike."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from airflow_provider_klingfx.domain import (
    KlingFxAmbiguousSubmissionError,
    KlingFxAPIError,
    KlingFxGenerationFailedError,
)
from airflow_provider_klingfx.sensors.klingfx import KlingFxGenerationSensor
from airflow_provider_klingfx.triggers.klingfx import KlingFxGenerationTrigger
from tests.conftest import configured, faults
from tests.test_hook import hug, make_hook, squish


async def wait_with(path: str, emulator, sleeps, gen_id: str) -> dict:
    """Wait for ``gen_id`` the way ``path`` does; the outcome as ``{"status", "reason"?, "url"?}``."""
    if path == "trigger":
        trigger = KlingFxGenerationTrigger(
            gen_id,
            deadline=time.time() + 30,
            poll_interval=0.05,
            submitted_at=time.time(),
            sleep=sleeps.asleep,
        )
        (event,) = [e.payload async for e in trigger.run()]
        url = event.get("video", {}).get("url") if event["status"] == "success" else None
        return {"status": event["status"], "reason": event.get("reason"), "url": url}
    if path == "worker":
        hook = make_hook(sleeps)
        try:
            generation = hook.wait_for_generation(gen_id, poll_interval=0.05, timeout=30)
        except KlingFxGenerationFailedError as exc:
            return {"status": "error", "reason": exc.reason}
        assert generation.video is not None
        return {"status": "success", "url": generation.video.url}
    sensor = KlingFxGenerationSensor(task_id="s", generation_id=gen_id, deferrable=False, poll_interval=0.05)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            done = sensor.poke({"ti": XComSink()})
        except KlingFxGenerationFailedError as exc:
            return {"status": "error", "reason": exc.reason}
        if done:
            return {"status": "success", "url": done.xcom_value}
        await asyncio.sleep(0.05)
    return {"status": "timeout"}


class XComSink:
    """Where the sensor pushes its XComs when called outside Airflow."""

    def __init__(self) -> None:
        self.pushed: dict[str, object] = {}

    def xcom_push(self, key: str, value: object) -> None:
        self.pushed[key] = value


PATHS = ["worker", "trigger", "sensor"]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "words",
    [
        {"completed": "succeeded"},
        {"completed": "success"},
        {"queued": "waiting", "generating": "active"},
        {"generating": "processing"},
    ],
    ids=["succeeded", "success", "legacy-pending", "processing"],
)
async def test_every_done_word_delivers_the_video(emulator, connection, sleeps, path, words):
    with configured(emulator, status_words=words, generating_seconds=0.3):
        gen_id = make_hook(sleeps).submit(squish(emulator)).id
        outcome = await wait_with(path, emulator, sleeps, gen_id)
    assert outcome["status"] == "success", outcome
    assert outcome["url"].startswith(f"{emulator.url}/files/")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("word", ["error", "failed", "cancelled", "canceled"])
async def test_every_failure_word_ends_the_wait_with_the_reason(emulator, connection, sleeps, path, word):
    with configured(emulator, status_words={"error": word}):
        gen_id = make_hook(sleeps).submit(hug(emulator, "landscape-noface.png")).id
        outcome = await wait_with(path, emulator, sleeps, gen_id)
    assert outcome["status"] == "error", outcome
    assert "Could not detect face in the image" in outcome["reason"]


@pytest.mark.parametrize("path", PATHS)
async def test_an_unknown_word_is_logged_once_and_polled_on(emulator, connection, sleeps, capfd, path):
    with configured(emulator, status_words={"generating": "rendering"}, generating_seconds=0.4):
        gen_id = make_hook(sleeps).submit(squish(emulator)).id
        outcome = await wait_with(path, emulator, sleeps, gen_id)
    assert outcome["status"] == "success", outcome
    out = capfd.readouterr().out
    assert out.count(f"Generation {gen_id} is rendering (unknown status, treated as still running)") == 1


def test_a_cancelled_generation_without_a_reason_says_so(emulator, connection, sleeps):
    from airflow_provider_klingfx.domain import Generation

    generation = Generation.from_api({"id": "g", "status": "Cancelled", "error": None})
    assert generation.is_failed
    with pytest.raises(KlingFxGenerationFailedError, match="reported status 'cancelled' without a reason"):
        generation.raise_for_failure()


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize(
    ("usage_in", "field", "credits"),
    [("both", "credits_used", 120000), ("create", "credits_used", 120000), ("create", "tokens_used", 120000)],
    ids=["both", "create-only", "create-only-tokens_used"],
)
async def test_the_create_answer_reports_what_it_costs(
    emulator, connection, sleeps, mode, usage_in, field, credits
):
    hook = make_hook(sleeps)
    try:
        with configured(emulator, usage_in=usage_in, usage_field=field):
            submission = (
                hook.submit(squish(emulator)) if mode == "sync" else await hook.asubmit(squish(emulator))
            )
    finally:
        await hook.aclose()
    assert submission.status == "queued"
    assert submission.usage is not None
    assert submission.usage.credits_used == credits
    assert submission.usage.usd_spent and submission.usage.usd_spent > 0


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_an_id_only_in_the_inference_id_header_is_enough(emulator, connection, sleeps, mode):
    emulator.set_faults(faults({"action": "accept_without_id", "route": "create"}))
    hook = make_hook(sleeps)
    try:
        submission = hook.submit(squish(emulator)) if mode == "sync" else await hook.asubmit(squish(emulator))
    finally:
        await hook.aclose()
    assert list(emulator.stats()["generations"]) == [submission.id]


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_a_2xx_create_answer_without_any_id_is_ambiguous_and_never_resent(
    emulator, connection, sleeps, mode
):
    emulator.set_faults(faults({"action": "accept_unreadable", "route": "create"}))
    hook = make_hook(sleeps)
    try:
        with pytest.raises(KlingFxAmbiguousSubmissionError, match="answer has no generation id"):
            hook.submit(squish(emulator)) if mode == "sync" else await hook.asubmit(squish(emulator))
    finally:
        await hook.aclose()
    assert [r["method"] for r in emulator.stats()["requests"]] == ["POST"]
    assert emulator.stats()["submissions"] == 1
    assert sleeps.calls == []


@pytest.mark.parametrize("shape", ["documented", "live"])
def test_body_validation_errors_carry_the_details_and_no_signed_url(emulator, connection, sleeps, shape):
    from airflow_provider_klingfx.domain import EffectRequest

    hook = make_hook(sleeps)
    # Bypass local validation on purpose, to see the API's own words.
    bad = EffectRequest(
        effect_scene="squish", image_urls=("https://cdn.example/a b.png?X-Amz-Signature=s3cr3t",)
    )
    with configured(emulator, error_body=shape), pytest.raises(KlingFxAPIError) as info:
        hook.submit(bad)
    text = str(info.value)
    assert "Body validation error!" in text
    assert "image_url" in text and "URI" in text
    assert "s3cr3t" not in text
    assert "Body validation error! (" in text  # the details follow the headline


@pytest.mark.parametrize("shape", ["detail", "name_message"])
async def test_a_failure_reason_shows_the_photo_without_its_signature(emulator, connection, sleeps, shape):
    signed = f"{emulator.url}/samples/landscape-noface.png?X-Amz-Signature=s3cr3t&X-Amz-Expires=900"
    from airflow_provider_klingfx.domain import EffectRequest

    request = EffectRequest.build("hug", [f"{emulator.url}/samples/person-1.png", signed])
    with configured(emulator, error_shape=shape):
        gen_id = make_hook(sleeps).submit(request).id
        trigger = KlingFxGenerationTrigger(
            gen_id, deadline=time.time() + 30, poll_interval=0.05, sleep=sleeps.asleep
        )
        (event,) = [e.payload async for e in trigger.run()]
    assert event["status"] == "error"
    assert "s3cr3t" not in json.dumps(event)
    if shape == "detail":
        assert f"{emulator.url}/samples/landscape-noface.png" in event["reason"]
