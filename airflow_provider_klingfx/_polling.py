"""The polling logic shared by the worker-side wait, the trigger and the sensor, without any I/O.

The caller fetches, hands the result (a generation or an error) and the current time to
:meth:`GenerationWatch.observe`, then logs the returned messages and sleeps the returned delay.
Keeping the decisions here means the sync and async loops are two thin shells that cannot disagree
about deadlines, transient errors or what gets logged.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_provider_klingfx._api import is_transient
from airflow_provider_klingfx._health import was_reported
from airflow_provider_klingfx.domain import KlingFxAPIError

if TYPE_CHECKING:
    from airflow_provider_klingfx._api import ApiSettings
    from airflow_provider_klingfx.domain import Generation, KlingFxError

#: Shortest sleep between polls, so a misconfigured interval cannot hammer the API.
MIN_POLL_INTERVAL = 0.05
#: Longest wait between two polls of a trigger that backs off on its own (``per_trigger``), seconds.
BACKOFF_MAX = 60.0
#: Seconds after its submission during which a generation the API does not know (404) is polled on.
#: An API that is briefly eventually consistent answers 404 just after a create; ending the wait
#: there would fail the task, and its retry would pay for a new generation. Past it, 404 is final.
NOT_FOUND_GRACE_SECONDS = 60.0

# The adaptive schedule's shape. Tuned (benchmarks/bench_polls.py) on the emulator's spread of
# durations (uniform 60-180 s) and a lognormal one around the vendor's "about two minutes": it halves
# the polls of the fixed interval at a better median detection latency on both.
#: No poll between the first look and this fraction of the expected duration.
ADAPTIVE_DENSE_FROM = 0.82
#: End of the dense window, as a multiple of the expected duration; the interval backs off after it.
ADAPTIVE_DENSE_UNTIL = 1.5
#: The interval inside the dense window, as a fraction of the poll interval.
ADAPTIVE_DENSE_FACTOR = 0.7
#: Past the dense window, seconds of interval added per second of overrun ...
ADAPTIVE_BACKOFF_SLOPE = 0.25
#: ... up to this multiple of the poll interval, so a stuck generation costs few polls.
ADAPTIVE_MAX_FACTOR = 3.0


def adaptive_poll_delay(
    elapsed: float,
    *,
    expected_seconds: float,
    interval: float,
    dense_from: float = ADAPTIVE_DENSE_FROM,
    dense_factor: float = ADAPTIVE_DENSE_FACTOR,
) -> float:
    """Seconds to wait before the next poll of a generation submitted ``elapsed`` seconds ago.

    Stateless (it depends only on ``elapsed``), so a trigger re-created after a triggerer restart
    keeps its schedule. With ``expected_seconds=120`` and ``interval=10``: after the first look, no
    poll until 98 s, then every 7 s until 180 s, then an interval growing to 30 s.

    :param elapsed: seconds since the generation was submitted.
    :param expected_seconds: how long a generation usually takes.
    :param interval: the poll interval, the scale of the dense and back-off intervals.
    :param dense_from: start of the dense window, as a fraction of ``expected_seconds``.
    :param dense_factor: the dense interval, as a fraction of ``interval``.
    """
    start = dense_from * expected_seconds
    if elapsed < start:
        return start - elapsed
    dense = dense_factor * interval
    end = ADAPTIVE_DENSE_UNTIL * expected_seconds
    if elapsed < end:
        return dense
    return min(ADAPTIVE_MAX_FACTOR * interval, dense + ADAPTIVE_BACKOFF_SLOPE * (elapsed - end))


@dataclass
class PollStep:
    """What to do after one poll.

    :param finished: the terminal generation (completed or failed), when it is done.
    :param timed_out: True when the deadline passed before a terminal status.
    :param sleep: seconds to wait before the next poll.
    :param messages: ``(logging level, text)`` pairs to log.
    """

    finished: Generation | None = None
    timed_out: bool = False
    sleep: float = 0.0
    messages: list[tuple[int, str]] = field(default_factory=list)


@dataclass
class GenerationWatch:
    """Follows one generation from its polls: status changes, transient failures and the deadline.

    :param generation_id: the vendor's generation id.
    :param deadline: absolute epoch seconds after which the wait times out.
    :param poll_interval: seconds between polls.
    :param submitted_at: epoch seconds of submission, to report elapsed time (defaults to the first
        observation).
    :param schedule: ``fixed`` (every ``poll_interval``) or ``adaptive``
        (:func:`adaptive_poll_delay`).
    :param expected_seconds: how long a generation usually takes, for the adaptive schedule.
    :param backoff: back off after each failure in a row (exponential from the poll interval, up to
        :data:`BACKOFF_MAX`, equal jitter, at least the ``Retry-After`` the API asked): the polls of
        a ``per_trigger`` connection, which no shared gate paces.
    :param random: a ``[0, 1)`` source for the jitter (tests pass a seeded one).
    """

    generation_id: str
    deadline: float
    poll_interval: float
    submitted_at: float | None = None
    schedule: str = "fixed"
    expected_seconds: float = 120.0
    backoff: bool = False
    random: Callable[[], float] = field(default=random.random, repr=False)
    last_status: str | None = None
    last_error: str | None = None
    polls: int = 0
    consecutive_failures: int = 0
    unreported_failures: int = 0

    @classmethod
    def for_settings(cls, settings: ApiSettings, generation_id: str, **kwargs: Any) -> GenerationWatch:
        """A watch with the connection's poll schedule, and its own back-off where no gate paces it.

        :param settings: the connection's settings.
        :param generation_id: the vendor's generation id.
        :param kwargs: the other fields (``deadline``, ``poll_interval``, ``submitted_at``).
        """
        return cls(
            generation_id,
            schedule=settings.poll_schedule,
            expected_seconds=settings.expected_seconds,
            backoff=settings.poll_coordination != "shared",
            **kwargs,
        )

    def elapsed(self, now: float) -> float:
        """Seconds since submission."""
        return max(0.0, now - (self.submitted_at if self.submitted_at is not None else now))

    def observe(self, result: Generation | KlingFxError, now: float) -> PollStep:
        """Digest one poll's result.

        :param result: the fetched generation, or the error the poll raised (one attempt: see _retry).
        :param now: current epoch seconds.
        :raises KlingFxError: ``result`` itself when it is an error that waiting cannot fix
            (bad key, unknown generation, ...).
        """
        if self.submitted_at is None:
            self.submitted_at = now
        self.polls += 1
        step = PollStep()
        elapsed = self.elapsed(now)
        if isinstance(result, BaseException):
            if (
                isinstance(result, KlingFxAPIError)
                and result.status_code == 404
                and elapsed < NOT_FOUND_GRACE_SECONDS
            ):
                result = KlingFxAPIError(
                    404,
                    f"not known to the API yet, {elapsed:.0f}s after its submission; polling on for up to "
                    f"{NOT_FOUND_GRACE_SECONDS:.0f}s, as an API can be briefly eventually consistent",
                    method=result.method,
                    path=result.path,
                )
            elif not is_transient(result):
                raise result
            self.consecutive_failures += 1
            self.last_error = str(result)
            # A failure the shared gate has announced (outage, throttling) is logged quietly: the
            # process log has the one line about it.
            reported = was_reported(result)
            if not reported:
                self.unreported_failures += 1
            step.messages.append(
                (
                    logging.DEBUG if reported else logging.WARNING,
                    f"Generation {self.generation_id}: waiting out a transient API error "
                    f"({self.consecutive_failures} in a row, {max(0.0, self.deadline - now):.0f}s "
                    f"left before the deadline): {result}",
                )
            )
        else:
            if self.unreported_failures:
                step.messages.append(
                    (
                        logging.INFO,
                        f"Generation {self.generation_id}: API reachable again after "
                        f"{self.consecutive_failures} failed poll(s)",
                    )
                )
            self.consecutive_failures = 0
            self.unreported_failures = 0
            if result.status != self.last_status:
                level = logging.INFO if result.is_known_status else logging.WARNING
                note = "" if result.is_known_status else " (unknown status, treated as still running)"
                step.messages.append(
                    (level, f"Generation {self.generation_id} is {result.status}{note} after {elapsed:.0f}s")
                )
                self.last_status = result.status
            if not result.is_pending:
                step.finished = result
                return step
        remaining = self.deadline - now
        if remaining <= 0:
            step.timed_out = True
            return step
        delay = self.next_delay(elapsed)
        if self.backoff and self.consecutive_failures:
            wait = min(BACKOFF_MAX, self.poll_interval * 2.0 ** (self.consecutive_failures - 1))
            retry_after = getattr(result, "retry_after", None)
            delay = max(wait * (0.5 + 0.5 * self.random()), retry_after or 0.0)
        step.sleep = max(MIN_POLL_INTERVAL, min(delay, remaining))
        return step

    def next_delay(self, elapsed: float) -> float:
        """Seconds until the next poll under this watch's schedule, ``elapsed`` after submission."""
        if self.schedule == "adaptive":
            return adaptive_poll_delay(
                elapsed, expected_seconds=self.expected_seconds, interval=self.poll_interval
            )
        return self.poll_interval
