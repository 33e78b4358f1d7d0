"""DAGs used only by tests/ui: one run makes what the views show (videos, a preview, a failure)."""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param, task

from airflow_provider_klingfx.operators.klingfx import KlingFxEffectOperator
from airflow_provider_klingfx.operators.preview import KlingFxPreviewOperator

for dag_id in ("test_klingfx_gallery", "test_klingfx_gallery_private"):
    with DAG(
        dag_id=dag_id,
        schedule=None,
        start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
        catchup=False,
        params={
            "samples": Param("https://example.invalid/samples", type="string"),
            "output_base": Param("file:///tmp/klingfx-ui", type="string"),
        },
    ):

        @task
        def generations(params: dict | None = None) -> list[dict]:
            """Two videos that succeed and a hug that the vendor fails (no face in the second photo)."""
            params = params or {}
            base, out = params["samples"], params["output_base"]
            return [
                {
                    "effect_scene": "squish",
                    "image_urls": f"{base}/person-1.png",
                    "output_path": f"{out}/0.mp4",
                },
                {
                    "effect_scene": "expansion",
                    "image_urls": f"{base}/person-2.png",
                    "output_path": f"{out}/1.mp4",
                },
                {
                    "effect_scene": "hug",
                    "image_urls": [f"{base}/person-3.png", f"{base}/landscape-noface.png"],
                    "output_path": f"{out}/2.mp4",
                },
            ]

        generate = KlingFxEffectOperator.partial(task_id="generate", poll_interval=0.2).expand_kwargs(
            generations()
        )
        # A preview of the first video only: the gallery shows its GIF, the others their MP4.
        preview = KlingFxPreviewOperator(
            task_id="preview",
            video_path="{{ ti.xcom_pull(task_ids='generate', key='output_path', map_indexes=0) }}",
            trigger_rule="all_done",
        )
        generate >> preview
