"""DAGs used only by the test-suite: the non-deferrable path of the examples' scenes."""

from __future__ import annotations

from datetime import timedelta

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

with DAG(
    dag_id="test_klingfx_retry_reattach",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={"photo": Param("https://example.invalid/p.png", type="string")},
):
    # A timeout shorter than the generation: each try times out until the generation completes.
    # On Airflow 3.3+ the retries reattach to the first try's generation instead of paying again.
    KlingFxEffectOperator(
        task_id="squish",
        effect_scene="squish",
        image_urls="{{ params.photo }}",
        poll_interval=0.2,
        timeout=1,
        retries=6,
        retry_delay=timedelta(seconds=0.5),
    )

with DAG(
    dag_id="test_klingfx_missing_connection",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
):
    KlingFxEffectOperator(
        task_id="squish",
        effect_scene="squish",
        image_urls="https://example.com/p.png",
        klingfx_conn_id="klingfx_nowhere",
    )

with DAG(
    dag_id="test_klingfx_execution_timeout",
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
        poll_interval=0.5,
        execution_timeout=timedelta(seconds=3),
    )
