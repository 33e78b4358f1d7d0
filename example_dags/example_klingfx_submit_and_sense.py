"""Submit and sense: one task pays for the generation and ends; a sensor waits for it elsewhere.

Needs a connection ``klingfx_default`` of type ``klingfx``. ``KlingFxEffectOperator`` with
``wait_for_completion=False`` submits the generation and returns its id at once, freeing the DAG to do
other work (here: prepare the folder the video will land in); ``KlingFxGenerationSensor``, given that
id, waits in the triggerer, then delivers what the operator would have: the video URL, XComs
``video``, ``usage`` and, with ``output_path``, the saved MP4 a ``KlingFxPreviewOperator`` can use.

The sensor pays for nothing: clearing it, or a retry, fetches the same generation again.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, task

from airflow_provider_klingfx.operators.klingfx import KlingFxEffectOperator
from airflow_provider_klingfx.operators.preview import KlingFxPreviewOperator
from airflow_provider_klingfx.sensors.klingfx import KlingFxGenerationSensor

# Whoever triggers the DAG picks the photo Param, not which connections, buckets or hosts photos are
# read from: an admin lists those in the Variable klingfx_photo_locations (comma-separated prefixes).
PHOTO_LOCATIONS = "{{ var.value.get('klingfx_photo_locations', 'https://images.pexels.com/photos/') }}"


@dag(
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["example", "klingfx"],
    params={
        "photo": Param(
            "https://images.pexels.com/photos/733872/pexels-photo-733872.jpeg",
            type="string",
            description="a photo of one person (JPEG or PNG, at least 300 px a side)",
        ),
    },
)
def example_klingfx_submit_and_sense():
    # [START howto_operator_klingfx_submit_and_sense]
    submit = KlingFxEffectOperator(
        task_id="submit",
        effect_scene="expansion",
        image_urls="{{ params.photo }}",
        allowed_photo_locations=PHOTO_LOCATIONS,
        wait_for_completion=False,
    )
    wait = KlingFxGenerationSensor(
        task_id="wait",
        generation_id=submit.output,
        # The folder comes from an admin's Variable, the file name from the run: never from a Param.
        output_path="{{ var.value.klingfx_output_base.rstrip('/') }}/{{ run_id | replace(':', '-') }}.mp4",
        timeout=1800,
    )
    # [END howto_operator_klingfx_submit_and_sense]

    @task
    def other_work(generation_id: str) -> str:
        """Runs while the video renders: the generation is paid for and known by its id."""
        print(f"generation {generation_id} is rendering; preparing its folder meanwhile")
        return generation_id

    # The saved video, handed on as an XComArg (the sensor's XCom ``output_path``).
    preview = KlingFxPreviewOperator(task_id="preview", video_path=wait.output["output_path"])
    other_work(submit.output) >> wait >> preview


example_klingfx_submit_and_sense()
