"""Trigger that polls a Kling effects generation in the triggerer until it finishes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_provider_klingfx._polling import MIN_POLL_INTERVAL, GenerationWatch
from airflow_provider_klingfx.domain import (
    Generation,
    KlingFxAPIError,
    KlingFxAuthError,
    KlingFxConnectionConfigError,
    KlingFxConnectionLookupError,
    KlingFxError,
    Usage,
    abandoned_notice,
    merge_usage,
)

#: ``status`` values of the one event the trigger yields.
EVENT_SUCCESS = "success"
EVENT_ERROR = "error"
EVENT_TIMEOUT = "timeout"


def error_kind(exc: KlingFxError) -> str:
    """A stable name for an error class, so the worker can raise the same type from the event."""
    if isinstance(exc, KlingFxAuthError):
        return "auth"
    if isinstance(exc, KlingFxConnectionConfigError):
        return "connection_config"
    return "api"


def error_event(generation_id: str, exc: KlingFxError) -> dict[str, Any]:
    """The event for a fetch error that waiting cannot fix, with what the worker needs to re-raise it."""
    event: dict[str, Any] = {
        "status": EVENT_ERROR,
        "generation_id": generation_id,
        "error_kind": error_kind(exc),
        "message": str(exc),
    }
    if isinstance(exc, KlingFxAPIError):
        event.update(
            status_code=exc.status_code,
            vendor_message=exc.vendor_message,
            request_id=exc.request_id,
            path=exc.path,
        )
    return event


class KlingFxGenerationTrigger(BaseTrigger):
    """Polls one generation until it completes, fails, or the deadline passes; yields one event.

    Its kwargs are plain values only (never the API key): the key is read from the connection
    inside :meth:`run`, once per run. The deadline is absolute, so a trigger re-created from
    :meth:`serialize` after a triggerer restart keeps it.

    The event is a small JSON dict: ``{"status": "success", "generation_id", "video", "usage"}``,
    ``{"status": "error", "generation_id", "error_kind", "message", ...}`` or
    ``{"status": "timeout", "generation_id", "waited_seconds", "last_status", "last_error"}``.

    A connection read that fails for another reason than "not found" (a secrets backend that
    cannot start) is tried again every ``poll_interval`` until the deadline: the generation is
    already paid for. Each poll, retries included, is cut at the deadline.

    :param generation_id: the vendor's generation id.
    :param klingfx_conn_id: the Airflow connection to read the key from.
    :param poll_interval: seconds between polls.
    :param deadline: epoch seconds after which the wait ends with a timeout event.
    :param submitted_at: epoch seconds of the submission, to report elapsed time.
    :param usage: what the create answer said the generation costs (``Usage.to_dict()``); the
        success event's usage is this, updated with whatever the status answers report.
    :param sleep: async sleep between polls (tests inject one; not serialized).
    :param clock: epoch clock (tests inject one; not serialized).
    """

    def __init__(
        self,
        generation_id: str,
        deadline: float,
        klingfx_conn_id: str = "klingfx_default",
        poll_interval: float = 10.0,
        submitted_at: float | None = None,
        usage: dict[str, Any] | None = None,
        *,
        sleep: Callable[[float], Awaitable[Any]] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        super().__init__()
        self.generation_id = generation_id
        self.deadline = float(deadline)
        self.klingfx_conn_id = klingfx_conn_id
        self.poll_interval = float(poll_interval)
        self.submitted_at = submitted_at
        self.usage = usage
        self._sleep = sleep or asyncio.sleep
        self._clock = clock or time.time

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Class path and plain kwargs; this is what Airflow stores in the ``trigger`` table."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "generation_id": self.generation_id,
                "deadline": self.deadline,
                "klingfx_conn_id": self.klingfx_conn_id,
                "poll_interval": self.poll_interval,
                "submitted_at": self.submitted_at,
                "usage": self.usage,
            },
        )

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} generation_id={self.generation_id!r} "
            f"conn_id={self.klingfx_conn_id!r} deadline={self.deadline:.0f}>"
        )

    def _make_hook(self) -> Any:
        # Imported here: the trigger module is also imported by the DAG processor via the operator.
        from airflow_provider_klingfx.hooks.klingfx import KlingFxHook

        return KlingFxHook(self.klingfx_conn_id, async_sleep=self._sleep, clock=self._clock)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll until a terminal status or the deadline, then yield exactly one event."""
        hook = self._make_hook()
        try:
            event = await self._settings_then_poll(hook)
        finally:
            await hook.aclose()
        yield TriggerEvent(event)

    async def _settings_then_poll(self, hook: Any) -> dict[str, Any]:
        # A paid generation is at stake: a connection read that hiccups (a secrets backend, Airflow's
        # API) is tried again until the deadline; only a missing or unusable connection ends the wait.
        failures = 0
        while True:
            try:
                settings = await hook.aget_settings()
                break
            except KlingFxConnectionLookupError as exc:
                failures += 1
                now = self._clock()
                if now >= self.deadline:
                    waited = now - self.submitted_at if self.submitted_at is not None else 0.0
                    return self._timeout_event(waited, None, str(exc))
                wait = max(MIN_POLL_INTERVAL, min(self.poll_interval, self.deadline - now))
                self.log.warning(
                    "Generation %s: %s (%d in a row); trying again in %.0fs",
                    self.generation_id,
                    exc,
                    failures,
                    wait,
                )
                await self._sleep(wait)
            except KlingFxError as exc:
                self.log.error("Generation %s: %s", self.generation_id, exc)
                return error_event(self.generation_id, exc)
        watch = GenerationWatch.for_settings(
            settings,
            self.generation_id,
            deadline=self.deadline,
            poll_interval=self.poll_interval,
            submitted_at=self.submitted_at,
        )
        return await self._poll(hook, watch)

    def _timeout_event(
        self, waited: float, last_status: str | None, last_error: str | None
    ) -> dict[str, Any]:
        return {
            "status": EVENT_TIMEOUT,
            "generation_id": self.generation_id,
            "waited_seconds": round(max(0.0, waited), 3),
            "last_status": last_status,
            "last_error": last_error,
        }

    async def _poll(self, hook: Any, watch: GenerationWatch) -> dict[str, Any]:
        while True:
            result: Generation | KlingFxError
            try:
                result = await hook.aget_generation(
                    self.generation_id, deadline=watch.deadline, poll_interval=self.poll_interval
                )
            except KlingFxError as exc:
                result = exc
            now = self._clock()
            try:
                step = watch.observe(result, now)
            except KlingFxError as exc:
                self.log.error("Generation %s: %s", self.generation_id, exc)
                return error_event(self.generation_id, exc)
            for level, message in step.messages:
                self.log.log(level, message)
            if step.finished is not None:
                return self._finished_event(step.finished, watch, now)
            if step.timed_out:
                return self._timeout_event(
                    watch.elapsed(now),
                    watch.last_status,
                    watch.last_error if watch.consecutive_failures else None,
                )
            await self._sleep(step.sleep)

    def _finished_event(self, gen: Generation, watch: GenerationWatch, now: float) -> dict[str, Any]:
        common = {
            "generation_id": gen.id,
            "elapsed_seconds": round(watch.elapsed(now), 3),
            "polls": watch.polls,
        }
        if gen.is_completed and gen.video is not None:
            usage = merge_usage(Usage.from_dict(self.usage), gen.usage)
            return {
                "status": EVENT_SUCCESS,
                **common,
                "video": gen.video.to_dict(),
                "usage": usage.to_dict() if usage else None,
            }
        error = gen.error
        return {
            "status": EVENT_ERROR,
            **common,
            "error_kind": "generation_failed",
            "reason": error.reason if error else "no reason given",
            "error_type": error.error_type if error else None,
        }

    async def on_kill(self) -> None:
        """Called (Airflow 3.3+) when a user marks or clears the task while it is deferred."""
        self.log.warning(abandoned_notice(self.generation_id))
