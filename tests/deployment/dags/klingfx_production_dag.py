"""The DAG of the production-shaped test: 200 (or any number of) mapped generations, each deferred
and polled every 2 s by one of two triggerers, its task run by one of two Celery workers.

The video is not downloaded (no ``output_path``): the URL goes to XCom, which every worker sees.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param, task

from airflow_provider_klingfx.operators.klingfx import KlingFxEffectOperator

with DAG(
    dag_id="test_klingfx_production",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_tasks=64,
    params={"photos": Param([], type="array")},
):

    @task
    def photos(params: dict | None = None) -> list[str]:
        return list((params or {})["photos"])

    KlingFxEffectOperator.partial(
        task_id="effect",
        effect_scene="squish",
        poll_interval=2,
        timeout=1200,
        retries=2,
        retry_delay=timedelta(seconds=5),
    ).expand(image_urls=photos())
