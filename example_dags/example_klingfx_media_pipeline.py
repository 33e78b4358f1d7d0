"""A media pipeline: generate → keep the MP4 in object storage → GIF preview + poster → JSON manifest.

Needs a connection ``klingfx_default`` of type ``klingfx`` and, for ``s3://`` outputs, an AWS
connection (``s3://<aws_conn_id>@bucket/prefix`` picks it; needs the ``s3`` extra). Each run writes
``<output_base>/<ds>/generate.mp4``, ``generate.preview.gif``, ``generate.poster.jpg`` and
``generate.manifest.json``, and emits an event on the Asset ``klingfx_media_videos`` that
``example_klingfx_asset_consumer`` is scheduled on.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Asset, Param, task

from airflow_provider_klingfx.operators.klingfx import KlingFxEffectOperator
from airflow_provider_klingfx.operators.preview import KlingFxPreviewOperator

KLINGFX_VIDEOS = Asset(name="klingfx_media_videos", uri="file:///klingfx/media-pipeline/videos")

# Whoever triggers the DAG picks the photo Param, not which connections, buckets or hosts photos are
# read from: an admin lists those in the Variable klingfx_photo_locations (comma-separated prefixes).
PHOTO_LOCATIONS = "{{ var.value.get('klingfx_photo_locations', 'https://images.pexels.com/photos/') }}"

with DAG(
    dag_id="example_klingfx_media_pipeline",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["example", "klingfx", "media"],
    params={
        "photo": Param("https://images.pexels.com/photos/733872/pexels-photo-733872.jpeg", type="string"),
        "scene": Param("expansion", type="string"),
        "output_base": Param(
            "file:///tmp/klingfx-media",
            type="string",
            description="object storage prefix: file:///…, s3://<aws_conn_id>@bucket/prefix, gs://…",
        ),
    },
):
    # [START howto_operator_klingfx_output_path]
    generate = KlingFxEffectOperator(
        task_id="generate",
        effect_scene="{{ params.scene }}",
        image_urls="{{ params.photo }}",
        allowed_photo_locations=PHOTO_LOCATIONS,
        output_path="{{ params.output_base }}/{{ ds }}/{{ ti.task_id }}.mp4",
        outlets=[KLINGFX_VIDEOS],
    )
    # [END howto_operator_klingfx_output_path]

    # [START howto_operator_klingfx_preview]
    preview = KlingFxPreviewOperator(
        task_id="preview",
        video_path="{{ ti.xcom_pull(task_ids='generate', key='output_path') }}",
    )
    # [END howto_operator_klingfx_preview]

    @task
    def manifest(preview_info: dict, params: dict | None = None, ti=None) -> str:
        """Publish what a downstream system needs: inputs, ids, URLs, sizes and cost."""
        import json

        from airflow.sdk import ObjectStoragePath

        video_path = ti.xcom_pull(task_ids="generate", key="output_path")
        record = {
            "inputs": {"photo": params["photo"], "scene": params["scene"]},
            "generation_id": ti.xcom_pull(task_ids="generate", key="generation_id"),
            "video": ti.xcom_pull(task_ids="generate", key="video"),
            "saved_video": video_path,
            "preview": preview_info,
            "usage": ti.xcom_pull(task_ids="generate", key="usage"),
        }
        target = ObjectStoragePath(video_path.removesuffix(".mp4") + ".manifest.json")
        target.write_text(json.dumps(record, indent=2))
        return str(target)

    generate >> preview
    manifest(preview.output)
