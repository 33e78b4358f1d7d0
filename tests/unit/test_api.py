"""The pure wire-protocol pieces and the retry policy shared by the sync and async paths."""

from __future__ import annotations

import json

import pytest
import tenacity

from airflow_provider_klingfx import _api
from airflow_provider_klingfx._polling import GenerationWatch, adaptive_poll_delay
from airflow_provider_klingfx._retry import RetryPolicy
from airflow_provider_klingfx.domain import (
    Generation,
    KlingFxAmbiguousSubmissionError,
    KlingFxAPIError,
    KlingFxAuthError,
    KlingFxConnectionConfigError,
    KlingFxMalformedResponseError,
    KlingFxTransportError,
)

KEY = "sk-test-0123456789abcdef"


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        (None, "https://api.aimlapi.com"),
        ("", "https://api.aimlapi.com"),
        ("api.aimlapi.com", "https://api.aimlapi.com"),
        ("https://api.aimlapi.com/", "https://api.aimlapi.com"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("http://localhost:9", "http://localhost:9"),
        ("http://[::1]:9", "http://[::1]:9"),
    ],
)
def test_base_url_normalisation(host, expected):
    assert _api.normalise_base_url(host) == expected


@pytest.mark.parametrize(
    ("host", "message"),
    [
        ("http://api.aimlapi.com", "refusing plain http:// to api.aimlapi.com"),
        ("http://10.0.0.5:8080", "refusing plain http://"),
        ("ftp://api.aimlapi.com", "must be a base URL"),
        ("https://user:pw@api.aimlapi.com", "must not embed credentials"),
        ("https://api.aimlapi.com/v2/video/generations", "without a path"),
    ],
)
def test_unsafe_or_unusable_hosts_are_refused(host, message):
    with pytest.raises(KlingFxConnectionConfigError, match=message):
        _api.normalise_base_url(host)


def test_connection_settings():
    settings = _api.settings_from_connection("c", None, None, KEY, {"endpoint": "legacy"})
    assert settings.create_url == "https://api.aimlapi.com/v2/generate/video/kling/generation"
    assert settings.fetch_url("aa:kling-video/v1.6/standard/effects") == (
        "https://api.aimlapi.com/v2/generate/video/kling/generation"
        "?generation_id=aa%3Akling-video%2Fv1.6%2Fstandard%2Feffects"
    )
    assert KEY not in repr(settings) and KEY not in str(settings)
    default = _api.settings_from_connection("c", "https://h.example", None, KEY, {})
    assert default.create_url == "https://h.example/v2/video/generations"


@pytest.mark.parametrize(
    ("password", "extra", "message"),
    [
        (None, {}, "has no API key"),
        ("  ", {}, "has no API key"),
        (KEY, {"endpoint": "v3"}, "endpoint='v3'"),
        (KEY, {"poll_schedule": "smart"}, "poll_schedule='smart' in extra; use 'fixed' or 'adaptive'"),
        (KEY, {"expected_seconds": "0"}, "expected_seconds='0' in extra; give a positive number"),
        (KEY, {"poll_coordination": "global"}, "poll_coordination='global' in extra; use 'shared' or"),
        (KEY, {"max_polls_per_second": "0"}, "max_polls_per_second='0' in extra; give a positive number"),
        (KEY, {"max_polls_per_second": "lots"}, "max_polls_per_second='lots' in extra"),
    ],
)
def test_bad_connection_settings(password, extra, message):
    with pytest.raises(KlingFxConnectionConfigError, match=message):
        _api.settings_from_connection("c", None, None, password, extra)


def test_poll_schedule_comes_from_the_connection_and_defaults_to_fixed():
    default = _api.settings_from_connection("c", None, None, KEY, {})
    assert (default.poll_schedule, default.expected_seconds) == ("fixed", 120.0)
    adaptive = _api.settings_from_connection(
        "c", None, None, KEY, {"poll_schedule": " Adaptive ", "expected_seconds": "240"}
    )
    assert (adaptive.poll_schedule, adaptive.expected_seconds) == ("adaptive", 240.0)


def test_poll_coordination_is_shared_by_default_and_the_cap_optional():
    default = _api.settings_from_connection("c", None, None, KEY, {})
    assert (default.poll_coordination, default.max_polls_per_second) == ("shared", None)
    capped = _api.settings_from_connection(
        "c", None, None, KEY, {"poll_coordination": "Per_Trigger", "max_polls_per_second": "12.5"}
    )
    assert (capped.poll_coordination, capped.max_polls_per_second) == ("per_trigger", 12.5)
    # The 3.1 form sends an empty string for an empty field: no cap.
    assert (
        _api.settings_from_connection("c", None, None, KEY, {"max_polls_per_second": ""}).max_polls_per_second
        is None
    )


