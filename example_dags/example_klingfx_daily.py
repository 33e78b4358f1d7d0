"""A scheduled generation: every day, render the day's effect for a photo named after the date.

Needs a connection ``klingfx_default`` of type ``klingfx`` and an Airflow Variable
``klingfx_photo_base_url`` (e.g. ``https://media.example.com/daily``; or the environment variable
``AIRFLOW_VAR_KLINGFX_PHOTO_BASE_URL``)
under which a photo ``<YYYY-MM-DD>.png`` arrives each day. The scene alternates with the day of the
year: ``squish`` on even days (2 January, 4 January, ...), ``expansion`` on odd ones, all from
templates, so nothing is computed when the DAG file is parsed.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag

from airflow_provider_klingfx.operators.klingfx import KlingFxEffectOperator


@dag(
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["example", "klingfx"],
)
def example_klingfx_daily():
    # [START howto_operator_klingfx_templated]
    KlingFxEffectOperator(
        task_id="daily_effect",
        effect_scene="{{ 'squish' if logical_date.day_of_year % 2 == 0 else 'expansion' }}",
        image_urls="{{ var.value.klingfx_photo_base_url }}/{{ ds }}.png",
        duration=5,
        # A generation takes about two minutes; give up well before the next run.
        timeout=3600,
        retries=2,
    )
    # [END howto_operator_klingfx_templated]


example_klingfx_daily()
