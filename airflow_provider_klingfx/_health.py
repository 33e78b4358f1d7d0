"""One view of the API's health per process (per event loop), shared by every poll it sends.

A triggerer polls thousands of generations with one API key. Left to themselves, its triggers each
learn alone that the API rate-limits the key or is down, and each backs off alone: at 5,000
generations that is thousands of 429s or failing requests, and as many log lines, for one fact, then
a thundering herd when the API comes back. Here every poll of one event loop to one API (base URL and
key) asks one :class:`AsyncGate` before it is sent and tells it how the request went:

* **rate**: a 429 lowers the loop's poll rate for every trigger (multiplicative decrease of what the
  API accepted in the last second), ``Retry-After`` pauses every poll, and the rate then grows back
  by a constant step per second (additive increase, as TCP does) until the API is no longer saturated;
  the connection extra ``max_polls_per_second`` caps it outright;
* **outage**: after :data:`OUTAGE_AFTER` connection failures or 5xx in a row (across triggers), polls
  are held and only one at a time goes out, as a probe, with a capped, jittered back-off between
  probes; when a probe gets an answer, the held polls resume spread over their poll interval;
* **logs**: one warning when throttling or an outage starts and one when it ends, with counts, in the
  process log (not one per trigger per poll: failures the gate has reported are logged at DEBUG by the
  poll that met them).

The decisions live in :class:`ApiHealth`, which does no I/O and reads an injected clock; the worker's
wait and the sensor (one generation each) use it through :class:`SyncGate`, the triggerer through
:class:`AsyncGate`. Only polls (fetches) go through a gate: a create is sent once, under the retry
policy's own rules. Waiting at the gate never outlasts the poll's deadline.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import heapq
import itertools
import logging
import math
import random
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from airflow_provider_klingfx.domain import KlingFxAPIError, KlingFxTransportError

log = logging.getLogger(__name__)

Role = Literal["poll", "probe"]

#: Connection failures or 5xx in a row (any trigger's) that mean the API is down.
OUTAGE_AFTER: Final = 5
#: First wait between outage probes, in seconds; it doubles per failed probe (with jitter) ...
PROBE_INITIAL_WAIT: Final = 1.0
#: ... up to this many seconds, so a recovered API is noticed within about this long.
PROBE_MAX_WAIT: Final = 20.0
#: Multiplicative decrease: after a 429 the rate becomes this fraction of what the API accepted in
#: the last second (TCP CUBIC's 0.7 rather than Reno's 0.5: a smaller saw-tooth under a steady limit).
RATE_DECREASE: Final = 0.7
#: Additive increase, per second, as a fraction of the rate the last decrease started from: the rate
#: climbs back to the limit in about 15 s, then meets one 429 and steps down again.
RATE_INCREASE_SHARE: Final = 0.02
#: A burst of 429s answers requests sent before the last decrease: one decrease per this many seconds.
DECREASE_HOLD: Final = 1.0
#: Lowest poll rate throttling goes down to (polls per second).
MIN_RATE: Final = 0.2
#: Throttling ends after this many seconds without a 429 while the polls no longer use the full rate.
THROTTLE_QUIET: Final = 30.0
#: Longest ``Retry-After`` pause honoured for everyone, in seconds.
MAX_PAUSE: Final = 120.0


def _format_duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.1f}min"


def key_fingerprint(api_key: str) -> str:
    """A stable name for a key that does not reveal it (the gates are shared per key)."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


