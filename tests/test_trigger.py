"""The real trigger against the emulator, with an injected sleep so the tests do not wait."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest

from airflow_provider_klingfx.triggers.klingfx import KlingFxGenerationTrigger
from tests.airflow_harness import REPO
from tests.conftest import API_KEY, configured, faults
from tests.support import FakeTime
from tests.test_hook import FAST, hug, make_hook, squish


async def events_of(trigger: KlingFxGenerationTrigger) -> list[dict]:
    return [event.payload async for event in trigger.run()]


def submit(emulator, request) -> str:
    hook = make_hook(FakeTime())
    try:
        return hook.submit(request).id
    finally:
        hook.close()


def make_trigger(
    gen_id: str,
    fake: FakeTime,
    *,
    within: float = 60,
    conn_id: str = "klingfx_default",
    clock: Callable[[], float] | None = None,
) -> KlingFxGenerationTrigger:
    """A trigger polling every 0.05 s on ``fake``'s sleeps and clock (or on ``clock``), its deadline
    ``within`` seconds away."""
    clock = clock or fake.clock
    return KlingFxGenerationTrigger(
        generation_id=gen_id,
        deadline=clock() + within,
        klingfx_conn_id=conn_id,
        poll_interval=0.05,
        submitted_at=clock(),
        sleep=fake.asleep,
        clock=clock,
    )


def polling() -> FakeTime:
    """Virtual time that really sleeps 50 ms of each wait: for waits on the session emulator, whose
    generations finish in real time (0.25 s), polled a few times instead of in a tight loop."""
    return FakeTime(real=0.05)


def test_serialize_round_trip_holds_only_plain_values_and_no_key():
    trigger = KlingFxGenerationTrigger(
        "g:kling-video/v1.6/standard/effects", deadline=1800000000.5, poll_interval=7
    )
    path, kwargs = trigger.serialize()
    assert path == "airflow_provider_klingfx.triggers.klingfx.KlingFxGenerationTrigger"
    assert kwargs == {
        "generation_id": "g:kling-video/v1.6/standard/effects",
        "deadline": 1800000000.5,
        "klingfx_conn_id": "klingfx_default",
        "poll_interval": 7.0,
        "submitted_at": None,
        "usage": None,
    }
    json.dumps(kwargs)  # plain JSON, as Airflow stores it
    module, name = path.rsplit(".", 1)
    again = getattr(importlib.import_module(module), name)(**kwargs)
    assert again.serialize() == (path, kwargs)
    assert API_KEY not in repr(trigger)


async def test_success_event_carries_the_video(emulator, connection):
    gen_id = submit(emulator, squish(emulator))
    events = await events_of(make_trigger(gen_id, polling()))
    assert len(events) == 1
    event = events[0]
    assert event["status"] == "success"
    assert event["generation_id"] == gen_id
    assert event["video"]["url"].startswith(emulator.url)
    assert event["video"]["content_type"] == "video/mp4"
    assert event["usage"]["credits_used"] == 120000.0
    assert event["usage"]["usd_spent"] > 0
    assert event["polls"] >= 2
    assert API_KEY not in json.dumps(event)


async def test_status_changes_are_logged_once_each(emulator, connection, capfd):
    gen_id = submit(emulator, squish(emulator))
    await events_of(make_trigger(gen_id, polling()))
    out = capfd.readouterr().out
    lines = [line for line in out.splitlines() if f"Generation {gen_id} is " in line]
    statuses = [line.split(f"Generation {gen_id} is ")[1].split()[0] for line in lines]
    assert statuses[-1] == "completed"
    assert len(statuses) == len(set(statuses)), statuses  # one line per change, not per poll
    assert all(" after " in line for line in lines)


@pytest.mark.parametrize("shape", ["detail", "name_message"])
async def test_vendor_failure_event_has_the_reason(emulator, connection, shape):
    with configured(emulator, error_shape=shape):
        gen_id = submit(emulator, hug(emulator, "landscape-noface.png"))
        (event,) = await events_of(make_trigger(gen_id, polling()))
    assert event["status"] == "error"
    assert event["error_kind"] == "generation_failed"
    assert "Could not detect face in the image" in event["reason"]
    assert event["generation_id"] == gen_id


async def test_deadline_in_the_past_gives_a_timeout_event_after_one_look(emulator, connection, sleeps):
    with configured(emulator, generating_seconds=3600):
        gen_id = submit(emulator, squish(emulator))
        (event,) = await events_of(make_trigger(gen_id, sleeps, within=-1))
    assert event["status"] == "timeout"
    assert event["generation_id"] == gen_id
    assert event["last_status"] in {"queued", "generating"}
    assert sleeps.calls == []


async def test_deadline_is_enforced_with_an_injected_clock(emulator, connection):
    sleeps = FakeTime(start=5000.0)
    with configured(emulator, generating_seconds=3600):
        gen_id = submit(emulator, squish(emulator))
        trigger = KlingFxGenerationTrigger(
            gen_id,
            deadline=5000.0 + 45,
            poll_interval=10,
            submitted_at=5000.0,
            sleep=sleeps.asleep,
            clock=sleeps.clock,
        )
        (event,) = await events_of(trigger)
    assert event["status"] == "timeout"
    assert event["waited_seconds"] == 45.0
    assert sleeps.calls == [10.0, 10.0, 10.0, 10.0, 5.0]


async def test_bad_key_gives_an_auth_error_event(emulator, connection, sleeps):
    gen_id = submit(emulator, squish(emulator))
    connection("bad", password="sk-wrong-key-123456")
    (event,) = await events_of(make_trigger(gen_id, sleeps, conn_id="bad"))
    assert event["status"] == "error"
    assert event["error_kind"] == "auth"
    assert event["status_code"] == 401
    assert "sk-wrong-key" not in json.dumps(event)


async def test_missing_connection_gives_an_error_event(emulator, sleeps):
    (event,) = await events_of(make_trigger("g", sleeps, conn_id="no_such_conn"))
    assert event["error_kind"] == "connection_config"
    assert "no_such_conn" in event["message"]


async def test_transient_storm_is_waited_out_until_the_deadline(emulator, connection, caplog):
    sleep = polling()
    gen_id = submit(emulator, squish(emulator))
    emulator.set_faults(faults({"action": "status", "status": 502, "route": "fetch", "times": 12}))
    hook_policy = FAST  # each fetch makes FAST.max_attempts attempts; 12 failures span 3 polls
    assert hook_policy.max_attempts == 4
    # Past 5 failures in a row the API counts as down: probes, 1 s doubling up to 20 s (virtual time).
    trigger = KlingFxGenerationTrigger(
        generation_id=gen_id,
        deadline=sleep.clock() + 600,
        poll_interval=0.05,
        submitted_at=sleep.clock(),
        sleep=sleep.asleep,
        clock=sleep.clock,
    )
    (event,) = await events_of(trigger)
    assert event["status"] == "success"
    # 5 failures open the outage, then 7 failed probes and one that gets through: nothing else.
    fetches = [r["status"] for r in emulator.stats()["requests"] if r["method"] == "GET"]
    assert fetches[:13] == [502] * 12 + [200]
    assert "8 probe(s) sent" in caplog.text


async def test_storm_past_the_deadline_ends_in_timeout_naming_the_last_error(emulator, connection):
    gen_id = submit(emulator, squish(emulator))
    emulator.set_faults(faults({"action": "status", "status": 503, "route": "fetch", "times": -1}))
    (event,) = await events_of(make_trigger(gen_id, polling(), within=0.3))
    assert event["status"] == "timeout"
    assert "503" in event["last_error"]


async def test_cancelled_trigger_is_recreated_from_serialize_and_keeps_its_deadline(emulator, connection):
    sleep = polling()
    with configured(emulator, generating_seconds=1.0):
        gen_id = submit(emulator, squish(emulator))
        deadline = sleep.clock() + 60
        polled = asyncio.Event()

        async def sleep_after_a_poll(seconds: float) -> None:
            polled.set()  # the first poll is done: the trigger waits for the next
            await sleep.asleep(seconds)

        first = KlingFxGenerationTrigger(
            gen_id, deadline=deadline, poll_interval=0.05, sleep=sleep_after_a_poll, clock=sleep.clock
        )
        task = asyncio.create_task(events_of(first))
        await polled.wait()
        assert [r["status"] for r in emulator.stats()["requests"] if r["method"] == "GET"] == [200]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        _, kwargs = first.serialize()
        assert kwargs["deadline"] == deadline
        second = KlingFxGenerationTrigger(**kwargs, sleep=sleep.asleep, clock=sleep.clock)
        (event,) = await events_of(second)
    assert event["status"] == "success"
    assert emulator.stats()["submissions"] == 1


async def test_adaptive_schedule_from_the_connection_waits_then_polls_densely(emulator, connection):
    """With ``poll_schedule=adaptive`` the trigger skips ahead to 82 % of the expected time, then polls
    every 0.7 x its interval (scaled down here: expected 2 s, interval 0.1 s)."""
    connection("kfx", extra={"poll_schedule": "adaptive", "expected_seconds": 2})
    sleep = polling()  # the trigger's clock moves by the whole wait; real time by at most 50 ms of it
    with configured(emulator, generating_seconds=0.5):
        gen_id = submit(emulator, squish(emulator))
        trigger = KlingFxGenerationTrigger(
            generation_id=gen_id,
            deadline=sleep.clock() + 60,
            klingfx_conn_id="kfx",
            poll_interval=0.1,
            submitted_at=sleep.clock(),
            sleep=sleep.asleep,
            clock=sleep.clock,
        )
        (event,) = await events_of(trigger)
    assert event["status"] == "success"
    first, *dense = sleep.calls
    assert first == pytest.approx(1.64)
    assert dense and all(d == pytest.approx(0.07) for d in dense)
    assert "poll_schedule" not in json.dumps(trigger.serialize()[1])


class BlockingCalls:
    """Records the blocking calls made on one thread: a connect, send or receive on a socket in
    blocking mode (what a sync HTTP client or database driver does; the loop's own sockets are
    non-blocking), and ``time.sleep``. Counted, not timed: a loaded machine cannot fail it, and a
    blocking call too short to notice counts as much as a long one."""

    SOCKET_CALLS = ("connect", "connect_ex", "send", "sendall", "sendto", "recv", "recv_into", "recvfrom")

    def __init__(self, monkeypatch: pytest.MonkeyPatch, thread: int) -> None:
        self.thread = thread
        self.calls: list[str] = []
        for name in self.SOCKET_CALLS:
            monkeypatch.setattr(socket.socket, name, self._socket_call(name, getattr(socket.socket, name)))
        real_sleep = time.sleep

        def sleep(seconds: float) -> None:
            if threading.get_ident() == self.thread:
                self.calls.append(f"time.sleep({seconds})")
            real_sleep(seconds)

        monkeypatch.setattr(time, "sleep", sleep)

    def _socket_call(self, name: str, original):
        def call(sock: socket.socket, *args, **kwargs):
            if threading.get_ident() == self.thread and sock.gettimeout() != 0.0:
                self.calls.append(f"socket.{name} to {args[0] if name.startswith('connect') else sock}")
            return original(sock, *args, **kwargs)

        return call


async def test_trigger_never_blocks_the_event_loop(emulator, connection):
    """No blocking call runs on the event loop's thread while the trigger runs: the connection is
    read through ``aget_connection`` and every request goes through aiohttp."""
    loop = asyncio.get_running_loop()
    # Debug mode: asyncio also raises on a loop call from another thread (its timing is not used).
    loop.set_debug(True)
    gen_id = submit(emulator, squish(emulator))  # the sync hook, before the watch starts
    try:
        with pytest.MonkeyPatch.context() as patch:
            blocking = BlockingCalls(patch, threading.get_ident())
            (event,) = await events_of(make_trigger(gen_id, polling()))
    finally:
        loop.set_debug(False)
    assert event["status"] == "success"
    assert event["polls"] >= 2  # the trigger made requests while watched
    assert blocking.calls == []


TRIGGER_SCRIPT = """
import asyncio, json, pathlib, sys
from airflow_provider_klingfx.triggers.klingfx import KlingFxGenerationTrigger
from tests.support import FakeTime

