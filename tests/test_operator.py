"""The operator's own decisions against the emulator: validation before HTTP, reattaching on retry."""

from __future__ import annotations

import re
from typing import Any

import pytest

from airflow_provider_klingfx._compat import AirflowException, AirflowFailException, AirflowTaskTimeout
from airflow_provider_klingfx.domain import (
    EffectRequest,
    KlingFxAPIError,
    KlingFxAuthError,
    KlingFxConnectionConfigError,
    KlingFxError,
    KlingFxGenerationFailedError,
    KlingFxInvalidInputError,
    KlingFxRetryWouldResubmitError,
    KlingFxTimeoutError,
)
from airflow_provider_klingfx.media import KlingFxDownloadError
from airflow_provider_klingfx.operators.klingfx import (
    STATE_STORE_KEY,
    KlingFxEffectOperator,
    raise_for_event,
)
from tests.conftest import faults
from tests.test_hook import hug, make_hook, squish


class StateStore:
    """The interface of Airflow 3.3's ``context["task_state_store"]``, in memory."""

    def __init__(self, **values: Any) -> None:
        self.values = dict(values)

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def set(self, key: str, value: Any) -> None:
        self.values[key] = value


def operator(**kwargs: Any) -> KlingFxEffectOperator:
    return KlingFxEffectOperator(
        task_id="t", effect_scene="squish", image_urls="https://example.com/a.png", **kwargs
    )


def wait_until_terminal(hook, gen_id: str) -> None:
    hook.wait_for_generation(gen_id, poll_interval=0.05, timeout=30)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"poll_interval": 0}, "poll_interval must be positive"), ({"timeout": -1}, "timeout must be positive")],
)
def test_bad_numbers_fail_at_dag_parse_time(kwargs, message):
    with pytest.raises(KlingFxInvalidInputError, match=message):
        operator(**kwargs)


def test_template_fields_are_the_documented_ones():
    assert tuple(KlingFxEffectOperator.template_fields) == (
        "effect_scene",
        "image_urls",
        "duration",
        "model",
        "output_path",
        "allowed_photo_locations",
        "generation_registry",
    )
    assert operator().deferrable is True


def stored(gen_id: str, request, **extra: Any) -> dict[str, Any]:
    """The task_state_store of a task instance whose earlier try submitted ``request`` as ``gen_id``."""
    record = {"generation_id": gen_id, "submitted_at": 1000.0, "request": request.fingerprint(), **extra}
    return {"task_state_store": StateStore(**{STATE_STORE_KEY: record})}


def test_reattaches_to_a_running_or_completed_generation(emulator, connection, sleeps):
    hook = make_hook(sleeps)
    request = squish(emulator)
    gen_id = hook.submit(request).id
    context = stored(gen_id, request)
    assert operator()._reattach(context, hook, request)["generation_id"] == gen_id  # still running
    wait_until_terminal(hook, gen_id)
    record = operator()._reattach(context, hook, request)  # completed: its video is reused
    assert (record["generation_id"], record["submitted_at"]) == (gen_id, 1000.0)


@pytest.mark.parametrize(
    "change",
    [
        {"effect_scene": "expansion"},
        {"duration": 10},
        {"model": "klingai/kling-video-v1.6-pro-effects"},
        {"image_urls": "other.png"},
    ],
    ids=["scene", "duration", "model", "photo"],
)
def test_a_changed_request_is_submitted_anew_not_reattached(emulator, connection, sleeps, capfd, change):
    hook = make_hook(sleeps)
    before = squish(emulator)
    gen_id = hook.submit(before).id
    fields = {
        "effect_scene": before.effect_scene,
        "image_urls": list(before.image_urls),
        "duration": before.duration,
        "model": before.model,
    }
    if change.get("image_urls"):
        change = {"image_urls": f"{emulator.url}/samples/person-2.png"}
    after = EffectRequest.build(**(fields | change))
    assert operator()._reattach(stored(gen_id, before), hook, after) is None
    out = capfd.readouterr().out
    assert f"Not reusing generation {gen_id} from an earlier try: the request changed" in out


