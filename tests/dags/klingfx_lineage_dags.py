"""DAGs used only by tests/integration/test_lineage.py."""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param, task

from airflow_provider_klingfx.operators.klingfx import KlingFxEffectOperator

with DAG(
    dag_id="test_klingfx_lineage_signed_urls",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={"samples": Param("https://example.invalid/samples", type="string")},
):
    # http(s) photos as presigned URLs (the query holds the credentials), handed over by an upstream
    # task as they would be (not in the run's conf, which OpenLineage events repeat), to one unmapped
    # and one mapped generation; no output_path, so each video is known by its URL only.

    @task
    def presigned(params: dict | None = None) -> list[str]:
        base = (params or {})["samples"]
        return [
            f"{base}/{name}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIDLINEAGETEST"
            f"&X-Amz-Expires=3600&X-Amz-Signature=5ee0f1e2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d{i}"
            for i, name in enumerate(("person-1.png", "person-2.png"))
        ]

    photos = presigned()
    one = KlingFxEffectOperator(
        task_id="squish",
        effect_scene="squish",
        image_urls="{{ ti.xcom_pull(task_ids='presigned')[0] }}",
        poll_interval=0.2,
    )
    photos >> one
    KlingFxEffectOperator.partial(task_id="squish_each", effect_scene="squish", poll_interval=0.2).expand(
        image_urls=photos
    )
