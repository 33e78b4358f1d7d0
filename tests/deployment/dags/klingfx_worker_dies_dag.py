"""The DAG of the worker-death test: one generation polled on the worker, with a retry."""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param

from airflow_provider_klingfx.operators.klingfx import KlingFxEffectOperator

with DAG(
    dag_id="test_klingfx_worker_dies",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={"photo": Param("https://example.invalid/p.png", type="string")},
):
    KlingFxEffectOperator(
        task_id="squish",
        effect_scene="squish",
        image_urls="{{ params.photo }}",
        deferrable=False,
        poll_interval=1,
        retries=1,
        retry_delay=timedelta(seconds=1),
    )
