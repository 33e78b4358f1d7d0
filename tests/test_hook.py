"""The hook against the emulator over real HTTP: both endpoint styles, sync and async, every error."""

from __future__ import annotations

import time

import pytest

from airflow_provider_klingfx._retry import RetryPolicy
from airflow_provider_klingfx.domain import (
    EffectRequest,
    KlingFxAmbiguousSubmissionError,
    KlingFxAPIError,
    KlingFxAuthError,
    KlingFxConnectionConfigError,
    KlingFxGenerationFailedError,
    KlingFxMalformedResponseError,
    KlingFxTimeoutError,
    KlingFxTransportError,
)
from airflow_provider_klingfx.hooks.klingfx import KlingFxHook
from klingfx_emulator import EmulatorConfig, run_emulator_in_thread
from tests.conftest import API_KEY, configured, faults
from tests.support import FakeTime, free_port, seeded_random

FAST = RetryPolicy(max_attempts=4, initial_wait=0.01, max_wait=0.05)


def squish(emulator, name: str = "person-1.png") -> EffectRequest:
    return EffectRequest.build("squish", f"{emulator.url}/samples/{name}")


def hug(emulator, second: str = "person-2.png") -> EffectRequest:
    return EffectRequest.build(
        "hug", [f"{emulator.url}/samples/person-1.png", f"{emulator.url}/samples/{second}"]
    )


def make_hook(sleeps, conn_id: str = "klingfx_default", **kwargs) -> KlingFxHook:
    return KlingFxHook(
        conn_id,
        retry_policy=FAST,
        sleep=sleeps,
        async_sleep=sleeps.asleep,
        clock=sleeps.clock,
        read_timeout=2,
        **kwargs,
    )


def posts_seen(emulator, at_least: int = 1, patience: float = 10.0) -> list[dict]:
    """The create requests the emulator recorded, waiting for a slow one to finish being recorded."""
    deadline = time.monotonic() + patience
    while True:
        posts = [r for r in emulator.stats()["requests"] if r["method"] == "POST"]
        if len(posts) >= at_least or time.monotonic() > deadline:
            return posts
        time.sleep(0.05)


def request_paths(emulator) -> list[tuple[str, str]]:
    return [(r["method"], r["path"]) for r in emulator.stats()["requests"]]


@pytest.mark.parametrize(
    ("endpoint", "path"),
    [
        (None, "/v2/video/generations"),
        ("universal", "/v2/video/generations"),
        ("legacy", "/v2/generate/video/kling/generation"),
    ],
)
def test_sync_submit_and_wait_on_each_endpoint_style(emulator, connection, sleeps, endpoint, path):
    connection("kfx", extra={"endpoint": endpoint} if endpoint else {})
    hook = make_hook(sleeps, "kfx")
    gen_id = hook.submit(squish(emulator), client_request_id="dag:run:task:-1:1").id
    assert gen_id.endswith(":kling-video/v1.6/standard/effects")
    generation = hook.wait_for_generation(gen_id, poll_interval=0.05, timeout=30)
    assert generation.is_completed
    assert generation.video is not None
    assert generation.video.url.startswith(emulator.url)
    assert generation.video.content_type == "video/mp4"
    assert generation.usage is not None
    assert generation.usage.credits_used == 120000
    assert {p for _, p in request_paths(emulator)} == {path}
    stats = emulator.stats()
    assert stats["submissions"] == 1
    assert stats["requests"][0]["client_request_id"] == "dag:run:task:-1:1"


@pytest.mark.parametrize("endpoint", ["universal", "legacy"])
async def test_async_submit_and_fetch_on_each_endpoint_style(emulator, connection, sleeps, endpoint):
    connection("kfx", extra={"endpoint": endpoint})
    hook = make_hook(sleeps, "kfx")
    try:
        gen_id = (await hook.asubmit(hug(emulator))).id
        generation = await hook.aget_generation(gen_id)
        assert generation.id == gen_id
        assert generation.status in {"queued", "generating", "completed"}
    finally:
        await hook.aclose()
    expected = "/v2/video/generations" if endpoint == "universal" else "/v2/generate/video/kling/generation"
    assert {p for _, p in request_paths(emulator)} == {expected}


def test_generation_ids_are_url_encoded(emulator, connection, sleeps):
    hook = make_hook(sleeps)
    gen_id = hook.submit(squish(emulator)).id
    assert ":" in gen_id and "/" in gen_id
    assert hook.get_generation(gen_id).id == gen_id
    assert emulator.stats()["requests"][-1]["query_generation_id"] == gen_id


