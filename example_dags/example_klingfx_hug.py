"""Two photos, one scene: two people hugging. The first photo is placed on the left.

Needs a connection ``klingfx_default`` of type ``klingfx`` (Base URL + API key); see the README.
Two-person scenes (hug, kiss, heart_gesture) need exactly two photos, each with a visible face;
otherwise the vendor fails the generation with "Could not detect face in the image" and the task
fails without retrying (a retry would pay again for the same result). With ``output_path`` set, the
MP4 is also streamed there (any Airflow object storage URL) and XCom ``output_path`` names it.
This is the DAG ``make demo`` runs.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Param

from airflow_provider_klingfx.operators.klingfx import KlingFxEffectOperator

with DAG(
    dag_id="example_klingfx_hug",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["example", "klingfx"],
    params={
        "left_photo": Param(
            "https://images.pexels.com/photos/733872/pexels-photo-733872.jpeg", type="string"
        ),
        "right_photo": Param(
            "https://storage.googleapis.com/falserverless/juggernaut_examples/QEW5VrzccxGva7mPfEXjf.png",
            type="string",
        ),
        "scene": Param("hug", enum=["hug", "kiss", "heart_gesture"]),
        "output_path": Param(
            "",
            type="string",
            description="optional: where to keep the MP4 (file:///..., s3://...); empty: CDN URL only",
        ),
    },
):
    KlingFxEffectOperator(
        task_id="hug",
        effect_scene="{{ params.scene }}",
        image_urls=["{{ params.left_photo }}", "{{ params.right_photo }}"],
        model="klingai/kling-video-v1.6-pro-effects",
        output_path="{{ params.output_path }}",
    )