generation_id, armed = sys.argv[1], pathlib.Path(sys.argv[2])

fake = FakeTime(real=0.05)

async def main():
    trigger = KlingFxGenerationTrigger(
        generation_id,
        deadline=fake.clock() + 60,
        poll_interval=0.2,
        submitted_at=fake.clock(),
        sleep=fake.asleep,
        clock=fake.clock,
    )
    armed.touch()  # after Airflow's own start-up: the trigger's first connection read meets the hiccup
    async for event in trigger.run():
        print("EVENT " + json.dumps(event.payload), flush=True)

asyncio.run(main())
"""


def test_a_connection_read_hiccup_is_read_again_not_a_lost_generation(emulator, connection, tmp_path):
    """A secrets backend that cannot start once (in a fresh process, as in a triggerer): the trigger
    reads the connection again and delivers the paid video, instead of ending "not defined"."""
    gen_id = submit(emulator, squish(emulator))
    armed = tmp_path / "armed"
    env = {
        **os.environ,
        "AIRFLOW__WORKERS__SECRETS_BACKEND": "tests.flaky_secrets.OnceBrokenBackend",
        "AIRFLOW__WORKERS__SECRETS_BACKEND_KWARGS": json.dumps({"armed": str(armed)}),
        "PYTHONPATH": str(REPO),
    }
    proc = subprocess.run(
        [sys.executable, "-c", TRIGGER_SCRIPT, gen_id, str(armed)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert not armed.exists(), "the backend was never started"
    (line,) = [ln for ln in proc.stdout.splitlines() if ln.startswith("EVENT ")]
    event = json.loads(line.removeprefix("EVENT "))
    assert event["status"] == "success", event
    assert "could not read connection 'klingfx_default': ConnectionError" in out
    assert "trying again" in out
    assert API_KEY not in out


async def test_a_slow_poll_never_runs_past_the_deadline(emulator, connection):
    """The API hangs (each answer takes 5 s, under the 30 s read timeout): one poll with its retries
    could take minutes. Every request is cut at the deadline, so the timeout event comes on time."""
    gen_id = submit(emulator, squish(emulator))
    emulator.set_faults(faults({"action": "slow", "route": "fetch", "delay": 5, "times": -1}))
    started = time.monotonic()
    # The real clock: what is measured is a real request, cut when the deadline comes.
    (event,) = await events_of(make_trigger(gen_id, polling(), within=1.0, clock=time.time))
    assert event["status"] == "timeout"
    assert event["generation_id"] == gen_id
    assert time.monotonic() - started < 4.5  # not the 5 s of even a single slow answer


async def test_a_generation_the_api_does_not_know_yet_just_after_its_create_is_polled_on(
    emulator, connection
):
    # An API briefly eventually consistent: the first fetches of a new generation answer 404. Ending
    # the wait there would fail the task, and its retry would pay for a new generation.
    gen_id = submit(emulator, squish(emulator))
    emulator.set_faults(faults({"action": "status", "status": 404, "route": "fetch", "times": 3}))
    (event,) = await events_of(make_trigger(gen_id, polling()))
    assert event["status"] == "success", event
    fetches = [r["status"] for r in emulator.stats()["requests"] if r["method"] == "GET"]
    assert fetches[:4] == [404, 404, 404, 200]
    assert emulator.stats()["submissions"] == 1


async def test_a_generation_still_unknown_after_the_grace_period_ends_the_wait(emulator, connection):
    from airflow_provider_klingfx._polling import NOT_FOUND_GRACE_SECONDS

    sleep = FakeTime()  # nothing here waits on real time: the 404s are the emulator's faults
    gen_id = submit(emulator, squish(emulator))
    emulator.set_faults(faults({"action": "status", "status": 404, "route": "fetch", "times": -1}))
    trigger = KlingFxGenerationTrigger(
        generation_id=gen_id,
        deadline=sleep.clock() + 600,
        poll_interval=5,
        submitted_at=sleep.clock(),
        sleep=sleep.asleep,
        clock=sleep.clock,
    )
    (event,) = await events_of(trigger)
    assert event["status"] == "error" and event["status_code"] == 404, event
    # Polled on every 5 s (virtual) through the grace period, then the 404 counts.
    polls = [r for r in emulator.stats()["requests"] if r["method"] == "GET"]
    assert len(polls) == NOT_FOUND_GRACE_SECONDS / 5 + 1
