"""DAGs used only by the test-suite: the non-deferrable path of the examples' scenes."""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param

from airflow_provider_klingfx.operators.klingfx import KlingFxEffectOperator

with DAG(
    dag_id="test_klingfx_not_deferrable",
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
        poll_interval=0.2,
    )
