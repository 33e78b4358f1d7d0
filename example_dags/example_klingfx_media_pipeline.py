"""A media pipeline: generate → keep the MP4 in object storage → GIF preview + poster → JSON manifest.

Needs a connection ``klingfx_default`` of type ``klingfx`` and, for ``s3://`` outputs, an AWS
connection (``s3://<aws_conn_id>@bucket/prefix`` picks it; needs the ``s3`` extra). Each run writes
``<folder>/<ds>/generate.mp4``, ``generate.preview.gif``, ``generate.poster.jpg`` and
``generate.manifest.json``, and emits an event on the Asset ``klingfx_media_videos`` that
``example_klingfx_asset_consumer`` is scheduled on.

Whoever triggers the DAG chooses the photo and the scene, never where files are written: the folder is
a deployment setting, the environment variable ``KLINGFX_MEDIA_FOLDER`` (default
``file:///tmp/klingfx-media``; e.g. ``s3://aws_media@my-bucket/kling``). It is read when the file is
parsed, not rendered at run time, because the Asset's URI, which is fixed at parse time, names the same
folder; set it alike for the DAG processor and the workers. Changing it changes the Asset's URI: until
the scheduler retires the old one (no DAG uses it any more), Airflow refuses to start ``generate``,
before anything is paid.
"""

from __future__ import annotations

import os
import re

import pendulum
from airflow.sdk import Asset, Param, dag, task

from airflow_provider_klingfx.domain import EFFECT_SCENES, TWO_PERSON_SCENES
from airflow_provider_klingfx.operators.klingfx import KlingFxEffectOperator
from airflow_provider_klingfx.operators.preview import KlingFxPreviewOperator

# An environment variable, not an Airflow Variable: reading it costs the DAG processor nothing.
MEDIA_FOLDER = os.environ.get("KLINGFX_MEDIA_FOLDER", "file:///tmp/klingfx-media").rstrip("/")
# The Asset names that folder (without the connection id an s3://<conn_id>@bucket path carries).
KLINGFX_VIDEOS = Asset(name="klingfx_media_videos", uri=re.sub(r"^(\w+://)[^/@]*@", r"\1", MEDIA_FOLDER))
# The scenes that take one photo, in the vendor's order (a fixed order keeps the serialized DAG stable).
ONE_PHOTO_SCENES = [scene for scene in EFFECT_SCENES if scene not in TWO_PERSON_SCENES]

# Whoever triggers the DAG picks the photo Param, not which connections, buckets or hosts photos are
# read from: an admin lists those in the Variable klingfx_photo_locations (comma-separated prefixes).
PHOTO_LOCATIONS = "{{ var.value.get('klingfx_photo_locations', 'https://images.pexels.com/photos/') }}"


@dag(
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["example", "klingfx", "media"],
    params={
        "photo": Param("https://images.pexels.com/photos/733872/pexels-photo-733872.jpeg", type="string"),
        "scene": Param("expansion", enum=ONE_PHOTO_SCENES, description="a scene that takes one photo"),
    },
)
def example_klingfx_media_pipeline():
    # [START howto_operator_klingfx_output_path]
    generate = KlingFxEffectOperator(
        task_id="generate",
        effect_scene="{{ params.scene }}",
        image_urls="{{ params.photo }}",
        allowed_photo_locations=PHOTO_LOCATIONS,
        # The folder is the deployment's, the rest of the path the run's date: nothing from Params.
        output_path=MEDIA_FOLDER + "/{{ ds }}/{{ ti.task_id }}.mp4",
        outlets=[KLINGFX_VIDEOS],
    )
    # [END howto_operator_klingfx_output_path]

    # [START howto_operator_klingfx_preview]
    preview = KlingFxPreviewOperator(task_id="preview", video_path=generate.output["output_path"])
    # [END howto_operator_klingfx_preview]

    @task
    def manifest(
        preview_info: dict,
        video_path: str,
        generation_id: str,
        video: dict,
        params: dict | None = None,
        ti=None,
    ) -> str:
        """Publish what a downstream system needs: inputs, ids, URLs, sizes and cost."""
        import json

        from airflow.sdk import ObjectStoragePath

        params = params or {}
        # XCom ``usage`` exists only when the API reported the cost; an XComArg of a missing XCom fails
        # the task (XComNotFound), so this optional one is read with a default.
        usage = ti.xcom_pull(task_ids="generate", key="usage", default=None)
        record = {
            "inputs": {"photo": params["photo"], "scene": params["scene"]},
            "generation_id": generation_id,
            "video": video,
            "saved_video": video_path,
            "preview": preview_info,
            "usage": usage,
        }
        target = ObjectStoragePath(video_path.removesuffix(".mp4") + ".manifest.json")
        target.write_text(json.dumps(record, indent=2))
        return str(target)

    manifest(
        preview.output,
        generate.output["output_path"],
        generate.output["generation_id"],
        generate.output["video"],
    )


example_klingfx_media_pipeline()
