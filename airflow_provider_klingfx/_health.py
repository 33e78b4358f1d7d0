"""One view of the API's health per process (per event loop), shared by every poll it sends.

A triggerer polls thousands of generations with one key. Left alone, each trigger learns on its own
that the API rate-limits the key or is down: thousands of 429s, failures and log lines for one fact,
then a thundering herd when the API comes back. Here every poll (GET; a create is sent once, under
the retry policy) of one event loop to one API (base URL and key) asks one gate before it is sent and
tells it how the request went. :class:`ApiHealth` is the gate's state machine (no I/O, an injected
clock); :class:`AsyncGate` queues a triggerer loop's polls and releases them as it allows;
:class:`SyncGate` does it for the one generation a worker or a sensor follows.

**States**, and what each lets through:

* ``healthy``: every poll at once (paced at ``max_polls_per_second``, the connection's cap, if set).
* ``throttled``: polls paced at the learned ``rate``: sends are at least ``1/rate`` s apart and a
  late loop never catches up on missed slots, so a 1-second window holds at most ``rate + 1``;
  nothing before ``paused_until`` (``Retry-After``).
* ``outage``: polls held; one probe at a time, never inside a pause nor faster than the rate.
* ``recovery``: the polls waiting at the gate go out at ``rate``, in order, never at once.

**Events**: send; answer (any HTTP answer but 429 and 5xx); 429, with or without ``Retry-After``;
failure (connection failure, 5xx); cancel (a waiting or sent poll's trigger went away); deadline.

**Transitions**:

* 429, any state: ``throttled``. Entering it, or if the 429 answers a request sent after the last
  cut (counted off the requests in flight at the cut), outside a pause and ``DECREASE_HOLD`` after
  the last cut: the rate is cut to ``RATE_DECREASE`` of what the API accepted in the last second
  (if nothing: of what went out, or of the waiting polls' pace; at least ``MIN_RATE``).
  ``Retry-After: r`` pauses every poll until *now + min(r, MAX_PAUSE)*.
* time, in ``throttled`` and ``recovery``: the rate grows by ``RATE_INCREASE_SHARE`` of the rate cut
  from per second (additive increase), from the end of the hold and of the pause, up to the cap.
* ``throttled`` to ``recovery``: no 429 for ``THROTTLE_QUIET`` s counted from the pause's end, and
  the polls sent meanwhile used under 80 % of the rate's slots (at least 6: no luck at low rates).
* ``recovery`` to ``healthy``: no poll is waiting.
* ``OUTAGE_AFTER`` failures in a row (any trigger's), outside ``outage``: ``outage``. In it a failed
  probe sets the next a capped, jittered back-off later, a cancelled one lets the next poll probe,
  and failures of polls sent before it began are ignored.
* answer in ``outage``: ``throttled`` again if it was (same rate, quiet time restarts), else
  ``recovery`` at the waiting polls' own pace (each one poll per ``spread``, its poll interval, at
  least :data:`MIN_SPREAD`), else ``healthy``. 429 in ``outage``: ``throttled``, as above.
* deadline: a poll still waiting fails with :class:`KlingFxApiUnavailableError`, never sent later.
  cancel: a waiting poll leaves the queue; a sent probe frees its slot.

**Log lines**: one warning on entering and one on leaving ``throttled`` and ``outage``, with counts,
in the process log (an empty contextvars context); a poll that meets a failure the gate announced
logs it at DEBUG (:func:`was_reported`).
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
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from airflow_provider_klingfx.domain import KlingFxAPIError, KlingFxError, KlingFxTransportError

log = logging.getLogger(__name__)

Role = Literal["poll", "probe"]
State = Literal["healthy", "throttled", "outage", "recovery"]

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
#: Throttling ends after this many seconds without a 429 (after the pause) while the polls no longer
#: use the full rate.
THROTTLE_QUIET: Final = 30.0
#: Longest ``Retry-After`` pause honoured for everyone, in seconds.
MAX_PAUSE: Final = 120.0
#: A waiting poll counts as one poll per this many seconds at least in the pace after an outage.
MIN_SPREAD: Final = 1.0


def _format_duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.1f}min"


def key_fingerprint(api_key: str) -> str:
    """A stable name for a key that does not reveal it (the gates are shared per key)."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


