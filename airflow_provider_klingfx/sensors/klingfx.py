"""Sensor that waits for a Kling effects generation submitted elsewhere (another task, a script)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator

from airflow_provider_klingfx._compat import AirflowSensorTimeout
from airflow_provider_klingfx.domain import Generation, KlingFxError, KlingFxTimeoutError
from airflow_provider_klingfx.operators.klingfx import (
    DEFER_TIMEOUT_GRACE,
    XCOM_GENERATION_ID,
    KlingFxResultMixin,
    KlingFxVideoLink,
    raise_for_event,
)

if TYPE_CHECKING:
    from airflow.sdk import Context, ObjectStoragePath, PokeReturnValue

    from airflow_provider_klingfx._polling import GenerationWatch
    from airflow_provider_klingfx.hooks.klingfx import KlingFxHook


class KlingFxSensorTimeout(KlingFxTimeoutError, AirflowSensorTimeout):
    """The sensor's ``timeout`` passed before the generation finished.

    An :class:`~airflow.sdk.exceptions.AirflowSensorTimeout`, so Airflow treats it as every sensor
    timeout: no retries, and ``soft_fail=True`` skips the task instead.
    """


class KlingFxGenerationSensor(KlingFxResultMixin, BaseSensorOperator):
    """Wait for a generation to finish, given its id; return its video URL.

    The second half of "submit and sense": ``KlingFxEffectOperator(wait_for_completion=False)``
    submits and ends, and this sensor, given its return value, waits for the video elsewhere in the
    DAG. It delivers what the operator would have, the same way: XComs ``return_value`` (the video
    URL), ``generation_id``, ``video``, ``usage``, the video saved to ``output_path`` (XCom
    ``output_path``, for :class:`~airflow_provider_klingfx.operators.preview.KlingFxPreviewOperator`
    and the views) and the Asset outlets' events. Also useful to fetch a finished generation again
    (after a download failed, say) without paying for a new one. Both modes follow the operator's
    rules: the same status words, transient API errors waited out rather than failing the task,
    and ``timeout`` ending in :class:`KlingFxSensorTimeout`.

    :param generation_id: the vendor's generation id. Templated; pass the submitting task's output
        (``submit.output``).
    :param klingfx_conn_id: the ``klingfx`` connection holding the API key.
    :param deferrable: wait in the triggerer (default) rather than on the worker.
    :param poll_interval: seconds between status checks (``poke_interval`` in worker mode).
    :param output_path: where to save the video, as the operator's ``output_path``. Templated.
    """

    template_fields: Sequence[str] = ("generation_id", "output_path")
    operator_extra_links = (KlingFxVideoLink(),)
    ui_color = "#f6d1ff"

    def __init__(
        self,
        *,
        generation_id: str,
        klingfx_conn_id: str = "klingfx_default",
        deferrable: bool = True,
        poll_interval: float = 10,
        output_path: str | ObjectStoragePath | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("poke_interval", poll_interval)
        super().__init__(**kwargs)
        self.generation_id = generation_id
        self.output_path = output_path
        self.delivered = None
        self.klingfx_conn_id = klingfx_conn_id
        self.deferrable = deferrable
        self.poll_interval = float(poll_interval)
        self._watch: GenerationWatch | None = None

    @cached_property
    def hook(self) -> KlingFxHook:
        """The hook on this sensor's connection, one for all pokes (its connection read once)."""
        from airflow_provider_klingfx.hooks.klingfx import KlingFxHook

        return KlingFxHook(self.klingfx_conn_id)

    def execute(self, context: Context) -> Any:
        """Defer to the trigger, or poke on the worker when not deferrable."""
        context["ti"].xcom_push(key=XCOM_GENERATION_ID, value=self.generation_id)
        if not self.deferrable:
            return super().execute(context)
        from airflow_provider_klingfx.triggers.klingfx import KlingFxGenerationTrigger

        self.hook.settings  # noqa: B018 - fail on a bad connection here, not in the triggerer
        timeout = float(self.timeout)
        self.defer(
            trigger=KlingFxGenerationTrigger(
                generation_id=self.generation_id,
                deadline=time.time() + timeout,
                klingfx_conn_id=self.klingfx_conn_id,
                poll_interval=self.poll_interval,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=timeout) + DEFER_TIMEOUT_GRACE,
        )

    def poke(self, context: Context) -> bool | PokeReturnValue:
        """One status check through the same watch as the trigger: False while pending (or while the
        API has a transient failure); the URL once done; raises if the vendor failed it."""
        from airflow.sdk import PokeReturnValue

        from airflow_provider_klingfx._polling import GenerationWatch

        now = time.time()
        if self._watch is None:
            self._watch = GenerationWatch(
                self.generation_id, deadline=now + float(self.timeout), poll_interval=self.poke_interval
            )
        result: Generation | KlingFxError
        try:
            result = self.hook.get_generation(self.generation_id, deadline=self._watch.deadline, poll=True)
        except KlingFxError as exc:
            result = exc
        step = self._watch.observe(result, time.time())  # raises what waiting cannot fix
        for level, message in step.messages:
            self.log.log(level, message)
        if step.finished is None:
            return False  # Airflow's own timeout ends the poking with AirflowSensorTimeout
        step.finished.raise_for_failure()
        assert step.finished.video is not None
        url = self._deliver(context, step.finished.id, step.finished.video, step.finished.usage)
        return PokeReturnValue(is_done=True, xcom_value=url)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> str:
        """Resume after the trigger: return the URL or raise the event's typed error."""
        try:
            return self._deliver(context, *raise_for_event(event))
        except KlingFxTimeoutError as exc:
            raise KlingFxSensorTimeout(exc.generation_id, exc.waited_seconds, exc.last_status) from None
