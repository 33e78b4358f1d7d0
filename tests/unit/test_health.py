"""The decisions of the shared view of the API's health (no I/O): rate, outage, log lines."""

from __future__ import annotations

import itertools
import logging
import math

import pytest

from airflow_provider_klingfx import _health
from airflow_provider_klingfx._health import ApiHealth, SyncGate, classify, key_fingerprint
from airflow_provider_klingfx.domain import KlingFxAPIError, KlingFxTransportError
from tests.support import FakeTime


class Lines:
    def __init__(self) -> None:
        self.lines: list[tuple[int, str]] = []

    def __call__(self, level: int, message: str) -> None:
        self.lines.append((level, message))


def health(**kwargs) -> tuple[ApiHealth, Lines]:
    lines = Lines()
    return ApiHealth(name="https://api.example", emit=lines, random=lambda: 0.5, **kwargs), lines


def send_and_answer(h: ApiHealth, now: float, n: int, spacing: float) -> float:
    """n polls at ``spacing`` seconds, all answered; returns the time after the last."""
    for _ in range(n):
        at, role = h.ready_at(now)
        now = max(now, at)
        h.sent(now, role)
        h.answered(now, role)
        now += spacing
    return now


def err(status: int, retry_after: float | None = None) -> KlingFxAPIError:
    return KlingFxAPIError(status, "x", method="GET", path="/p", retry_after=retry_after)


def test_outcomes_are_classified_by_what_they_say_about_the_api():
    assert classify(None) == "answered"
    assert classify(err(404)) == "answered"  # the API answered: it is up
    assert classify(err(429)) == "throttled"
    assert classify(err(503)) == "failed"
    assert classify(KlingFxTransportError("refused", reached_server=False)) == "failed"


def test_a_healthy_api_never_delays_a_poll():
    h, lines = health()
    now = send_and_answer(h, 1000.0, 500, 0.001)
    assert h.ready_at(now) == (now, "poll")
    assert lines.lines == []


def test_a_429_cuts_the_rate_to_most_of_what_the_api_accepted_and_pauses_everyone():
    h, lines = health()
    now = send_and_answer(h, 1000.0, 100, 0.01)  # 100 accepted in the last second
    h.sent(now, "poll")
    h.throttled(now, "poll", retry_after=2.0)
    assert h.rate == pytest.approx(70.0)
    assert h.ready_at(now)[0] == pytest.approx(now + 2.0)  # Retry-After holds every poll
    # A burst of 429s to requests sent before the decrease lowers the rate once, not per answer.
    for _ in range(20):
        h.throttled(now + 0.1, "poll", retry_after=None)
    assert h.rate == pytest.approx(70.0)
    assert [level for level, _ in lines.lines] == [logging.WARNING]
    assert "rate-limiting this key (429)" in lines.lines[0][1]
    assert "70.0/s" in lines.lines[0][1]


def test_throttled_polls_are_paced_at_the_rate():
    h, _ = health()
    now = send_and_answer(h, 1000.0, 10, 0.1)  # 10/s accepted
    h.throttled(now, "poll", retry_after=None)
    assert h.rate == pytest.approx(0.7 * 9)  # 9 answers within the last second
    slots = []
    t = now
    for _ in range(8):
        at, role = h.ready_at(t)
        slots.append(at)
        h.sent(at, role)
        t = at
    gaps = [b - a for a, b in itertools.pairwise(slots[1:])]
    assert all(g == pytest.approx(1 / 6.3, rel=0.01) for g in gaps)


def test_the_rate_grows_back_additively_then_throttling_ends_with_one_line():
    h, lines = health()
    now = send_and_answer(h, 1000.0, 100, 0.01)
    h.throttled(now, "poll", retry_after=None)
    assert h.rate == pytest.approx(70.0)
    h.ready_at(now + 11.0)  # 10 s of growth after the 1 s hold: +2 %/s of 100
    assert h.rate == pytest.approx(90.0)
    assert h.throttled_since is not None
    # Quiet for 30 s and far below the rate: throttling ends, with counts.
    h.ready_at(now + 40.0)
    assert h.throttled_since is None and h.rate is None
    assert len(lines.lines) == 2
    assert "no longer rate-limits" in lines.lines[1][1] and "1 answered 429" in lines.lines[1][1]