def test_adaptive_schedule_is_sparse_early_dense_near_the_expected_time_then_backs_off():
    def delay(elapsed: float) -> float:
        return adaptive_poll_delay(elapsed, expected_seconds=120, interval=10)

    assert delay(2.0) == pytest.approx(96.4)  # first look at 2 s, next at 82 % of 120 s
    assert delay(98.4) == delay(150.0) == delay(179.9) == pytest.approx(7.0)
    assert delay(190.0) == pytest.approx(9.5)
    assert delay(1000.0) == 30.0
    # Stateless: a trigger re-created mid-wait (triggerer restart) continues the same schedule.
    watch = GenerationWatch("g", deadline=1e9, poll_interval=10, submitted_at=0.0, schedule="adaptive")
    pending = Generation.from_api({"id": "g", "status": "generating"})
    assert [watch.observe(pending, t).sleep for t in (2.0, 98.4, 105.4)] == pytest.approx([96.4, 7.0, 7.0])
    fixed = GenerationWatch("g", deadline=1e9, poll_interval=10, submitted_at=0.0)
    assert fixed.observe(pending, 2.0).sleep == 10.0


def test_headers_carry_key_agent_and_trace_id():
    settings = _api.settings_from_connection("c", None, None, KEY, {})
    headers = _api.build_headers(settings, client_request_id="d:r:t:-1:1")
    assert headers["Authorization"] == f"Bearer {KEY}"
    assert headers["User-Agent"].startswith("airflow-provider-klingfx/")
    assert headers["X-Client-Request-Id"] == "d:r:t:-1:1"


def test_api_key_never_shows():
    key = _api.ApiKey(KEY)
    assert KEY not in repr(key) and KEY not in str(key) and KEY not in f"{key}"
    import pickle

    with pytest.raises(TypeError):
        pickle.dumps(key)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("3", 3.0),
        ("0", 0.0),
        ("1000", _api.MAX_RETRY_AFTER),
        ("Thu, 01 Jan 2026 00:00:10 GMT", 10.0),
        ("soon", None),
        (None, None),
    ],
)
def test_retry_after(value, seconds):
    assert _api.parse_retry_after(value, now=1767225600.0) == seconds


def test_error_envelope_becomes_typed_error_with_vendor_words():
    body = json.dumps(
        {
            "message": "Unauthorized",
            "path": "/v2/video/generations",
            "requestId": "req-1",
            "statusCode": 401,
            "timestamp": "t",
        }
    ).encode()
    err = _api.error_from_response(401, body, {}, method="POST", path="/v2/video/generations")
    assert isinstance(err, KlingFxAuthError)
    assert (err.status_code, err.vendor_message, err.request_id) == (401, "Unauthorized", "req-1")
    assert str(err).startswith(
        "AI/ML API answered 401 to POST /v2/video/generations: Unauthorized (request id req-1)"
    )
    validation = json.dumps(
        {"message": "Body validation error!", "errors": [{"path": "effect_scene", "message": "bad"}]}
    ).encode()
    err = _api.error_from_response(400, validation, {"X-Request-Id": "r2"}, method="POST", path="/p")
    assert type(err) is KlingFxAPIError
    assert err.vendor_message == "Body validation error! (bad (effect_scene))"
    assert err.request_id == "r2"
    err = _api.error_from_response(
        502, b"<html>Bad gateway</html>", {"Retry-After": "2"}, method="GET", path="/p"
    )
    assert (err.vendor_message, err.retry_after) == ("<html>Bad gateway</html>", 2.0)


def test_garbage_200_is_malformed():
    with pytest.raises(KlingFxMalformedResponseError, match="not JSON"):
        _api.parse_answer(200, b"<html>oops</html>", {}, method="GET", path="/p")


def _api_error(status):
    return KlingFxAPIError(status, "x")


@pytest.mark.parametrize(
    ("exc", "read", "create"),
    [
        (KlingFxTransportError("refused", reached_server=False), True, True),
        (KlingFxTransportError("reset", reached_server=True), True, False),
        (_api_error(429), True, True),
        (_api_error(503), True, True),
        (_api_error(500), True, False),
        (_api_error(502), True, False),
        (_api_error(504), True, False),
        (_api_error(400), False, False),
        (_api_error(404), False, False),
        (KlingFxAuthError(401, "x"), False, False),
        (KlingFxAuthError(403, "x"), False, False),
        (KlingFxMalformedResponseError("garbage"), True, False),
    ],
    ids=["refused", "reset", "429", "503", "500", "502", "504", "400", "404", "401", "403", "garbage"],
)
def test_retry_decisions(exc, read, create):
    assert _api.is_retryable(exc, idempotent=True) is read
    assert _api.is_retryable(exc, idempotent=False) is create


