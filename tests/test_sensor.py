"""The sensor's own decisions: its timeout is a sensor timeout, and one hook serves all its pokes."""

from __future__ import annotations

import pytest

from airflow_provider_klingfx._compat import AirflowSensorTimeout, AirflowSkipException
from airflow_provider_klingfx.sensors.klingfx import KlingFxGenerationSensor, KlingFxSensorTimeout

TIMEOUT_EVENT = {
    "status": "timeout",
    "generation_id": "g:1",
    "waited_seconds": 60,
    "last_status": "generating",
}


def sensor(**kwargs) -> KlingFxGenerationSensor:
    return KlingFxGenerationSensor(task_id="wait", generation_id="g:1", **kwargs)


def test_a_deferred_wait_that_times_out_is_a_sensor_timeout():
    with pytest.raises(KlingFxSensorTimeout, match="g:1 did not finish within 60s") as info:
        sensor().resume_execution("execute_complete", {"event": TIMEOUT_EVENT}, {})
    assert isinstance(info.value, AirflowSensorTimeout)  # no retries, as for every sensor timeout


def test_soft_fail_skips_instead():
    with pytest.raises(AirflowSkipException):
        sensor(soft_fail=True).resume_execution("execute_complete", {"event": TIMEOUT_EVENT}, {})


def test_one_hook_serves_every_poke(emulator, connection):
    waiting = sensor(deferrable=False, poll_interval=0.05)
    assert waiting.hook is waiting.hook