def test_legacy_statuses_count_as_pending(emulator, connection, sleeps):
    with configured(emulator, legacy_statuses=True):
        hook = make_hook(sleeps)
        gen_id = hook.submit(squish(emulator)).id
        first = hook.get_generation(gen_id)
        assert first.status in {"waiting", "active"}
        assert first.is_pending and first.is_known_status
        assert hook.wait_for_generation(gen_id, poll_interval=0.05, timeout=30).is_completed


@pytest.mark.parametrize("shape", ["detail", "name_message"])
def test_face_detection_failure_in_either_shape(emulator, connection, sleeps, shape, caplog):
    with configured(emulator, error_shape=shape):
        hook = make_hook(sleeps)
        gen_id = hook.submit(hug(emulator, "landscape-noface.png")).id
        with pytest.raises(KlingFxGenerationFailedError, match="Could not detect face in the image") as info:
            hook.wait_for_generation(gen_id, poll_interval=0.05, timeout=30)
    assert info.value.generation_id == gen_id
    assert emulator.stats()["submissions"] == 1


def test_bad_key_is_an_auth_error_with_the_vendor_envelope(emulator, connection, sleeps):
    connection("bad", password="sk-wrong-key-123456")
    hook = make_hook(sleeps, "bad")
    with pytest.raises(KlingFxAuthError) as info:
        hook.submit(squish(emulator))
    err = info.value
    assert err.status_code == 401
    assert err.vendor_message == "Unauthorized"
    assert err.request_id
    assert "Check the API key" in str(err)
    assert "sk-wrong-key-123456" not in str(err)
    assert sleeps.calls == []  # not retried
    assert emulator.stats()["submissions"] == 0


def test_out_of_credits_is_a_403_auth_error(emulator, connection, sleeps):
    config = EmulatorConfig(api_key=API_KEY, credits=100, render="off")
    with run_emulator_in_thread(config) as broke:
        connection("broke", host=broke.url)
        with pytest.raises(KlingFxAuthError, match=r"403 .*Insufficient credits"):
            make_hook(sleeps, "broke").submit(squish(emulator))
        assert broke.stats()["submissions"] == 0


def test_body_validation_error_carries_vendor_details(emulator, connection, sleeps):
    hook = make_hook(sleeps)
    # Bypass local validation on purpose, to see the API's own answer.
    bad = EffectRequest(effect_scene="not_a_scene", image_urls=(f"{emulator.url}/samples/person-1.png",))
    with pytest.raises(KlingFxAPIError, match=r"400 .*Body validation error!.*effect_scene") as info:
        hook.submit(bad)
    assert not isinstance(info.value, KlingFxAuthError)
    assert sleeps.calls == []


def test_unknown_generation_is_a_404(emulator, connection, sleeps):
    with pytest.raises(KlingFxAPIError, match=r"404 .*Generation not found"):
        make_hook(sleeps).get_generation("nope:kling-video/v1.6/standard/effects")


@pytest.mark.parametrize(
    "rule",
    [
        {"action": "status", "status": 503, "route": "fetch", "times": 2},
        {"action": "status", "status": 500, "route": "fetch", "times": 2},
        {"action": "status", "status": 429, "route": "fetch", "times": 1, "retry_after": 0.01},
        {"action": "drop", "route": "fetch", "times": 2},
        {"action": "garbage", "route": "fetch", "times": 2},
        {"action": "slow", "route": "fetch", "times": 1, "delay": 3},
    ],
    ids=["503", "500", "429", "drop", "garbage", "slow-past-read-timeout"],
)
def test_fetch_retries_transient_faults(emulator, connection, sleeps, rule):
    hook = make_hook(sleeps)
    gen_id = hook.submit(squish(emulator)).id
    emulator.set_faults(faults(rule))
    assert hook.get_generation(gen_id).id == gen_id
    # A one-off read: the hook's policy retries it, one back-off per failure (no gate: that is for polls).
    assert len(sleeps.calls) == rule["times"]
    assert emulator.stats()["faults_injected"] == rule["times"]