def test_two_photos_swapped_are_a_different_request(emulator):
    left, right = f"{emulator.url}/samples/person-1.png", f"{emulator.url}/samples/person-2.png"
    assert (
        EffectRequest.build("hug", [left, right]).fingerprint()
        != EffectRequest.build("hug", [right, left]).fingerprint()
    )


def test_a_record_without_fingerprint_is_not_reused(emulator, connection, sleeps):
    hook = make_hook(sleeps)
    request = squish(emulator)
    gen_id = hook.submit(request).id
    context = {"task_state_store": StateStore(**{STATE_STORE_KEY: {"generation_id": gen_id}})}
    assert operator()._reattach(context, hook, request) is None


def test_submits_afresh_when_the_stored_generation_failed_or_is_unknown(emulator, connection, sleeps):
    hook = make_hook(sleeps)
    request = hug(emulator, "landscape-noface.png")
    failed = hook.submit(request).id
    with pytest.raises(Exception, match="Could not detect face"):
        wait_until_terminal(hook, failed)
    for gen_id in (failed, "gone:kling-video/v1.6/standard/effects"):
        assert operator()._reattach(stored(gen_id, request), hook, request) is None


def test_a_flaky_api_never_turns_a_reattach_into_a_second_payment(emulator, connection, sleeps):
    hook = make_hook(sleeps)
    request = squish(emulator)
    gen_id = hook.submit(request).id
    emulator.set_faults(faults({"action": "status", "status": 503, "route": "fetch", "times": -1}))
    with pytest.raises(KlingFxAPIError, match="503"):
        operator()._reattach(stored(gen_id, request), hook, request)


def test_no_state_store_before_airflow_3_3_means_no_reattach(emulator, connection, sleeps):
    assert operator()._reattach({}, make_hook(sleeps), squish(emulator)) is None


@pytest.mark.parametrize(
    ("event", "error", "fields", "words"),
    [
        (
            {"status": "timeout", "generation_id": "g", "waited_seconds": 30, "last_status": "generating"},
            KlingFxTimeoutError,
            {"generation_id": "g", "waited_seconds": 30.0, "last_status": "generating"},
            "within 30s",
        ),
        (
            {"status": "error", "generation_id": "g", "error_kind": "generation_failed", "reason": "no face"},
            KlingFxGenerationFailedError,
            {"generation_id": "g", "reason": "no face", "error_type": None},
            "failed at the vendor: no face",
        ),
        (
            {
                "status": "error",
                "generation_id": "g",
                "error_kind": "auth",
                "message": "m",
                "status_code": 401,
            },
            KlingFxAuthError,
            {"status_code": 401, "vendor_message": "m", "request_id": None, "method": "GET", "path": ""},
            "answered 401",
        ),
        (
            {
                "status": "error",
                "generation_id": "g",
                "error_kind": "api",
                "message": "AI/ML API answered 503 ...",
                "status_code": 503,
                "vendor_message": "Service Unavailable",
                "request_id": "req-1",
                "path": "/v2/video/generations",
            },
            KlingFxAPIError,
            {
                "status_code": 503,
                "vendor_message": "Service Unavailable",
                "request_id": "req-1",
                "method": "GET",
                "path": "/v2/video/generations",
            },
            "answered 503 to GET /v2/video/generations: Service Unavailable (request id req-1)",
        ),
        (
            {
                "status": "error",
                "generation_id": "g",
                "error_kind": "connection_config",
                "message": "connection 'x' is not defined",
            },
            KlingFxConnectionConfigError,
            {},
            "connection 'x' is not defined",
        ),
        (
            {
                "status": "error",
                "generation_id": "g",
                "error_kind": "transport",
                "message": "dropped",
            },
            KlingFxError,
            {},
            "polling generation g failed: dropped",
        ),
        (
            {"status": "weird", "generation_id": "g"},
            KlingFxError,
            {},
            "unexpected trigger event status 'weird' for generation g",
        ),
        (None, KlingFxError, {}, "unexpected trigger event: None"),
    ],
    ids=[
        "timeout",
        "vendor-failure",
        "auth",
        "api-error",
        "connection",
        "no-status-code",
        "unknown-status",
        "no-event",
    ],
)
def test_trigger_events_become_typed_errors(event, error, fields, words):
    with pytest.raises(error, match=re.escape(words)) as info:
        raise_for_event(event)
    assert type(info.value) is error  # exactly: a subclass would fail or retry the task differently
    assert {name: getattr(info.value, name) for name in fields} == fields