def test_throttling_holds_while_the_polls_still_use_the_whole_rate():
    h, _ = health()
    now = send_and_answer(h, 1000.0, 20, 0.05)
    h.throttled(now, "poll", retry_after=None)
    # Polls keep coming as fast as the gate allows for 40 s: still saturated, still throttled.
    t = now
    while t < now + 40:
        at, role = h.ready_at(t)
        h.sent(at, role)
        h.answered(at, role)
        t = at
    assert h.throttled_since is not None


def test_a_cap_from_the_connection_paces_from_the_start_and_bounds_the_recovery():
    h, lines = health(max_rate=5.0)
    at0, _ = h.ready_at(1000.0)
    h.sent(at0, "poll")
    assert h.ready_at(1000.0)[0] == pytest.approx(1000.2)
    h.throttled(1000.2, "poll", retry_after=None)
    h.ready_at(2000.0)
    assert h.rate == 5.0  # back to the cap, never above it
    assert lines.lines[0][0] == logging.WARNING


def test_failures_in_a_row_open_an_outage_with_one_warning_and_probes_back_off():
    h, lines = health()
    now = 1000.0
    for i in range(_health.OUTAGE_AFTER - 1):
        h.sent(now, "poll")
        h.failed(now, "poll", "refused")
        assert h.state != "outage", i
    h.answered(now, "poll")  # one answer breaks the run
    for _ in range(_health.OUTAGE_AFTER):
        h.sent(now, "poll")
        h.failed(now, "poll", "GET /p: could not connect (connection refused)")
    assert h.state == "outage"
    assert len(lines.lines) == 1 and "looks down: 5 requests in a row failed" in lines.lines[0][1]
    # Only one probe at a time; with jitter 0.5 the waits are 3/4 of 1, 2, 4, 8, 16, 20, 20 s.
    waits = []
    t = now
    for _ in range(7):
        at, role = h.ready_at(t)
        assert role == "probe"
        waits.append(at - t)
        h.sent(at, role)
        assert h.ready_at(at)[0] == math.inf  # nothing else while the probe is out
        h.failed(at, role, "refused")
        t = at
    assert waits == pytest.approx([0.75, 1.5, 3.0, 6.0, 12.0, 15.0, 15.0])
    at, role = h.ready_at(t)
    h.sent(at, role)
    assert h.answered(at, role) is True
    assert h.state != "outage"
    assert len(lines.lines) == 2 and "answers again after" in lines.lines[1][1]
    assert "8 probe(s) sent" in lines.lines[1][1]


def test_a_429_to_a_probe_ends_the_outage_the_api_is_up_only_busy():
    h, lines = health()
    for _ in range(_health.OUTAGE_AFTER):
        h.failed(1000.0, "poll", "503")
    at, role = h.ready_at(1000.0)
    h.sent(at, role)
    assert h.throttled(at, role, retry_after=5) is True
    assert h.state != "outage" and h.throttled_since is not None
    assert [m.split(" ")[5] for _, m in lines.lines] == ["looks", "answers", "is"]


def test_a_cancelled_probe_lets_the_next_poll_probe():
    h, _ = health()
    for _ in range(_health.OUTAGE_AFTER):
        h.failed(1000.0, "poll", "503")
    at, role = h.ready_at(1000.0)
    h.sent(at, role)
    h.abandoned(role)
    assert h.ready_at(at)[0] == at


