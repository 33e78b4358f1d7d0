"""The one retry story: which layer answers which failure, and the retry policy of one call.

Three kinds of request, three layers, and each failure answered by exactly one of them:

=====================  =======================  ==============================  =====================
failure                create (POST)            poll (trigger, worker-side       one-off read (reattach,
                                                wait, sensor)                    connection test, photo
                                                                                 header, video download)
=====================  =======================  ==============================  =====================
could not connect      :class:`RetryPolicy`:    the gate counts it (an outage   :class:`RetryPolicy`
(nothing was sent)     sent again               after 5 in a row); the watch
                                                polls again at its interval
lost, read timeout     not sent again:          as above                        :class:`RetryPolicy`
(maybe received)       ambiguous, no retry
429                    :class:`RetryPolicy`,    the gate: the rate drops for    :class:`RetryPolicy`,
                       after ``Retry-After``    every poll, ``Retry-After``     after ``Retry-After``
                                                pauses them all
5xx                    503 sent again; 500,     the gate counts it; the watch   :class:`RetryPolicy`
                       502, 504 ambiguous       polls again at its interval
outage                 :class:`RetryPolicy`     the gate holds every poll and   :class:`RetryPolicy`
                       gives up (nothing paid)  probes with one at a time
unknown id (404)       n/a                      the watch polls on for 60 s     reattach: submit anew;
                                                after the create, then fails    others: fail
=====================  =======================  ==============================  =====================

* **create**: :class:`RetryPolicy` sends a create again only when it provably did not reach the API
  (:func:`~airflow_provider_klingfx._api.is_safe_to_resubmit`); anything else that failed after it may
  have reached the API fails without retries, for no one (not even Airflow) may pay twice.
* **poll**: one attempt each; :class:`~airflow_provider_klingfx._polling.GenerationWatch` decides when
  the next one goes, and the shared gate (:mod:`~airflow_provider_klingfx._health`) when it may be
  sent. With the connection's ``poll_coordination: per_trigger`` there is no gate: the watch itself
  backs off after each failure in a row (exponential, jittered, at least ``Retry-After``).
* **one-off read**: :class:`RetryPolicy`, idempotent: every transient failure is tried again.

:class:`RetryPolicy` is capped exponential back-off with full jitter; a ``Retry-After`` wins over
the computed wait. An optional absolute deadline stops the retries before a wait would cross it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import tenacity

from airflow_provider_klingfx._api import is_retryable

log = logging.getLogger(__name__)


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
            logger.warning(
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
