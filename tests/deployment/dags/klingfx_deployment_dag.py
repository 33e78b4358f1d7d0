"""The DAG of the deployment test: 20 (or any number of) mapped generations, polled every second."""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param, task

from airflow_provider_klingfx.operators.klingfx import KlingFxEffectOperator

with DAG(
    dag_id="test_klingfx_deployment",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_tasks=32,
    params={"photos": Param([], type="array")},
):

    @task
    def photos(params: dict | None = None) -> list[str]:
        return list((params or {})["photos"])

    videos = KlingFxEffectOperator.partial(
        task_id="effect",
        effect_scene="squish",
        poll_interval=1,
        timeout=600,
        retries=2,
        retry_delay=timedelta(seconds=2),
    ).expand(image_urls=photos())

    @task
    def collect(urls: list[str]) -> list[str]:
        return list(urls)

    collect(videos.output)
