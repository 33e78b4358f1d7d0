"""One retry policy (tenacity) for the sync and async paths.

Capped exponential back-off with full jitter; a ``Retry-After`` from the API wins over the
computed wait. What may be retried is decided by :func:`airflow_provider_klingfx._api.is_retryable`.
An optional absolute deadline stops the retries before a wait would cross it, so one call never
runs past the deadline of the wait it belongs to.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import tenacity

from airflow_provider_klingfx._api import is_retryable
from airflow_provider_klingfx._health import was_reported

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How one HTTP call is retried.

    :param max_attempts: attempts per call, the first included.
    :param initial_wait: scale of the first back-off, in seconds.
    :param max_wait: cap of one back-off, in seconds.
    """

    max_attempts: int = 5
    initial_wait: float = 0.5
    max_wait: float = 30.0

    def wait_seconds(self, retry_state: tenacity.RetryCallState) -> float:
        """Back-off before the next attempt: ``Retry-After`` if the API sent one, else jittered."""
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        retry_after = getattr(exc, "retry_after", None)
        if isinstance(retry_after, int | float) and retry_after > 0:
            return float(min(retry_after, self.max_wait * 4))
        jittered = tenacity.wait_random_exponential(multiplier=self.initial_wait, max=self.max_wait)
        return float(jittered(retry_state))

    def _kwargs(
        self,
        *,
        idempotent: bool,
        what: str,
        logger: Any,
        deadline: float | None,
        clock: Callable[[], float],
    ) -> dict[str, Any]:
        logger = logger or log

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            wait = state.next_action.sleep if state.next_action else 0.0
            # An outage or throttling the shared gate has announced: one line in the process log
            # says it, not one per poll (see airflow_provider_klingfx._health).
            level = logging.DEBUG if exc is not None and was_reported(exc) else logging.WARNING
            logger.log(
                level,
                "%s failed (attempt %d of %d): %s; retrying in %.1fs",
                what,
                state.attempt_number,
                self.max_attempts,
                exc,
                wait,
            )

        stop: Any = tenacity.stop_after_attempt(self.max_attempts)
        if deadline is not None:
            # tenacity computes the next wait before asking stop, so a wait that would end past the
            # deadline is never slept: the caller's deadline logic takes over at once.
            stop = stop | (lambda state: clock() + state.upcoming_sleep >= deadline)
        return {
            "retry": tenacity.retry_if_exception(lambda e: is_retryable(e, idempotent=idempotent)),
            "stop": stop,
            "wait": self.wait_seconds,
            "before_sleep": before_sleep,
            "reraise": True,
        }

    def retrying(
        self,
        *,
        idempotent: bool,
        what: str,
        sleep: Callable[[float], None],
        logger: Any = None,
        deadline: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> tenacity.Retrying:
        """A sync retrier.

        :param idempotent: True for fetches (retry every transient error), False for creates.
        :param what: the call, for the log line.
        :param sleep: the sleep to use (tests pass a recorder).
        :param logger: where retries are logged.
        :param deadline: epoch seconds; no retry wait may end past it.
        :param clock: the epoch clock the deadline is read against.
        """
        return tenacity.Retrying(
            sleep=sleep,
            **self._kwargs(idempotent=idempotent, what=what, logger=logger, deadline=deadline, clock=clock),
        )

    def async_retrying(
        self,
        *,
        idempotent: bool,
        what: str,
        sleep: Callable[[float], Awaitable[Any]],
        logger: Any = None,
        deadline: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> tenacity.AsyncRetrying:
        """The async twin of :meth:`retrying`, with the same predicate, stop and wait."""
        return tenacity.AsyncRetrying(
            sleep=sleep,
            **self._kwargs(idempotent=idempotent, what=what, logger=logger, deadline=deadline, clock=clock),
        )

    def call(
        self,
        fn: Callable[[], T],
        *,
        idempotent: bool,
        what: str,
        sleep: Callable[[float], None],
        logger: Any = None,
        deadline: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> T:
        """Call ``fn`` under this policy: the first attempt bare, the rest through :meth:`retrying`.

        Nearly every call succeeds at once. A triggerer polling 5,000 generations spends most of its
        per-poll CPU outside the HTTP request itself in tenacity's machinery and the garbage it leaves
        (``make bench``: 1.78x the CPU of a bare GET loop with a retrier per call); so the retrier is
        built only once a first attempt has failed, and that failure is replayed to it as its
        attempt 1. Waits, stop and log lines are then exactly those of :meth:`retrying`.

        :param fn: the call (no arguments).
        :param idempotent: True for fetches (retry every transient error), False for creates.
        :param what: the call, for the log line.
        :param sleep: the sleep to use (tests pass a recorder).
        :param logger: where retries are logged.
        :param deadline: epoch seconds; no retry wait may end past it.
        :param clock: the epoch clock the deadline is read against.
        """
        try:
            return fn()
        except Exception as exc:
            if self.max_attempts <= 1 or not is_retryable(exc, idempotent=idempotent):
                raise
            first_failure = exc
        retrying = self.retrying(
            idempotent=idempotent, what=what, sleep=sleep, logger=logger, deadline=deadline, clock=clock
        )
        for attempt in retrying:
            with attempt:
                _replay(first_failure, attempt)
                return fn()
        raise AssertionError("unreachable")  # pragma: no cover - reraise=True

    async def acall(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        idempotent: bool,
        what: str,
        sleep: Callable[[float], Awaitable[Any]],
        logger: Any = None,
        deadline: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> T:
        """The async twin of :meth:`call`, through :meth:`async_retrying`."""
        try:
            return await fn()
        except Exception as exc:
            if self.max_attempts <= 1 or not is_retryable(exc, idempotent=idempotent):
                raise
            first_failure = exc
        retrying = self.async_retrying(
            idempotent=idempotent, what=what, sleep=sleep, logger=logger, deadline=deadline, clock=clock
        )
        async for attempt in retrying:
            with attempt:
                _replay(first_failure, attempt)
                return await fn()
        raise AssertionError("unreachable")  # pragma: no cover - reraise=True


def _replay(first_failure: Exception, attempt: tenacity.AttemptManager) -> None:
    """Raise the already-seen failure as tenacity's attempt 1, so it counts and sets the back-off."""
    if attempt.retry_state.attempt_number == 1:
        raise first_failure
