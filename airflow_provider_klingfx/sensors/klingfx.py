"""Sensor that waits for a Kling effects generation submitted elsewhere (another task, a script)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator

from airflow_provider_klingfx.operators.klingfx import (
    DEFER_TIMEOUT_GRACE,
    KlingFxResultMixin,
    KlingFxVideoLink,
    raise_for_event,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_klingfx.hooks.klingfx import KlingFxHook


class KlingFxGenerationSensor(KlingFxResultMixin, BaseSensorOperator):
    """Wait for a generation to finish, given its id; return its video URL.

    Same XComs as :class:`~airflow_provider_klingfx.operators.klingfx.KlingFxEffectOperator`
    (``return_value`` = video URL, ``video``, ``usage``). Useful to re-fetch a finished generation
    (e.g. after a download failed) without paying for a new one.

    :param generation_id: the vendor's generation id. Templated, e.g.
        ``"{{ ti.xcom_pull(task_ids='submit', key='generation_id') }}"``.
    :param klingfx_conn_id: the ``klingfx`` connection holding the API key.
    :param deferrable: wait in the triggerer (default) rather than on the worker.
    :param poll_interval: seconds between status checks (``poke_interval`` in worker mode).
    """

    template_fields: Sequence[str] = ("generation_id",)
    operator_extra_links = (KlingFxVideoLink(),)
    ui_color = "#f6d1ff"

    def __init__(
        self,
        *,
        generation_id: str,
        klingfx_conn_id: str = "klingfx_default",
        deferrable: bool = True,
        poll_interval: float = 10,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("poke_interval", poll_interval)
        super().__init__(**kwargs)
        self.generation_id = generation_id
        self.klingfx_conn_id = klingfx_conn_id
        self.deferrable = deferrable
        self.poll_interval = float(poll_interval)

    @property
    def hook(self) -> KlingFxHook:
        """A hook on this sensor's connection."""
        from airflow_provider_klingfx.hooks.klingfx import KlingFxHook

        return KlingFxHook(self.klingfx_conn_id)

    def execute(self, context: Context) -> Any:
        """Defer to the trigger, or poke on the worker when not deferrable."""
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

    def poke(self, context: Context) -> Any:
        """One status check: False while pending; the URL once completed; raises if it failed."""
        from airflow.sdk import PokeReturnValue

        generation = self.hook.get_generation(self.generation_id)
        if generation.is_pending:
            self.log.info("Generation %s is %s", generation.id, generation.status)
            return False
        generation.raise_for_failure()
        assert generation.video is not None
        url = self._push_result(context, generation.id, generation.video, generation.usage)
        return PokeReturnValue(is_done=True, xcom_value=url)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> str:
        """Resume after the trigger: return the URL or raise the event's typed error."""
        return self._push_result(context, *raise_for_event(event))