@dataclass
class ApiHealth:
    """The gate's state machine (the module docstring) for one API and key; no I/O.

    Ask :meth:`ready_at` before sending, call :meth:`sent` when sending, then one of :meth:`answered`,
    :meth:`throttled` (429), :meth:`failed` (connection failure, 5xx) or :meth:`abandoned`. A queue
    counts its waiting polls with :meth:`hold` and :meth:`unhold`.

    :param name: how the API is named in log lines (its base URL).
    :param emit: called with ``(logging level, message)`` on each state change.
    :param max_rate: polls per second never exceeded (the connection's ``max_polls_per_second``).
    :param random: a ``[0, 1)`` random source for the probe jitter (tests pass a fixed one).
    """

    name: str
    emit: Callable[[int, str], None]
    max_rate: float | None = None
    random: Callable[[], float] = random.random
    state: State = field(init=False, default="healthy")
    rate: float | None = field(init=False, default=None)  # polls per second; None: no limit
    next_slot: float = field(init=False, default=0.0)
    paused_until: float = field(init=False, default=0.0)
    waiting: int = field(init=False, default=0)  # polls queued now ...
    waiting_pace: float = field(init=False, default=0.0)  # ... and the sum of their 1 / spread
    in_flight: int = field(init=False, default=0)  # sent, outcome not reported yet
    owed: int = field(init=False, default=0)  # outcomes still due from requests sent before the cut
    # throttling (and growth in recovery); the window counts sends since the quiet time began
    throttled_since: float | None = field(init=False, default=None)
    decrease_hold_until: float = field(init=False, default=-math.inf)
    increase_per_second: float = field(init=False, default=0.0)
    grow_from: float = field(init=False, default=0.0)
    quiet_since: float = field(init=False, default=0.0)
    window_rate: float = field(init=False, default=0.0)
    window_sent: int = field(init=False, default=0)
    episode_sent: int = field(init=False, default=0)
    episode_429s: int = field(init=False, default=0)
    # outage
    failures_in_row: int = field(init=False, default=0)
    outage_since: float | None = field(init=False, default=None)
    probe_in_flight: bool = field(init=False, default=False)
    probe_failures: int = field(init=False, default=0)
    next_probe_at: float = field(init=False, default=0.0)
    last_failure: str = field(init=False, default="")
    # what went out, and what the API accepted, in the last second
    _sent_times: deque[float] = field(init=False, default_factory=deque)
    _accepted_times: deque[float] = field(init=False, default_factory=deque)

    def __post_init__(self) -> None:
        self.rate = self.max_rate

    @property
    def troubled(self) -> bool:
        """True while an outage or throttling is on (and has been announced)."""
        return self.state == "outage" or self.throttled_since is not None

    def ready_at(self, now: float) -> tuple[float, Role]:
        """``(when, as what)`` the next request may be sent; ``math.inf``: when the probe answers.

        :param now: current epoch seconds.
        """
        if self.state == "outage":
            return (math.inf if self.probe_in_flight else self._slot(max(now, self.next_probe_at))), "probe"
        self._advance(now)
        return self._slot(now), "poll"

    def sent(self, now: float, role: Role) -> None:
        """A request goes out now."""
        self.in_flight += 1
        self.probe_in_flight = self.probe_in_flight or role == "probe"
        if self.rate is not None:
            self.next_slot = max(now, self.next_slot) + 1.0 / self.rate
        _count(self._sent_times, now)
        self.episode_sent += 1
        self.window_sent += now >= self.quiet_since

    def hold(self, spread: float) -> None:
        """A poll starts waiting in a queue; ``spread`` is its poll interval."""
        self.waiting += 1
        self.waiting_pace += 1.0 / max(spread, MIN_SPREAD)

    def unhold(self, spread: float) -> None:
        """A waiting poll was released, failed at its deadline or was cancelled."""
        self.waiting -= 1
        self.waiting_pace = self.waiting_pace - 1.0 / max(spread, MIN_SPREAD) if self.waiting else 0.0

    def answered(self, now: float, role: Role) -> bool:
        """The API answered (anything but 429 or 5xx). Returns True when this ended an outage."""
        self._settle(role)
        _count(self._accepted_times, now)
        self.failures_in_row = 0
        return self._end_outage(now, throttled=False)

    def throttled(self, now: float, role: Role, retry_after: float | None) -> bool:
        """The API answered 429. Returns True when this ended an outage (the API is up, only busy)."""
        stale = self._settle(role)
        self.failures_in_row = 0
        recovered = self._end_outage(now, throttled=True)
        entering = self.throttled_since is None
        if entering or (not stale and now >= max(self.paused_until, self.decrease_hold_until)):
            self._cut(now)
        asked = retry_after if retry_after is not None and retry_after > 0 else 0.0
        self.paused_until = max(self.paused_until, now + min(asked, MAX_PAUSE))
        self.state = "throttled"
        # Nothing is learned inside a pause: growth and quiet time count from its end.
        self.grow_from = max(self.grow_from, self.paused_until)
        self._new_window(max(now, self.paused_until))
        if entering:
            self.throttled_since, self.episode_sent, self.episode_429s = now, 0, 0
            pause = f"; pausing them {_format_duration(self.paused_until - now)}" if asked else ""
            if asked > MAX_PAUSE:
                pause += f" (the API asked for {_format_duration(asked)})"
            elif asked:
                pause += " as the API asked"
            self.emit(
                logging.WARNING,
                f"The AI/ML API at {self.name} is rate-limiting this key (429): polls from this process "
                f"slowed to {self.rate or 0:.1f}/s, for every waiting generation{pause}",
            )
        self.episode_429s += 1
        return recovered

    def failed(self, now: float, role: Role, reason: str) -> None:
        """A connection failure or a 5xx."""
        self._settle(role)
        self.last_failure = reason
        if self.state == "outage":
            if role == "probe":
                self.probe_failures += 1
                self.next_probe_at = now + self._probe_wait()
            return  # a poll sent just before the outage began: already accounted for
        self.failures_in_row += 1
        if self.failures_in_row >= OUTAGE_AFTER:
            self.state, self.outage_since, self.probe_failures = "outage", now, 0
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
        self._settle(role)

    def _slot(self, at: float) -> float:
        at = max(at, self.paused_until)
        return at if self.rate is None else max(at, self.next_slot)

    def _settle(self, role: Role) -> bool:
        """One request's outcome is in; True when it was sent before the last cut."""
        self.in_flight = max(0, self.in_flight - 1)
        self.probe_in_flight = self.probe_in_flight and role != "probe"
        # Taken to come back in the order they went out: close enough (a misattributed 429 only
        # changes which of two counts), and it needs no id per request.
        if self.owed:
            self.owed -= 1
            return True
        return False

    def _cut(self, now: float) -> None:
        accepted = len(_trim(self._accepted_times, now))
        # Nothing accepted (a probe after an outage): what went out, or what the waiting polls want.
        base = float(accepted or max(len(_trim(self._sent_times, now)), self.waiting_pace))
        if self.rate is not None:
            base = min(base, self.rate) if base else self.rate
        self.rate = max(MIN_RATE, base * RATE_DECREASE)
        self.increase_per_second = max(MIN_RATE, base) * RATE_INCREASE_SHARE
        self.decrease_hold_until = self.grow_from = now + DECREASE_HOLD
        self.next_slot = max(self.next_slot, now + 1.0 / self.rate)
        self.owed = self.in_flight  # their 429s were earned by the old rate

    def _new_window(self, start: float) -> None:
        self.quiet_since, self.window_sent, self.window_rate = start, 0, self.rate or 0.0

    def _probe_wait(self) -> float:
        # Exponential, capped, with "equal jitter": between half and all of the step, so probes of
        # several processes (two triggerers, a worker) do not land together.
        step = min(PROBE_MAX_WAIT, PROBE_INITIAL_WAIT * 2.0**self.probe_failures)
        return step * (0.5 + 0.5 * self.random())

    def _end_outage(self, now: float, *, throttled: bool) -> bool:
        if self.outage_since is None:
            return False
        since, self.outage_since = self.outage_since, None
        self.failures_in_row, self.probe_in_flight = 0, False
        if self.throttled_since is not None:
            # An outage teaches nothing about the rate limit: its time is neither quiet nor growth.
            self.state, self.grow_from = "throttled", max(now, self.grow_from)
            self._new_window(max(now, self.paused_until))
            then = f"resuming them at the throttled rate, {self.rate or 0:.1f}/s"
        elif self.waiting and not throttled:
            self.state, self.rate = "recovery", min(self.waiting_pace, self.max_rate or math.inf)
            self.increase_per_second = self.rate * RATE_INCREASE_SHARE
            self.grow_from = self.next_slot = now
            then = f"resuming them at {self.rate:.1f}/s, over {_format_duration(self.waiting / self.rate)}"
        else:
            self.state, self.rate = "healthy", self.max_rate
            then = "but it rate-limits this key" if throttled else "resuming them"
        self.emit(
            logging.WARNING,
            f"The AI/ML API at {self.name} answers again after {_format_duration(now - since)}: "
            f"{self.probe_failures + 1} probe(s) sent, {self.waiting} poll(s) waiting; {then}",
        )
        return True

    def _advance(self, now: float) -> None:
        """The transitions time makes: growth, the end of throttling, the end of recovery."""
        if self.state == "healthy":
            return
        if self.rate is not None and now > self.grow_from:
            self.rate += self.increase_per_second * (now - self.grow_from)
            self.rate, self.grow_from = min(self.rate, self.max_rate or math.inf), now
        if self.state == "throttled" and now - self.quiet_since >= THROTTLE_QUIET:
            # Polls that use the rate fill every slot of the window (the rate only grows in it):
            # they never pass, down to MIN_RATE (6 slots in 30 s).
            if self.window_sent >= 0.8 * self.window_rate * (now - self.quiet_since):
                self._new_window(now)
                return
            self.emit(
                logging.WARNING,
                f"The AI/ML API at {self.name} no longer rate-limits this key: throttled for "
                f"{_format_duration(now - (self.throttled_since or now))}, {self.episode_sent} poll(s) "
                f"sent, {self.episode_429s} answered 429; polls from this process run at their own pace "
                "again (any still waiting first, at the rate)",
            )
            self.state, self.throttled_since = "recovery", None
        if self.state == "recovery" and not self.waiting:
            self.state, self.rate = "healthy", self.max_rate


