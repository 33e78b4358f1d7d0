"""The DAG of the clear test: one generation whose scene comes from a Variable, so it can change
between a run and a clear of that run."""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param

from airflow_provider_klingfx.operators.klingfx import KlingFxEffectOperator

with DAG(
    dag_id="test_klingfx_clear",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={"photo": Param("https://example.invalid/p.png", type="string")},
):
    KlingFxEffectOperator(
        task_id="effect",
        effect_scene="{{ var.value.klingfx_test_scene }}",
        image_urls="{{ params.photo }}",
        poll_interval=1,
    )
