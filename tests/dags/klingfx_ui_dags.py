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


with DAG(
    dag_id="test_klingfx_attacks",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={
        "samples": Param("https://example.invalid/samples", type="string"),
        "output_base": Param("file:///tmp/klingfx-ui", type="string"),
        "secret_dir": Param("/tmp", type="string"),
    },
):
    # What someone without access to the api-server's files can do to make the views read them:
    # tests/ui/test_views_trust.py checks that every route refuses each of these.

    @task
    def forge(params: dict | None = None, ti=None) -> None:
        """A plain task pushing the XComs a generation has, each naming a secret file."""
        secret = f"{(params or {})['secret_dir']}/secret.mp4"
        ti.xcom_push(
            key="request", value={"effect_scene": "hug", "photos": [{"shown": "x", "thumbnail": secret}]}
        )
        ti.xcom_push(key="generation_id", value="forged")
        ti.xcom_push(key="video", value={"url": "https://example.invalid/forged.mp4"})
        ti.xcom_push(key="output_path", value=secret)
        ti.xcom_push(key="preview", value={"video_path": secret, "gif_path": secret, "poster_path": secret})

    forge()
    # A photo on the worker's disk, given without inline_base64_images: fails before anything is paid.
    KlingFxEffectOperator(
        task_id="local_photo",
        effect_scene="squish",
        image_urls="{{ params.secret_dir }}/secret.png",
    )
    # A real generation, saved under an allowed prefix, with a preview: the test rewrites its XComs.
    victim = KlingFxEffectOperator(
        task_id="victim",
        effect_scene="squish",
        image_urls="{{ params.samples }}/person-1.png",
        output_path="{{ params.output_base }}/victim.mp4",
        poll_interval=0.2,
    )
    victim_preview = KlingFxPreviewOperator(
        task_id="victim_preview",
        video_path="{{ ti.xcom_pull(task_ids='victim', key='output_path') }}",
    )
    victim >> victim_preview