@dataclass
class ApiHealth:
    """What the polls of one process have learned about one API (base URL and key); no I/O.

    Callers ask :meth:`ready_at` before sending, call :meth:`sent` when they send, and report the
    outcome with :meth:`answered` (any HTTP answer), :meth:`throttled` (429) or :meth:`failed`
    (connection failure, 5xx). State changes are announced through ``emit``.

    :param name: how the API is named in log lines (its base URL).
    :param emit: called with ``(logging level, message)`` on each state change.
    :param max_rate: polls per second never exceeded (the connection's ``max_polls_per_second``).
    :param random: a ``[0, 1)`` random source for the probe jitter (tests pass a fixed one).
    """

    name: str
    emit: Callable[[int, str], None]
    max_rate: float | None = None
    random: Callable[[], float] = random.random
    rate: float | None = field(init=False, default=None)
    next_slot: float = field(init=False, default=0.0)
    paused_until: float = field(init=False, default=0.0)
    # throttling
    throttled_since: float | None = field(init=False, default=None)
    last_429: float = field(init=False, default=-math.inf)
    decrease_hold_until: float = field(init=False, default=-math.inf)
    increase_per_second: float = field(init=False, default=0.0)
    last_growth: float = field(init=False, default=0.0)
    episode_sent: int = field(init=False, default=0)
    episode_429s: int = field(init=False, default=0)
    # outage
    failures_in_row: int = field(init=False, default=0)
    outage_since: float | None = field(init=False, default=None)
    probe_in_flight: bool = field(init=False, default=False)
    probe_failures: int = field(init=False, default=0)
    next_probe_at: float = field(init=False, default=0.0)
    held: int = field(init=False, default=0)
    last_failure: str = field(init=False, default="")
    # what went out, and what the API accepted, in the last second
    _sent_times: deque[float] = field(init=False, default_factory=deque)
    _accepted_times: deque[float] = field(init=False, default_factory=deque)

    def __post_init__(self) -> None:
        self.rate = self.max_rate

    # -- state -------------------------------------------------------------------------------

    @property
    def in_outage(self) -> bool:
        """True while polls are held and only probes go out."""
        return self.outage_since is not None

    @property
    def troubled(self) -> bool:
        """True while an outage or throttling is on (and has been announced)."""
        return self.outage_since is not None or self.throttled_since is not None

    def ready_at(self, now: float) -> tuple[float, Role]:
        """When the next request may be sent, and as what.

        :param now: current epoch seconds.
        :returns: ``(time, role)``; ``time <= now`` means at once, ``math.inf`` means "after the
            probe in flight answers".
        """
        if self.outage_since is not None:
            return (math.inf if self.probe_in_flight else self.next_probe_at), "probe"
        self._grow(now)
        at = max(now, self.paused_until)
        if self.rate is not None:
            at = max(at, self.next_slot)
        return at, "poll"

    def sent(self, now: float, role: Role) -> None:
        """A request goes out now."""
        if role == "probe":
            self.probe_in_flight = True
        if self.rate is not None:
            self.next_slot = max(now, self.next_slot) + 1.0 / self.rate
        _count(self._sent_times, now)
        if self.throttled_since is not None:
            self.episode_sent += 1

    # -- outcomes ----------------------------------------------------------------------------

    def answered(self, now: float, role: Role) -> bool:
        """The API answered (anything but 429 or 5xx). Returns True when this ended an outage."""
        _count(self._accepted_times, now)
        self.failures_in_row = 0
        if role == "probe":
            self.probe_in_flight = False
        return self._end_outage(now)

    def throttled(self, now: float, role: Role, retry_after: float | None) -> bool:
        """The API answered 429. Returns True when this ended an outage (the API is up, only busy)."""
        self.failures_in_row = 0
        if role == "probe":
            self.probe_in_flight = False
        recovered = self._end_outage(now)
        self.last_429 = now
        if retry_after is not None and retry_after > 0:
            self.paused_until = max(self.paused_until, now + min(retry_after, MAX_PAUSE))
        if now >= self.decrease_hold_until:
            accepted = len(_trim(self._accepted_times, now))
            base = float(accepted) if accepted else float(len(_trim(self._sent_times, now)))
            if self.rate is not None:
                base = min(base, self.rate) if base else self.rate
            self.rate = max(MIN_RATE, base * RATE_DECREASE)
            self.increase_per_second = max(MIN_RATE, base) * RATE_INCREASE_SHARE
            self.decrease_hold_until = now + DECREASE_HOLD
            self.last_growth = now
            self.next_slot = max(self.next_slot, now + 1.0 / self.rate)
        if self.throttled_since is None:
            self.throttled_since = now
            self.episode_sent = 0
            self.episode_429s = 0
            pause = f"; pausing {retry_after:g}s as the API asked" if retry_after else ""
            self.emit(
                logging.WARNING,
                f"The AI/ML API at {self.name} is rate-limiting this key (429): polls from this process "
                f"slowed to {self.rate:.1f}/s, for every waiting generation{pause}",
            )
        self.episode_429s += 1
        return recovered

    def failed(self, now: float, role: Role, reason: str) -> None:
        """A connection failure or a 5xx."""
        self.last_failure = reason
        if role == "probe":
            self.probe_in_flight = False
            self.probe_failures += 1
            self.next_probe_at = now + self._probe_wait()
            return
        if self.outage_since is not None:
            return  # a poll sent just before the outage began: already accounted for
        self.failures_in_row += 1
        if self.failures_in_row >= OUTAGE_AFTER:
            self.outage_since = now
            self.probe_failures = 0
            self.held = 0
            self.next_probe_at = now + self._probe_wait()
            self.emit(
                logging.WARNING,
                f"The AI/ML API at {self.name} looks down: {self.failures_in_row} requests in a row "
                f"failed (last: {reason}). Holding the polls of every waiting generation in this "
                f"process and probing with one request at a time (every {PROBE_INITIAL_WAIT:g}s "
                f"growing to {PROBE_MAX_WAIT:g}s); deadlines still apply",
            )

    def abandoned(self, role: Role) -> None:
        """A request was cancelled before its outcome was known (its trigger was cancelled)."""
        if role == "probe":
            self.probe_in_flight = False

    # -- internals ---------------------------------------------------------------------------

    def _probe_wait(self) -> float:
        # Exponential, capped, with "equal jitter": between half and all of the step, so probes of
        # several processes (two triggerers, a worker) do not land together.
        step = min(PROBE_MAX_WAIT, PROBE_INITIAL_WAIT * 2.0**self.probe_failures)
        return step * (0.5 + 0.5 * self.random())

    def _end_outage(self, now: float) -> bool:
        if self.outage_since is None:
            return False
        self.emit(
            logging.WARNING,
            f"The AI/ML API at {self.name} answers again after {_format_duration(now - self.outage_since)}: "
            f"{self.probe_failures + 1} probe(s) sent, {self.held} poll(s) held; resuming them spread "
            "over their poll interval",
        )
        if self.throttled_since is not None:
            # An outage teaches nothing about the rate limit: its time neither counts as quiet (which
            # would end the throttling as the held polls come back at once) nor as growth.
            self.last_429 += now - self.outage_since
            self.last_growth = now
        self.outage_since = None
        self.failures_in_row = 0
        self.probe_in_flight = False
        return True

    def _grow(self, now: float) -> None:
        if self.throttled_since is None:
            return
        if self.rate is not None and now > self.decrease_hold_until:
            self.rate += self.increase_per_second * max(
                0.0, now - max(self.last_growth, self.decrease_hold_until)
            )
            if self.max_rate is not None:
                self.rate = min(self.rate, self.max_rate)
            self.last_growth = now
        if (
            now - self.last_429 >= THROTTLE_QUIET
            and self.rate is not None
            and len(_trim(self._sent_times, now)) < 0.8 * self.rate
        ):
            self.emit(
                logging.WARNING,
                f"The AI/ML API at {self.name} no longer rate-limits this key: throttled for "
                f"{_format_duration(now - self.throttled_since)}, {self.episode_sent} poll(s) sent, "
                f"{self.episode_429s} answered 429; polls from this process run at their own pace again",
            )
            self.throttled_since = None
            self.rate = self.max_rate
            self.paused_until = 0.0