class TaskInstance:
    """The little of a task instance the operator reads when Airflow resumes it."""

    task_id = "t"
    map_index = -1

    def __init__(self, generation_id: str) -> None:
        self.generation_id = generation_id

    def xcom_pull(self, task_ids: str, key: str, map_indexes: int) -> str:
        assert (task_ids, key, map_indexes) == ("t", "generation_id", -1)
        return self.generation_id


@pytest.mark.parametrize(
    ("error", "converted"),
    [
        (KlingFxTimeoutError("g:1", 30.0, "generating"), True),
        (KlingFxDownloadError("g:1", "file:///x.mp4", OSError("disk full")), True),
        (AirflowTaskTimeout("execution_timeout"), True),
        (KlingFxGenerationFailedError("g:1", "no face"), False),
    ],
    ids=["timeout", "download", "execution-timeout", "vendor-failure"],
)
@pytest.mark.parametrize(
    "store",
    [None, StateStore(), StateStore(**{STATE_STORE_KEY: {"generation_id": "g:1"}})],
    ids=["airflow-3.1", "airflow-3.3-not-recorded", "airflow-3.3"],
)
def test_after_payment_a_retryable_failure_fails_for_good_only_unless_a_retry_finds_it(
    error, converted, store
):
    # A retry reattaches only to a generation recorded in task_state_store: without the store (3.1/3.2),
    # or without the record (writing it failed), a retryable failure must not lead to a second payment.
    context = {} if store is None else {"task_state_store": store}
    recorded = store is not None and store.get(STATE_STORE_KEY) is not None
    expected = KlingFxRetryWouldResubmitError if not recorded and converted else type(error)
    with pytest.raises(expected) as info, operator()._paid_generation(context, "g:1"):
        raise error
    if expected is KlingFxRetryWouldResubmitError:
        assert isinstance(info.value, KlingFxRetryWouldResubmitError)
        assert isinstance(info.value, AirflowFailException)  # Airflow fails it without retries
        assert "KlingFxGenerationSensor(generation_id='g:1')" in str(info.value)
        assert info.value.__cause__ is error
    else:
        assert info.value is error


@pytest.mark.parametrize("reason", ["TRIGGER_TIMEOUT", "Trigger failure"])
def test_airflow_failing_a_deferred_task_is_no_second_payment_either(reason):
    """Airflow resumes a task with ``__fail__`` when its defer timeout passes or the trigger crashed."""
    with pytest.raises(KlingFxRetryWouldResubmitError, match="g:7"):
        operator().resume_execution("__fail__", {"error": reason}, {"ti": TaskInstance("g:7")})
    with pytest.raises(KlingFxRetryWouldResubmitError, match="g:7"):  # 3.3+, but nothing recorded
        operator().resume_execution(
            "__fail__", {"error": reason}, {"ti": TaskInstance("g:7"), "task_state_store": StateStore()}
        )
    recorded = StateStore(**{STATE_STORE_KEY: {"generation_id": "g:7"}})
    with pytest.raises(AirflowException, match=reason) as info:
        operator().resume_execution(
            "__fail__", {"error": reason}, {"ti": TaskInstance("g:7"), "task_state_store": recorded}
        )
    assert not isinstance(info.value, KlingFxRetryWouldResubmitError)  # 3.3+: the retry reattaches