@pytest.mark.parametrize(
    "rule",
    [
        {"action": "status", "status": 503, "route": "fetch", "times": -1},
        {"action": "drop", "route": "fetch", "times": -1},
        {"action": "garbage", "route": "fetch", "times": -1},
    ],
    ids=["503", "drop", "garbage"],
)
async def test_an_async_poll_is_one_attempt_ending_in_a_typed_error(emulator, connection, sleeps, rule):
    # A poll is not retried by the hook: the trigger's watch polls again later and the gate paces it.
    hook = make_hook(sleeps)
    gen_id = hook.submit(squish(emulator)).id
    emulator.set_faults(faults(rule))
    try:
        with pytest.raises((KlingFxAPIError, KlingFxTransportError, KlingFxMalformedResponseError)):
            await hook.aget_generation(gen_id)
    finally:
        await hook.aclose()
    assert sleeps.calls == []
    # aiohttp itself sends an idempotent request once more when the server drops the connection.
    gets = 2 if rule["action"] == "drop" else 1
    assert [r["method"] for r in emulator.stats()["requests"]] == ["POST"] + ["GET"] * gets


@pytest.mark.parametrize(
    "rule",
    [
        {"action": "status", "status": 503, "route": "create", "times": 2},
        {"action": "status", "status": 429, "route": "create", "times": 1, "retry_after": 0.01},
    ],
    ids=["503", "429"],
)
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_submit_retries_only_when_nothing_was_accepted(emulator, connection, sleeps, rule, mode):
    emulator.set_faults(faults(rule))
    hook = make_hook(sleeps)
    try:
        gen_id = (
            hook.submit(squish(emulator)) if mode == "sync" else await hook.asubmit(squish(emulator))
        ).id
    finally:
        await hook.aclose()
    assert gen_id
    assert emulator.stats()["submissions"] == 1
    assert len(sleeps.calls) == rule["times"]


def test_submit_retries_when_the_connection_is_refused(connection, sleeps, emulator):
    connection("refused", host=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(KlingFxTransportError, match="could not connect") as info:
        make_hook(sleeps, "refused").submit(squish(emulator))
    assert info.value.reached_server is False
    assert len(sleeps.calls) == FAST.max_attempts - 1


@pytest.mark.parametrize(
    "rule",
    [
        {"action": "drop_after_accept", "route": "create"},
        {"action": "status", "status": 500, "route": "create"},
        {"action": "status", "status": 502, "route": "create"},
        {"action": "garbage", "route": "create"},
        {"action": "slow", "route": "create", "delay": 3},
    ],
    ids=["dropped-after-accept", "500", "502", "garbage-200", "read-timeout"],
)
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_ambiguous_submit_failures_are_never_resent(emulator, connection, sleeps, rule, mode):
    emulator.set_faults(faults(rule))
    hook = make_hook(sleeps)
    try:
        with pytest.raises(KlingFxAmbiguousSubmissionError, match="not resubmitting"):
            hook.submit(squish(emulator)) if mode == "sync" else await hook.asubmit(squish(emulator))
    finally:
        await hook.aclose()
    assert len(posts_seen(emulator)) == 1
    assert sleeps.calls == []


def test_wait_times_out_with_the_generation_id(emulator, connection):
    sleeps = FakeTime(start=1000.0)
    hook = KlingFxHook(retry_policy=FAST, sleep=sleeps, clock=sleeps.clock)
    with configured(emulator, generating_seconds=3600):
        gen_id = hook.submit(squish(emulator)).id
        with pytest.raises(KlingFxTimeoutError, match=f"{gen_id} did not finish within 60s") as info:
            hook.wait_for_generation(gen_id, poll_interval=10, timeout=60)
    assert info.value.last_status in {"queued", "generating"}
    assert sleeps.calls == [10.0] * 6


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_wait_rides_out_a_storm_of_transient_errors(emulator, connection, sleeps, capfd, seed):
    hook = make_hook(sleeps)
    gen_id = hook.submit(squish(emulator)).id
    # 10 failures in a row, one per poll (a poll is one attempt); past 5 in a row the API counts as
    # down, and only probes go out, further and further apart.
    emulator.set_faults(faults({"action": "status", "status": 503, "route": "fetch", "times": 10}))
    with seeded_random(seed):  # the back-off and probe jitter
        generation = hook.wait_for_generation(gen_id, poll_interval=0.05, timeout=600)
    assert generation.is_completed
    out = capfd.readouterr().out
    # The failures before the outage is known are logged as they come (4; the 5th announces the
    # outage, and is logged quietly); the outage is one line in, one line out.
    assert out.count("waiting out a transient API error") == 4
    assert out.count("looks down: 5 requests in a row failed") == 1
    assert out.count("answers again after") == 1
    assert "6 probe(s) sent" in out
    assert emulator.stats()["faults_injected"] == 10
    # The probes back off: 1 s doubling up to 20 s, each between half and all of its step (jitter),
    # less the poll's own wait since the last probe failed (at most FAST.max_wait), in virtual time.
    # Every other wait is a retry's back-off or the poll interval, FAST.max_wait at most.
    probe_waits = [s for s in sleeps.calls if s > FAST.max_wait]
    steps = [1, 2, 4, 8, 16, 20]
    assert len(probe_waits) == len(steps), sleeps.calls  # one before each of the 6 probes
    for wait, step in zip(probe_waits, steps, strict=True):
        assert step / 2 - FAST.max_wait <= wait <= step, (probe_waits, seed)
    assert max(probe_waits) <= 20


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"password": None}, "has no API key"),
        ({"host": "http://api.aimlapi.com"}, "refusing plain http://"),
        ({"extra": {"endpoint": "v3"}}, "endpoint='v3'"),
    ],
    ids=["no-key", "plain-http", "bad-endpoint"],
)
def test_bad_connections_fail_before_any_request(emulator, connection, sleeps, fields, message):
    connection("broken", **fields)
    with pytest.raises(KlingFxConnectionConfigError, match=message):
        make_hook(sleeps, "broken").submit(squish(emulator))
    assert emulator.stats()["requests"] == []