def test_the_sync_gate_waits_for_probes_then_gives_up_at_the_deadline():
    fake = FakeTime(start=1000.0)
    h, _ = health()
    gate = SyncGate(h, fake, fake.clock)
    for _ in range(_health.OUTAGE_AFTER):
        role = gate.acquire(fake.clock() + 100, "/p")
        gate.report(role, KlingFxTransportError("refused", reached_server=False))
    assert gate.acquire(fake.clock() + 100, "/p") == "probe"
    assert fake.calls == [0.75]
    exc = KlingFxTransportError("refused", reached_server=False)
    gate.report("probe", exc)
    assert _health.was_reported(exc)  # the outage was announced: the poll logs it quietly
    with pytest.raises(
        _health.KlingFxApiUnavailableError, match="not sent before the deadline: the API has not"
    ):
        gate.acquire(fake.clock() + 1.0, "/p")  # the next probe is 1.5 s away


def test_a_turn_reports_what_its_request_came_to():
    fake = FakeTime(start=1000.0)
    h, _ = health()
    gate = SyncGate(h, fake, fake.clock)
    # An API error: reported (failures in a row count), then raised on.
    for _ in range(_health.OUTAGE_AFTER - 1):
        with pytest.raises(KlingFxTransportError), gate.outcome(gate.acquire(fake.clock() + 100, "/p")):
            raise KlingFxTransportError("refused", reached_server=False)
    assert (h.failures_in_row, h.in_flight) == (_health.OUTAGE_AFTER - 1, 0)
    # An answer: reported, and the failures in a row start over.
    with gate.outcome(gate.acquire(fake.clock() + 100, "/p")):
        pass
    assert (h.failures_in_row, h.in_flight) == (0, 0)
    # Cancelled before the answer (anything but the provider's errors): no outcome, only not in flight.
    with pytest.raises(KeyboardInterrupt), gate.outcome(gate.acquire(fake.clock() + 100, "/p")):
        raise KeyboardInterrupt
    assert (h.failures_in_row, h.in_flight, h.state) == (0, 0, "healthy")


def test_gates_are_named_by_a_hash_of_the_key_never_the_key():
    assert "sk-secret" not in key_fingerprint("sk-secret")
    assert key_fingerprint("a") != key_fingerprint("b")
    assert len(key_fingerprint("sk-secret")) == 16


def test_an_outage_during_throttling_keeps_the_throttle_for_the_polls_that_come_back():
    h, lines = health()
    now = send_and_answer(h, 1000.0, 100, 0.01)
    h.throttled(now, "poll", retry_after=None)
    rate = h.rate
    for _ in range(_health.OUTAGE_AFTER):
        h.failed(now + 1, "poll", "refused")
    back = now + 121.0  # a 2-minute outage: longer than the quiet period that ends throttling
    _, role = h.ready_at(back)
    h.sent(back, role)
    assert h.answered(back, role) is True
    h.ready_at(back + 0.1)
    # Still throttled, at about the rate it had: the held polls resume paced, not all at once.
    assert h.throttled_since is not None
    assert h.rate == pytest.approx(rate, abs=1.0)
    assert not any("no longer rate-limits" in m for _, m in lines.lines)


@pytest.mark.parametrize("retry_after", [45.0, 100.0])
def test_a_retry_after_longer_than_the_quiet_time_holds_every_poll_to_its_end(retry_after):
    """Quiet time counts from the end of the pause: a poll arriving 30 s in does not end throttling."""
    h, lines = health()
    now = send_and_answer(h, 1000.0, 20, 0.05)
    h.throttled(now, "poll", retry_after=retry_after)
    arrivals = [now + k * 0.5 for k in range(int(retry_after * 2))]
    assert all(h.ready_at(t)[0] >= now + retry_after for t in arrivals)
    assert h.ready_at(now + retry_after + _health.THROTTLE_QUIET - 1)[0] == now + retry_after + 29
    assert h.throttled_since is not None and len(lines.lines) == 1


