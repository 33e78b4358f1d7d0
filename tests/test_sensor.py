"""The sensor's own decisions: its timeout is a sensor timeout, and one hook serves all its pokes."""

from __future__ import annotations

import pytest

from airflow_provider_klingfx._compat import AirflowSensorTimeout, AirflowSkipException
from airflow_provider_klingfx.sensors.klingfx import KlingFxGenerationSensor, KlingFxSensorTimeout
from klingfx_emulator import EmulatorConfig, run_emulator_in_thread
from tests.conftest import API_KEY
from tests.support import FakeTime
from tests.test_hook import make_hook, squish
from tests.test_vendor_api import XComSink

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


def test_one_hook_serves_every_poke(connection):
    """The connection is read once, by the first poke: the next pokes reuse the hook's settings
    (here the key is changed after the first poke; a poke that read the connection again would get
    a 401), and each poke is one request, until the generation is done."""
    emulator_time = FakeTime(start=1000.0)  # the emulator's clock: the generation moves on between pokes
    config = EmulatorConfig(api_key=API_KEY, queued_seconds=1, generating_seconds=2, render="off")
    with run_emulator_in_thread(config, clock=emulator_time.clock) as emulator:
        connection(host=emulator.url)
        gen_id = make_hook(FakeTime()).submit(squish(emulator)).id
        waiting = KlingFxGenerationSensor(
            task_id="wait", generation_id=gen_id, deferrable=False, poll_interval=0.05
        )
        assert waiting.hook is waiting.hook
        ti = XComSink()
        assert waiting.poke({"ti": ti}) is False  # queued
        connection(host=emulator.url, password="sk-rotated-after-the-first-poke")
        emulator_time.advance(1.5)
        assert waiting.poke({"ti": ti}) is False  # generating
        emulator_time.advance(2)
        done = waiting.poke({"ti": ti})
        fetches = [r for r in emulator.stats()["requests"] if r["method"] == "GET"]
    assert done and done.xcom_value == ti.pushed["video"]["url"]
    assert [r["status"] for r in fetches] == [200, 200, 200]
    assert {r["query_generation_id"] for r in fetches} == {gen_id}