def _trim(times: deque[float], now: float) -> deque[float]:
    while times and times[0] <= now - 1.0:
        times.popleft()
    return times


def _count(times: deque[float], now: float) -> None:
    times.append(now)
    _trim(times, now)


# ---------------------------------------------------------------------------------------------
# Outcomes
# ---------------------------------------------------------------------------------------------

Outcome = Literal["answered", "throttled", "failed"]

#: Set on an error the gate has already announced (an outage or throttling is on), so the poll that
#: met it logs it at DEBUG: the process log has the one line that matters.
REPORTED_ATTR: Final = "api_health_reported"


def classify(exc: BaseException | None) -> Outcome:
    """How a request's result counts for the API's health: any HTTP answer but 429/5xx is "answered"."""
    if exc is None:
        return "answered"
    if isinstance(exc, KlingFxAPIError):
        if exc.status_code == 429:
            return "throttled"
        return "failed" if 500 <= exc.status_code <= 599 else "answered"
    if isinstance(exc, KlingFxTransportError):
        return "failed"
    return "answered"  # a 200 that was not JSON: the API (or something in front of it) answered


def was_reported(exc: BaseException) -> bool:
    """Whether the gate already announced the state this error belongs to (log it quietly)."""
    return bool(getattr(exc, REPORTED_ATTR, False))


