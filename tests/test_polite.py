"""Many triggers in one event loop against a rate-limited, then failing, emulator over real HTTP.

The polls of one loop share one view of the API (``poll_coordination: shared``, the default): a 429
slows every trigger, an outage holds them behind one probe, and each state change is one line in the
process log. The same load with ``per_trigger`` (every trigger on its own) is the comparison.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import Any

import pytest

from airflow_provider_klingfx import _health
from airflow_provider_klingfx.domain import KlingFxTransportError
from airflow_provider_klingfx.triggers.klingfx import KlingFxGenerationTrigger
from tests.conftest import API_KEY, configured
from tests.support import FakeTime
from tests.test_trigger import events_of, submit

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


def submit_many(emulator, n: int) -> list[str]:
    from airflow_provider_klingfx.domain import EffectRequest

    return [
        submit(emulator, EffectRequest.build("squish", f"{emulator.url}/samples/person-1.png?i={i}"))
        for i in range(n)
    ]


async def run_triggers(ids: list[str], *, interval: float, deadline: float, ramp: float = 0.0) -> list[dict]:
    async def one(i: int, gid: str) -> dict[str, Any]:
        await asyncio.sleep(ramp * i / len(ids))
        trigger = KlingFxGenerationTrigger(
            generation_id=gid, deadline=deadline, poll_interval=interval, submitted_at=time.time()
        )
        (event,) = await events_of(trigger)
        return event

    return await asyncio.gather(*(one(i, g) for i, g in enumerate(ids)))


def api_requests(emulator) -> list[dict]:
    return [r for r in emulator.stats()["requests"] if r["method"] == "GET"]


def lines(caplog, text: str, level: int = logging.WARNING) -> int:
    return sum(1 for r in caplog.records if r.levelno >= level and text in r.getMessage())


@pytest.mark.parametrize("coordination", ["shared", "per_trigger"])
async def test_a_rate_limit_slows_every_trigger_together(
    emulator, connection, caplog, coordination, record_property
):
    """60 triggers polling every 0.3 s ask for 200 requests/s; the key gets 25."""
    caplog.set_level(logging.INFO)
    connection(extra={"poll_coordination": coordination})
    with configured(emulator, generating_seconds=4.0):
        ids = submit_many(emulator, 60)
    with configured(emulator, rate_limit=25.0):
        started = time.time()
        events = await run_triggers(ids, interval=0.3, deadline=time.time() + 120, ramp=0.5)
        took = time.time() - started
        stats = emulator.stats()
    assert [e["status"] for e in events] == ["success"] * 60
    limited = stats["rate_limited"]
    record_property("summary", f"rate limit, {coordination}: {limited} 429s, {took:.1f}s")
    if coordination == "shared":
        # One line when throttling starts, none per trigger per poll; few 429s after the first burst.
        assert lines(caplog, "is rate-limiting this key (429)") == 1
        assert lines(caplog, "failed (attempt") <= 30
        assert limited <= 60, limited
    else:
        assert lines(caplog, "is rate-limiting this key") == 0
        assert limited > 100, limited


@pytest.mark.parametrize("coordination", ["shared", "per_trigger"])
async def test_an_outage_holds_every_poll_behind_one_probe(
    emulator, connection, caplog, coordination, record_property
):
    caplog.set_level(logging.INFO)
    connection(extra={"poll_coordination": coordination})
    with configured(emulator, generating_seconds=1.0):
        ids = submit_many(emulator, 40)
        emulator.schedule_outage(0.5, 4.0, mode="503")
        events = await run_triggers(ids, interval=0.2, deadline=time.time() + 120)
        rejected = emulator.stats()["outage_rejected"]
    assert [e["status"] for e in events] == ["success"] * 40
    record_property("summary", f"outage 4 s, {coordination}: {rejected} requests refused")
    if coordination == "shared":
        assert lines(caplog, "looks down") == 1
        assert lines(caplog, "answers again after") == 1
        # 5 failures open it; probes 1, 2, 4 s apart (with jitter) in 4 s: a handful, not hundreds.
        assert rejected <= 5 + 4 + 40, rejected  # plus polls already in flight when it began
        assert lines(caplog, "waiting out a transient API error") <= 40
    else:
        assert rejected > 100, rejected


async def test_a_deadline_during_an_outage_ends_in_a_timeout_naming_the_generation(emulator, connection):
    with configured(emulator, generating_seconds=1.0):
        ids = submit_many(emulator, 10)
        emulator.schedule_outage(0.0, 30.0, mode="503")  # the fixture's reset() ends it
        events = await run_triggers(ids, interval=0.2, deadline=time.time() + 3.0)
        rejected = emulator.stats()["outage_rejected"]
    assert {e["status"] for e in events} == {"timeout"}
    assert {e["generation_id"] for e in events} == set(ids)
    assert all("503" in (e["last_error"] or "") or "not sent" in (e["last_error"] or "") for e in events)
    assert rejected <= 5 + 3 + 10


async def test_a_refused_connection_outage_resumes_after_the_probe_gets_through(emulator, connection, caplog):
    caplog.set_level(logging.INFO)
    with configured(emulator, generating_seconds=1.0):
        ids = submit_many(emulator, 20)
        emulator.schedule_outage(0.3, 2.0, mode="refuse")
        events = await run_triggers(ids, interval=0.2, deadline=time.time() + 60)
    assert [e["status"] for e in events] == ["success"] * 20
    assert lines(caplog, "looks down") == 1
    assert any(
        "connection refused" in r.getMessage() or "connection lost" in r.getMessage() for r in caplog.records
    )


async def test_the_gate_is_shared_per_loop_and_key_and_never_named_by_the_key(emulator, connection):
    from airflow_provider_klingfx.hooks.klingfx import KlingFxHook

    first, second = KlingFxHook(), KlingFxHook()
    settings = await first.aget_settings()
    assert first._async_gate(settings) is second._async_gate(await second.aget_settings())
    (gates,) = [g for loop, g in _health._GATES.items() if loop is asyncio.get_running_loop()]
    assert API_KEY not in repr(list(gates))
    assert API_KEY not in repr(first._async_gate(settings).health)


async def test_held_polls_resume_spread_over_their_poll_interval_after_one_probe():
    # Virtual time: the gate's dispatcher is its only sleeper, so the clock moves by exactly what it
    # waits, however slowly a loaded machine runs the test.
    fast = FakeTime(start=1_000_000.0, hold=True)
    gate = _health.AsyncGate(
        _health.ApiHealth(name="x", emit=lambda *_: None, random=lambda: 0.5), fast.asleep, fast.clock
    )
    down = KlingFxTransportError("GET /p: could not connect (connection refused)", reached_server=False)
    for _ in range(_health.OUTAGE_AFTER):
        gate.report("poll", down)
    deadline = fast.clock() + 600
    polls = [asyncio.create_task(gate.acquire(deadline, "/p", spread=10.0)) for _ in range(11)]
    (probe,) = await fast.run_until(*polls)
    assert probe.result() == "probe" and gate.waiting == 10
    assert fast.clock() == 1_000_000.75  # the first probe's slot: 1 s, jittered by 0.75
    gate.report("probe", down)  # still down: the next probe waits 1.5 s
    (second,) = await fast.run_until(*[p for p in polls if not p.done()])
    assert second.result() == "probe"
    assert fast.clock() == 1_000_000.75 + 1.5
    released: list[float] = []
    sent = gate.health.sent

    def record(now: float, role: _health.Role) -> None:
        released.append(now)
        sent(now, role)

    gate.health.sent = record  # type: ignore[method-assign]
    gate.report("probe", None)  # it answered: the other 9 resume over the 10 s interval, 0.9/s
    assert gate.health.state == "recovery" and gate.health.rate == pytest.approx(0.9)
    resumed = asyncio.gather(*[p for p in polls if p not in (probe, second)])
    await fast.run_until(resumed)
    assert resumed.result() == ["poll"] * 9
    # Paced by the dispatcher: the first at once, then 1/0.9 s apart, the rate growing 2 %/s at most.
    gaps = [b - a for a, b in itertools.pairwise(released)]
    assert len(released) == 9 and min(gaps) > 1 / 0.9 / 1.25
    assert released[0] == 1_000_000.75 + 1.5
    assert gaps[0] == pytest.approx(1 / 0.9) and gaps == sorted(gaps, reverse=True)
    assert gate.waiting == 0
