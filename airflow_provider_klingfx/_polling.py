"""The polling logic shared by the worker-side wait, the trigger and the sensor, without any I/O.

The caller fetches, hands the result (a generation or an error) and the current time to
:meth:`GenerationWatch.observe`, then logs the returned messages and sleeps the returned delay.
Keeping the decisions here means the sync and async loops are two thin shells that cannot disagree
about deadlines, transient errors or what gets logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from airflow_provider_klingfx._api import is_transient

if TYPE_CHECKING:
    from airflow_provider_klingfx.domain import Generation, KlingFxError

#: Shortest sleep between polls, so a misconfigured interval cannot hammer the API.
MIN_POLL_INTERVAL = 0.05


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
    """

    generation_id: str
    deadline: float
    poll_interval: float
    submitted_at: float | None = None
    last_status: str | None = None
    last_error: str | None = None
    polls: int = 0
    consecutive_failures: int = 0

    def elapsed(self, now: float) -> float:
        """Seconds since submission."""
        return max(0.0, now - (self.submitted_at if self.submitted_at is not None else now))

    def observe(self, result: Generation | KlingFxError, now: float) -> PollStep:
        """Digest one poll's result.

        :param result: the fetched generation, or the error the fetch raised after its own retries.
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
            if not is_transient(result):
                raise result
            self.consecutive_failures += 1
            self.last_error = str(result)
            step.messages.append(
                (
                    logging.WARNING,
                    f"Generation {self.generation_id}: waiting out a transient API error "
                    f"({self.consecutive_failures} in a row, {max(0.0, self.deadline - now):.0f}s "
                    f"left before the deadline): {result}",
                )
            )
        else:
            if self.consecutive_failures:
                step.messages.append(
                    (
                        logging.INFO,
                        f"Generation {self.generation_id}: API reachable again after "
                        f"{self.consecutive_failures} failed poll(s)",
                    )
                )
            self.consecutive_failures = 0
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
        step.sleep = max(MIN_POLL_INTERVAL, min(self.poll_interval, remaining))
        return step