@pytest.mark.parametrize("accepted", [0, 1, 3, 6], ids=["min-rate", "0.7/s", "2.1/s", "4.2/s"])
def test_throttling_holds_at_low_rates_while_the_polls_use_every_slot(accepted):
    h, lines = health()
    now = send_and_answer(h, 1000.0, accepted, 1.0 / max(1, accepted))
    h.throttled(now, "poll", retry_after=None)
    t = now
    while t < now + 120 and h.throttled_since is not None:  # a backlog goes out at the rate, no 429
        at, role = h.ready_at(t)
        if at > t:  # the dispatcher sleeps until then, and asks again
            t = at
            continue
        h.sent(t, role)
        h.answered(t, role)
    assert h.throttled_since is not None, lines.lines[-1]


def test_late_429s_earned_before_the_cut_or_inside_the_pause_do_not_cut_again():
    h, _ = health()
    now = send_and_answer(h, 1000.0, 100, 0.01)
    for _ in range(4):
        h.sent(now, "poll")  # four in flight when the first 429 comes back
    h.throttled(now, "poll", retry_after=5.0)
    assert h.rate == pytest.approx(70.0)
    for late in (now + 1.5, now + 3.0, now + 6.0):  # the other three: inside the pause, then after it
        h.throttled(late, "poll", retry_after=None)
        assert h.rate == pytest.approx(70.0, rel=0.01)
    at, role = h.ready_at(now + 6.0)
    h.sent(at, role)
    h.throttled(at + 0.5, role, retry_after=None)  # sent after the cut: this one counts
    assert h.rate < 70.0


def test_a_retry_after_beyond_the_cap_is_logged_as_the_pause_the_gate_keeps():
    h, lines = health()
    h.throttled(1000.0, "poll", retry_after=3600.0)
    assert h.ready_at(1000.0)[0] == 1000.0 + _health.MAX_PAUSE
    (line,) = (m for _, m in lines.lines)
    assert "pausing them 2.0min (the API asked for 60.0min)" in line
    assert "3600" not in line


def test_probes_wait_for_the_pause_and_the_rate():
    h, _ = health()
    h.throttled(1000.0, "poll", retry_after=60.0)
    for _ in range(_health.OUTAGE_AFTER):  # requests in flight before the 429 fail: the API is down
        h.failed(1000.5, "poll", "refused")
    assert h.state == "outage"
    assert h.ready_at(1001.0) == (1060.0, "probe")


def test_after_an_outage_the_waiting_polls_resume_at_their_own_pace():
    h, lines = health()
    for _ in range(_health.OUTAGE_AFTER):
        h.failed(1000.0, "poll", "refused")
    for spread in [10.0] * 8 + [0.0]:  # eight polling every 10 s, one that does not say
        h.hold(spread)
    at, role = h.ready_at(1000.0)
    h.sent(at, role)
    assert h.answered(at, role) is True
    assert h.state == "recovery" and h.rate == pytest.approx(8 / 10 + 1 / _health.MIN_SPREAD)
    assert "9 poll(s) waiting; resuming them at 1.8/s" in lines.lines[-1][1]
    released = []
    t = at
    while h.waiting:
        t, role = h.ready_at(t)
        h.unhold(10.0 if h.waiting > 1 else 0.0)
        h.sent(t, role)
        released.append(t)
    gaps = [b - a for a, b in itertools.pairwise(released)]
    # One per 1/1.8 s at first, a little faster as the rate grows (2 % of it per second).
    assert all(1 / 1.8 / 1.2 < g <= 1 / 1.8 + 1e-9 for g in gaps) and len(released) == 9
    h.ready_at(t + 1.0)
    assert h.state == "healthy" and h.rate is None


def test_a_429_to_the_first_probe_cuts_from_what_the_waiting_polls_want_not_from_one_probe():
    h, _ = health()
    for _ in range(_health.OUTAGE_AFTER):
        h.failed(1000.0, "poll", "503")
    for _ in range(100):
        h.hold(10.0)  # 100 polls every 10 s wait: 10/s
    at, role = h.ready_at(1000.0)
    h.sent(at, role)
    h.throttled(at, role, retry_after=None)
    assert h.rate == pytest.approx(7.0)  # not 0.7/s, from the one probe sent in the last second
