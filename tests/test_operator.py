"""The operator's own decisions against the emulator: validation before HTTP, reattaching on retry."""

from __future__ import annotations

from typing import Any

import pytest

from airflow_provider_klingfx.domain import KlingFxAPIError, KlingFxInvalidInputError
from airflow_provider_klingfx.operators.klingfx import STATE_STORE_KEY, KlingFxEffectOperator, raise_for_event
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
    )
    assert operator().deferrable is True


def test_reattaches_to_a_running_or_completed_generation(emulator, connection, sleeps):
    hook = make_hook(sleeps)
    gen_id = hook.submit(squish(emulator))
    context = {"task_state_store": StateStore(**{STATE_STORE_KEY: {"generation_id": gen_id}})}
    assert operator()._reattach(context, hook) == gen_id  # still running
    wait_until_terminal(hook, gen_id)
    assert operator()._reattach(context, hook) == gen_id  # completed: its video is reused


def test_submits_afresh_when_the_stored_generation_failed_or_is_unknown(emulator, connection, sleeps):
    hook = make_hook(sleeps)
    failed = hook.submit(hug(emulator, "landscape-noface.png"))
    with pytest.raises(Exception, match="Could not detect face"):
        wait_until_terminal(hook, failed)
    for gen_id in (failed, "gone:kling-video/v1.6/standard/effects"):
        context = {"task_state_store": StateStore(**{STATE_STORE_KEY: {"generation_id": gen_id}})}
        assert operator()._reattach(context, hook) is None


def test_a_flaky_api_never_turns_a_reattach_into_a_second_payment(emulator, connection, sleeps):
    hook = make_hook(sleeps)
    gen_id = hook.submit(squish(emulator))
    emulator.set_faults(faults({"action": "status", "status": 503, "route": "fetch", "times": -1}))
    context = {"task_state_store": StateStore(**{STATE_STORE_KEY: {"generation_id": gen_id}})}
    with pytest.raises(KlingFxAPIError, match="503"):
        operator()._reattach(context, hook)


def test_no_state_store_before_airflow_3_3_means_no_reattach(emulator, connection, sleeps):
    assert operator()._reattach({}, make_hook(sleeps)) is None


@pytest.mark.parametrize(
    ("event", "error"),
    [
        (
            {"status": "timeout", "generation_id": "g", "waited_seconds": 30, "last_status": "generating"},
            "within 30s",
        ),
        (
            {"status": "error", "generation_id": "g", "error_kind": "generation_failed", "reason": "no face"},
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
            "answered 401",
        ),
        ({"status": "weird", "generation_id": "g"}, "unexpected trigger event status 'weird'"),
        (None, "unexpected trigger event"),
    ],
    ids=["timeout", "vendor-failure", "auth", "unknown-status", "no-event"],
)
def test_trigger_events_become_typed_errors(event, error):
    with pytest.raises(Exception, match=error):
        raise_for_event(event)