def _trim(times: deque[float], now: float) -> deque[float]:
    while times and times[0] <= now - 1.0:
        times.popleft()
    return times


def _count(times: deque[float], now: float) -> None:
    times.append(now)
    _trim(times, now)


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
    elif health.paused_until > now:
        why = f"the API asked for a pause, {_format_duration(health.paused_until - now)} more"
    else:
        why = "the API is rate-limiting this key and the poll's turn comes after"
    return KlingFxApiUnavailableError(f"GET {path}: not sent before the deadline: {why}")


class _Base:
    def __init__(self, health: ApiHealth, clock: Callable[[], float]) -> None:
        self.health = health
        self._clock = clock

    def report(self, role: Role, exc: BaseException | None) -> bool:
        """Record a request's outcome; marks ``exc`` as reported when the gate announced its cause.

        :param role: what the gate's ``acquire`` returned for the request.
        :param exc: the request's error; None when it succeeded.
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

    def abandon(self, role: Role) -> None:
        """A request was cancelled before its outcome was known.

        :param role: what the gate's ``acquire`` returned for the request.
        """
        self.health.abandoned(role)

    @contextmanager
    def outcome(self, role: Role) -> Iterator[None]:
        """Around the one request a turn was given for: reports how it ended (an answer, a
        :class:`~airflow_provider_klingfx.domain.KlingFxError`, or, cancelled, nothing known).

        :param role: what the gate's ``acquire`` returned for the request.
        """
        try:
            yield
        except KlingFxError as exc:
            self.report(role, exc)
            raise
        except BaseException:  # cancelled (the trigger went away) or interrupted: no outcome
            self.abandon(role)
            raise
        self.report(role, None)


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
        """Wait for this poll's turn.

        :param deadline: epoch seconds; a turn that comes later is not waited for.
        :param path: the request path, for the error.
        :raises KlingFxApiUnavailableError: when the turn comes after ``deadline``.
        """
        while True:
            now = self._clock()
            at, role = self.health.ready_at(now)
            if at <= now:
                self.health.sent(now, role)
                return role
            if at > deadline:
                raise _unavailable(self.health, path, now)
            self._sleep(at - now)


@dataclass(eq=False)
class _Waiter:
    future: asyncio.Future[Role]
    deadline: float
    spread: float
    path: str
    live: bool = True  # still queued


class AsyncGate(_Base):
    """The gate every trigger of one event loop goes through for one API (base URL and key).

    Polls pass straight through while the API is healthy (and under the cap). Otherwise they queue
    and one dispatcher task releases them in order, as :meth:`ApiHealth.ready_at` allows; a poll
    still queued at its deadline gets :class:`KlingFxApiUnavailableError`.

    :param health: the state.
    :param sleep: the async sleep (tests inject one).
    :param clock: the epoch clock.
    """

    def __init__(
        self, health: ApiHealth, sleep: Callable[[float], Awaitable[Any]], clock: Callable[[], float]
    ) -> None:
        super().__init__(health, clock)
        self._sleep = sleep
        # The waiters in arrival order, and by deadline. A waiter no longer live leaves either at
        # its front, or in _finish's sweep, which keeps both within a multiple of the live ones.
        self._queue: deque[_Waiter] = deque()
        self._deadlines: list[tuple[float, int, _Waiter]] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        """Polls queued at the gate now."""
        return self.health.waiting

    def try_acquire(self) -> Role | None:
        """This poll's turn at once, without waiting (the healthy case: no coroutine, no queue); else None."""
        if self.health.waiting:
            return None  # first come, first served
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
        :param spread: the poll's interval: after an outage the waiting polls resume at the pace
            their intervals make.
        :raises KlingFxApiUnavailableError: when ``deadline`` passes first.
        """
        ready = self.try_acquire()
        if ready is not None:
            return ready
        waiter = _Waiter(asyncio.get_running_loop().create_future(), deadline, spread, path)
        self._queue.append(waiter)
        heapq.heappush(self._deadlines, (deadline, next(self._seq), waiter))
        self.health.hold(spread)
        self._wake.set()
        if self._dispatcher is None:
            # An empty context: the dispatcher outlives the trigger that started it, and its
            # lines belong in the process log, not in that trigger's task log.
            # (create_task copies the context it is called in; its context= keyword is 3.11+.)
            self._dispatcher = contextvars.Context().run(
                asyncio.get_running_loop().create_task, self._dispatch()
            )
        try:
            return await waiter.future
        except asyncio.CancelledError:
            if waiter.live:
                self._finish(waiter)
            elif not waiter.future.cancelled() and waiter.future.exception() is None:
                self.abandon(waiter.future.result())  # released, then cancelled: never sent
            raise

    def report(self, role: Role, exc: BaseException | None) -> bool:
        """Record a request's outcome; wakes the dispatcher when that may let a poll out sooner.

        :param role: what :meth:`acquire` returned for the request.
        :param exc: the request's error; None when it succeeded.
        :returns: True when this answer ended an outage.
        """
        recovered = super().report(role, exc)
        if role == "probe" or recovered:
            self._wake.set()
        return recovered

    def abandon(self, role: Role) -> None:
        """A request was cancelled before its outcome was known; wakes the dispatcher.

        :param role: what :meth:`acquire` returned for the request.
        """
        super().abandon(role)
        self._wake.set()

    def _finish(self, waiter: _Waiter) -> None:
        waiter.live = False
        self.health.unhold(waiter.spread)
        if len(self._queue) + len(self._deadlines) > 4 * self.health.waiting + 32:
            self._queue = deque(w for w in self._queue if w.live)
            self._deadlines = [entry for entry in self._deadlines if entry[2].live]
            heapq.heapify(self._deadlines)

    def _expire(self, now: float) -> float:
        """Fail the waiters whose deadline passed; returns the next deadline (or inf)."""
        while self._deadlines:
            deadline, _, waiter = self._deadlines[0]
            if waiter.live and deadline > now:
                return deadline
            heapq.heappop(self._deadlines)
            if waiter.live:
                self._finish(waiter)
                waiter.future.set_exception(_unavailable(self.health, waiter.path, now))
        return math.inf

    async def _dispatch(self) -> None:
        try:
            while True:
                now = self._clock()
                next_deadline = self._expire(now)
                while self._queue and not self._queue[0].live:
                    self._queue.popleft()
                if not self._queue:
                    return
                at, role = self.health.ready_at(now)
                if at <= now:
                    waiter = self._queue.popleft()
                    self._finish(waiter)
                    self.health.sent(now, role)
                    waiter.future.set_result(role)
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