def test_missing_connection(emulator, sleeps):
    with pytest.raises(KlingFxConnectionConfigError, match="connection 'does_not_exist' is not defined"):
        make_hook(sleeps, "does_not_exist").submit(squish(emulator))


def test_test_connection_does_not_create_a_generation(emulator, connection, sleeps):
    ok, message = make_hook(sleeps).test_connection()
    assert ok, message
    assert "accepted the key" in message
    connection("bad", password="sk-wrong-key-123456")
    ok, message = make_hook(sleeps, "bad").test_connection()
    assert not ok
    assert "401" in message
    assert emulator.stats()["submissions"] == 0
    assert {r["method"] for r in emulator.stats()["requests"]} == {"GET"}


def test_user_agent_and_key_never_in_repr(emulator, connection, sleeps):
    hook = make_hook(sleeps)
    hook.submit(squish(emulator))
    assert API_KEY not in repr(hook) and API_KEY not in repr(hook.settings) and API_KEY not in str(vars(hook))


def test_worker_wait_follows_the_connections_adaptive_schedule(emulator, connection):
    connection("kfx", extra={"poll_schedule": "adaptive", "expected_seconds": 2})
    # The wait's clock moves by the whole sleep; real time by at most 50 ms of it.
    sleep = FakeTime(real=0.05)
    hook = KlingFxHook("kfx", retry_policy=FAST, sleep=sleep, clock=sleep.clock)
    gen_id = hook.submit(squish(emulator)).id
    generation = hook.wait_for_generation(gen_id, poll_interval=0.1, timeout=60, submitted_at=sleep.clock())
    assert generation.is_completed
    first, *dense = sleep.calls
    assert first == pytest.approx(1.64, abs=0.01)
    assert all(w == pytest.approx(0.07) for w in dense)


def test_a_slow_poll_on_the_worker_never_runs_past_the_deadline(emulator, connection, sleeps):
    """The worker-side twin of the trigger's test: requests are cut at the wait's deadline."""
    hook = KlingFxHook(retry_policy=FAST, sleep=sleeps)  # the connection's 30 s read timeout
    gen_id = hook.submit(squish(emulator)).id
    emulator.set_faults(faults({"action": "slow", "route": "fetch", "delay": 5, "times": -1}))
    started = time.monotonic()
    with pytest.raises(KlingFxTimeoutError, match=gen_id):
        hook.wait_for_generation(gen_id, poll_interval=0.05, timeout=1.0)
    assert time.monotonic() - started < 4.5  # not the 5 s of even a single slow answer


def test_the_connection_port_is_used_when_the_base_url_names_none(emulator, connection, sleeps):
    port = int(emulator.url.rsplit(":", 1)[1])
    connection("kfx", host="http://127.0.0.1", port=port)
    assert make_hook(sleeps, "kfx").submit(squish(emulator)).id
    connection("clash", host=f"http://127.0.0.1:{port}", port=port + 1)
    with pytest.raises(KlingFxConnectionConfigError, match=f"names port {port} but the port field says"):
        make_hook(sleeps, "clash").submit(squish(emulator))