class KlingFxApiUnavailableError(KlingFxTransportError):
    """A poll was not sent: the API is down or rate-limiting, and the deadline came first.

    Nothing was sent, so it counts as a transport failure that never reached the API.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, reached_server=False)
        setattr(self, REPORTED_ATTR, True)


def _unavailable(health: ApiHealth, path: str, now: float) -> KlingFxApiUnavailableError:
    if health.outage_since is not None:
        why = (
            f"the API has not answered for {_format_duration(now - health.outage_since)} "
            f"(last: {health.last_failure})"
        )
    else:
        why = "the API is rate-limiting this key and the poll's turn comes after"
    return KlingFxApiUnavailableError(f"GET {path}: not sent before the deadline: {why}")


class _Base:
    def __init__(self, health: ApiHealth, clock: Callable[[], float]) -> None:
        self.health = health
        self._clock = clock

    def report(self, role: Role, exc: BaseException | None) -> bool:
        """Record a request's outcome; marks ``exc`` as reported when the gate announced its cause.

        :returns: True when this answer ended an outage.
        """
        now = self._clock()
        outcome = classify(exc)
        recovered = False
        if outcome == "answered":
            recovered = self.health.answered(now, role)
        elif outcome == "throttled":
            retry_after = getattr(exc, "retry_after", None)
            recovered = self.health.throttled(
                now, role, retry_after if isinstance(retry_after, float | int) else None
            )
        else:
            self.health.failed(now, role, str(exc))
        if exc is not None and outcome != "answered" and self.health.troubled:
            setattr(exc, REPORTED_ATTR, True)
        return recovered


class SyncGate(_Base):
    """The gate of one sync hook (the worker-side wait, the sensor): one generation, one thread.

    :param health: the state.
    :param sleep: the sleep to wait with (tests pass a recorder).
    :param clock: the epoch clock.
    """

    def __init__(self, health: ApiHealth, sleep: Callable[[float], None], clock: Callable[[], float]) -> None:
        super().__init__(health, clock)
        self._sleep = sleep

    def acquire(self, deadline: float, path: str) -> Role:
        """Wait for this poll's turn; raises :class:`KlingFxApiUnavailableError` past ``deadline``."""
        counted = False
        while True:
            now = self._clock()
            at, role = self.health.ready_at(now)
            if at <= now:
                self.health.sent(now, role)
                return role
            if at > deadline:
                raise _unavailable(self.health, path, now)
            if self.health.in_outage and not counted:
                self.health.held += 1
                counted = True
            self._sleep(at - now)


@dataclass(eq=False)
class _Waiter:
    future: asyncio.Future[tuple[Role, float]]
    deadline: float
    spread: float
    path: str