def test_ambiguous_create_failures_become_no_retry_errors():
    ambiguous = _api.submission_failure(KlingFxTransportError("reset", reached_server=True))
    assert isinstance(ambiguous, KlingFxAmbiguousSubmissionError)
    assert "not resubmitting" in str(ambiguous)
    safe = _api_error(503)
    assert _api.submission_failure(safe) is safe
    bad_request = _api_error(400)
    assert _api.submission_failure(bad_request) is bad_request


def test_retry_policy_honours_retry_after_and_caps_backoff():
    sleeps: list[float] = []
    calls = iter([KlingFxAPIError(429, "slow down", retry_after=7.0), _api_error(503), _api_error(503), None])

    def call():
        exc = next(calls)
        if exc:
            raise exc
        return "ok"

    policy = RetryPolicy(max_attempts=5, initial_wait=1.0, max_wait=4.0)
    assert policy.retrying(idempotent=True, what="GET", sleep=sleeps.append)(call) == "ok"
    assert sleeps[0] == 7.0
    assert all(0 <= s <= 4.0 for s in sleeps[1:])
    assert len(sleeps) == 3


def test_retry_policy_gives_up_and_reraises_the_typed_error():
    sleeps: list[float] = []

    def call():
        raise _api_error(500)

    with pytest.raises(KlingFxAPIError, match="500"):
        RetryPolicy(max_attempts=3).retrying(idempotent=True, what="GET", sleep=sleeps.append)(call)
    assert len(sleeps) == 2


def test_creates_are_not_retried_after_an_ambiguous_failure():
    sleeps: list[float] = []
    attempts = []

    def call():
        attempts.append(1)
        raise KlingFxTransportError("reset", reached_server=True)

    with pytest.raises(KlingFxTransportError):
        RetryPolicy().retrying(idempotent=False, what="POST", sleep=sleeps.append)(call)
    assert (len(attempts), sleeps) == (1, [])


async def test_async_retrying_matches_sync():
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)

    calls = iter([KlingFxTransportError("refused", reached_server=False), None])

    async def call():
        exc = next(calls)
        if exc:
            raise exc
        return "ok"

    retrying = RetryPolicy().async_retrying(idempotent=False, what="POST", sleep=sleep)
    assert isinstance(retrying, tenacity.AsyncRetrying)
    assert await retrying(call) == "ok"
    assert len(sleeps) == 1


class Script:
    """A call that raises the scripted errors in turn, then answers "ok"; counts its attempts."""

    def __init__(self, *errors: Exception | None) -> None:
        self.errors = list(errors)
        self.attempts = 0

    def __call__(self) -> str:
        self.attempts += 1
        exc = self.errors.pop(0) if self.errors else None
        if exc:
            raise exc
        return "ok"

    async def acall(self) -> str:
        return self()


#: The two ways to run a call under the policy, sync and async. Both must behave alike.
MODES = ["sync", "async"]


async def run_policy(mode: str, policy: RetryPolicy, script: Script, sleeps: list[float], **kwargs) -> str:
    """Run ``script`` under ``policy`` in one of :data:`MODES`."""

    async def asleep(s: float) -> None:
        sleeps.append(s)

    if mode == "sync":
        return policy.retrying(sleep=sleeps.append, **kwargs)(script)
    return await policy.async_retrying(sleep=asleep, **kwargs)(script.acall)


@pytest.mark.parametrize("mode", MODES)
async def test_policy_succeeding_at_once_makes_one_attempt(mode):
    sleeps: list[float] = []
    script = Script()
    assert await run_policy(mode, RetryPolicy(), script, sleeps, idempotent=True, what="GET") == "ok"
    assert (script.attempts, sleeps) == (1, [])


@pytest.mark.parametrize("mode", MODES)
async def test_policy_honours_retry_after_and_logs_each_attempt(mode, caplog):
    sleeps: list[float] = []
    script = Script(KlingFxAPIError(429, "slow down", retry_after=7.0), *[_api_error(503)] * 5)
    policy = RetryPolicy(max_attempts=3, initial_wait=0.01, max_wait=2.0)  # Retry-After capped at 8 s
    with pytest.raises(KlingFxAPIError, match="503"):
        await run_policy(mode, policy, script, sleeps, idempotent=True, what="GET /x")
    assert script.attempts == 3
    assert len(sleeps) == 2
    assert sleeps[0] == 7.0
    assert "GET /x failed (attempt 1 of 3)" in caplog.text


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("deadline", "attempts", "slept"),
    [(1005.0, 1, []), (1010.0, 2, [7.0]), (None, 2, [7.0])],
    ids=["wait-would-cross-deadline", "wait-fits", "no-deadline"],
)
async def test_policy_never_waits_past_the_deadline(mode, deadline, attempts, slept):
    """A poll's retries belong to a wait with a deadline: a back-off that would end after it is not slept."""
    sleeps: list[float] = []
    script = Script(KlingFxAPIError(429, "slow down", retry_after=7.0))
    policy = RetryPolicy(max_attempts=5, initial_wait=0.01, max_wait=2.0)
    kwargs = {"idempotent": True, "what": "GET /x", "deadline": deadline, "clock": lambda: 1000.0}
    if deadline == 1005.0:
        with pytest.raises(KlingFxAPIError, match="429"):
            await run_policy(mode, policy, script, sleeps, **kwargs)
    else:
        assert await run_policy(mode, policy, script, sleeps, **kwargs) == "ok"
    assert (script.attempts, sleeps) == (attempts, slept)


