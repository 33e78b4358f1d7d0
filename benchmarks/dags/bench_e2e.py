"""End-to-end latency benchmark: N mapped generations, each followed by its own downstream task.

A mapped task group, so each ``after`` starts as soon as its own ``effect`` finishes (not after all
of them). Connection ``klingfx_e2e`` (the benchmark's emulator). Trigger with ``{"photos": [...]}``.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param, task, task_group

from airflow_provider_klingfx.operators.klingfx import KlingFxEffectOperator

with DAG(
    "bench_e2e",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_tasks=1024,
    params={"photos": Param([], type="array")},
):

    @task
    def photos(params: dict | None = None) -> list[str]:
        return list((params or {})["photos"])

    @task
    def after(url: str) -> str:
        return url

    @task_group
    def one(photo: str) -> None:
        video = KlingFxEffectOperator(
            task_id="effect",
            effect_scene="squish",
            image_urls=photo,
            klingfx_conn_id="klingfx_e2e",
            poll_interval=2,
            timeout=1800,
        )
        after(video.output)  # type: ignore[arg-type]  # an XComArg, resolved at run time

    one.expand(photo=photos())