class AsyncGate(_Base):
    """The gate every trigger of one event loop goes through for one API (base URL and key).

    Polls pass straight through while the API is healthy and unthrottled. Otherwise they queue, and
    one dispatcher task releases them: at the current rate, after a ``Retry-After`` pause, or one
    probe at a time during an outage. A held poll whose deadline passes gets
    :class:`KlingFxApiUnavailableError`.

    :param health: the state.
    :param sleep: the async sleep (tests inject one).
    :param clock: the epoch clock.
    """

    def __init__(
        self, health: ApiHealth, sleep: Callable[[float], Awaitable[Any]], clock: Callable[[], float]
    ) -> None:
        super().__init__(health, clock)
        self._sleep = sleep
        self._queue: deque[_Waiter] = deque()
        self._deadlines: list[tuple[float, int, _Waiter]] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        """Polls queued at the gate now."""
        return sum(1 for w in self._queue if not w.future.done())

    def try_acquire(self) -> Role | None:
        """This poll's turn at once, without waiting (the healthy case: no coroutine, no queue); else None."""
        if self._queue:
            return None
        now = self._clock()
        at, role = self.health.ready_at(now)
        if at > now:
            return None
        self.health.sent(now, role)
        return role

    async def acquire(self, deadline: float, path: str, spread: float = 0.0) -> Role:
        """Wait for this poll's turn.

        :param deadline: epoch seconds; past it the poll is not sent.
        :param path: the request path, for the error.
        :param spread: seconds over which held polls resume after an outage (the poll interval).
        :raises KlingFxApiUnavailableError: when ``deadline`` passes first.
        """
        while True:
            ready = self.try_acquire()
            if ready is not None:
                return ready
            waiter = _Waiter(asyncio.get_running_loop().create_future(), deadline, spread, path)
            self._queue.append(waiter)
            heapq.heappush(self._deadlines, (deadline, next(self._seq), waiter))
            if self.health.in_outage:
                self.health.held += 1
            self._wake.set()
            if self._dispatcher is None:
                # An empty context: the dispatcher outlives the trigger that started it, and its
                # lines belong in the process log, not in that trigger's task log.
                self._dispatcher = asyncio.get_running_loop().create_task(
                    self._dispatch(), context=contextvars.Context()
                )
            try:
                role, delay = await waiter.future
            except asyncio.CancelledError:
                if (
                    waiter.future.done()
                    and not waiter.future.cancelled()
                    and waiter.future.exception() is None
                ):
                    self.health.abandoned(waiter.future.result()[0])
                raise
            if delay <= 0:
                return role
            # Released after an outage: come back through the front door at this poll's share of the
            # interval, so the held polls do not all hit the API at once.
            await self._sleep(delay)

    def report(self, role: Role, exc: BaseException | None) -> bool:
        """Record a request's outcome; wakes the dispatcher when that changes what it waits for."""
        in_outage = self.health.in_outage
        recovered = super().report(role, exc)
        if recovered:
            self._release_spread()
        if role == "probe" or recovered or in_outage != self.health.in_outage or classify(exc) == "throttled":
            self._wake.set()
        return recovered

    def abandon(self, role: Role) -> None:
        """A request was cancelled before its outcome was known."""
        self.health.abandoned(role)
        self._wake.set()

    def _release_spread(self) -> None:
        waiters = [w for w in self._queue if not w.future.done()]
        self._queue.clear()
        self._deadlines.clear()
        n = len(waiters)
        for k, waiter in enumerate(waiters):
            waiter.future.set_result(("poll", max(1e-3, waiter.spread * k / n)))

    def _expire(self, now: float) -> float:
        """Fail the waiters whose deadline passed; returns the next deadline (or inf)."""
        while self._deadlines:
            deadline, _, waiter = self._deadlines[0]
            if waiter.future.done():
                heapq.heappop(self._deadlines)
                continue
            if deadline > now:
                return deadline
            heapq.heappop(self._deadlines)
            waiter.future.set_exception(_unavailable(self.health, waiter.path, now))
        return math.inf

    async def _dispatch(self) -> None:
        try:
            while True:
                now = self._clock()
                next_deadline = self._expire(now)
                while self._queue and self._queue[0].future.done():
                    self._queue.popleft()
                if not self._queue:
                    return
                at, role = self.health.ready_at(now)
                if at <= now:
                    waiter = self._queue.popleft()
                    self.health.sent(now, role)
                    waiter.future.set_result((role, 0.0))
                    continue
                self._wake.clear()
                await self._sleep_or_wake(min(at, next_deadline) - now)
        finally:
            self._dispatcher = None

    async def _sleep_or_wake(self, seconds: float) -> None:
        wake = asyncio.ensure_future(self._wake.wait())
        if math.isinf(seconds):
            await wake
            return
        nap = asyncio.ensure_future(self._sleep(max(0.0, seconds)))
        try:
            await asyncio.wait({wake, nap}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (wake, nap):
                task.cancel()


# ---------------------------------------------------------------------------------------------
# One gate per event loop and API
# ---------------------------------------------------------------------------------------------

_GateKey = tuple[str, str, float | None, Callable[[], float], Callable[[float], Awaitable[Any]]]
_GATES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[_GateKey, AsyncGate]] = (
    weakref.WeakKeyDictionary()
)


def _emit_in_process_log(level: int, message: str) -> None:
    # Airflow's triggerer routes a line to a trigger's task log by the context it is logged in; the
    # gate speaks for every trigger, so its lines go to the triggerer's own log.
    contextvars.Context().run(log.log, level, message)


def async_gate(
    base_url: str,
    api_key: str,
    *,
    max_rate: float | None,
    clock: Callable[[], float],
    sleep: Callable[[float], Awaitable[Any]],
) -> AsyncGate:
    """The running loop's gate for this API and key (created on first use).

    Keyed by a hash of the key, never the key. Hooks with another clock or sleep (tests) get
    their own gate, so injected time never mixes with real time.
    """
    gates = _GATES.setdefault(asyncio.get_running_loop(), {})
    key: _GateKey = (base_url, key_fingerprint(api_key), max_rate, clock, sleep)
    gate = gates.get(key)
    if gate is None:
        gate = gates[key] = AsyncGate(
            ApiHealth(name=base_url, emit=_emit_in_process_log, max_rate=max_rate), sleep, clock
        )
    return gate