@pytest.mark.parametrize("mode", MODES)
async def test_policy_recovers_and_never_resends_an_ambiguous_create(mode):
    sleeps: list[float] = []
    policy = RetryPolicy(initial_wait=0.01, max_wait=0.05)
    refused = Script(KlingFxTransportError("refused", reached_server=False))
    reset = Script(KlingFxTransportError("reset", reached_server=True))
    assert await run_policy(mode, policy, refused, sleeps, idempotent=False, what="POST") == "ok"
    with pytest.raises(KlingFxTransportError):
        await run_policy(mode, policy, reset, sleeps, idempotent=False, what="POST")
    assert (refused.attempts, reset.attempts, len(sleeps)) == (2, 1, 1)


def test_watch_logs_status_changes_not_every_poll_and_times_out():
    watch = GenerationWatch("g", deadline=100.0, poll_interval=10.0, submitted_at=0.0)
    queued = Generation.from_api({"id": "g", "status": "queued"})
    generating = Generation.from_api({"id": "g", "status": "generating"})
    step = watch.observe(queued, 1.0)
    assert [m for _, m in step.messages] == ["Generation g is queued after 1s"]
    assert step.sleep == 10.0
    assert watch.observe(queued, 11.0).messages == []
    assert [m for _, m in watch.observe(generating, 21.0).messages] == [
        "Generation g is generating after 21s"
    ]
    step = watch.observe(KlingFxTransportError("reset", reached_server=True), 31.0)
    assert "waiting out a transient API error (1 in a row, 69s left" in step.messages[0][1]
    assert watch.observe(generating, 95.0).sleep == 5.0
    assert watch.observe(generating, 100.0).timed_out


def test_watch_raises_errors_waiting_cannot_fix():
    watch = GenerationWatch("g", deadline=100.0, poll_interval=10.0)
    with pytest.raises(KlingFxAuthError):
        watch.observe(KlingFxAuthError(401, "Unauthorized"), 1.0)


def test_a_per_trigger_watch_backs_off_its_own_polls_and_a_shared_one_leaves_it_to_the_gate():
    # per_trigger: no gate paces the polls, so the watch is the one layer that answers a failure:
    # exponential from the poll interval, equal jitter (a fixed source here), capped, at least
    # Retry-After; an answer resets it. shared: the gate answers, the watch keeps its interval.
    down = KlingFxAPIError(503, "unavailable", method="GET", path="/p")
    busy = KlingFxAPIError(429, "slow down", method="GET", path="/p", retry_after=45.0)
    pending = Generation.from_api({"id": "g", "status": "generating"})
    alone = GenerationWatch(
        "g", deadline=1e9, poll_interval=5, submitted_at=0.0, backoff=True, random=lambda: 1.0
    )
    assert [alone.observe(down, t).sleep for t in range(5)] == [5, 10, 20, 40, 60]
    assert alone.observe(busy, 5.0).sleep == 60  # the cap is above Retry-After here
    assert alone.observe(pending, 6.0).sleep == 5  # answered: back to the interval
    assert alone.observe(busy, 7.0).sleep == 45  # one failure: 5 s, but the API asked for 45
    halved = GenerationWatch(
        "g", deadline=1e9, poll_interval=5, submitted_at=0.0, backoff=True, random=lambda: 0.0
    )
    assert [halved.observe(down, t).sleep for t in range(3)] == [2.5, 5, 10]
    shared = GenerationWatch("g", deadline=1e9, poll_interval=5, submitted_at=0.0)
    assert [shared.observe(down, t).sleep for t in range(5)] == [5] * 5


def test_the_watch_for_a_connection_backs_off_only_without_the_shared_gate():
    shared = _api.settings_from_connection("c", None, None, KEY, {})
    alone = _api.settings_from_connection("c", None, None, KEY, {"poll_coordination": "per_trigger"})
    assert not GenerationWatch.for_settings(shared, "g", deadline=1.0, poll_interval=1.0).backoff
    assert GenerationWatch.for_settings(alone, "g", deadline=1.0, poll_interval=1.0).backoff
