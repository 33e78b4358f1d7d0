"""Chain a generation into downstream work: the video URL flows through XCom to the next task.

Needs a connection ``klingfx_default`` of type ``klingfx``. ``describe`` receives the URL (the
operator's return value, ``generate.output``) and the ``video``/``generation_id`` XComs
(``generate.output["video"]``, ...) as arguments, checks the file is reachable and writes a small
JSON record a media pipeline could pick up. Passing ``XComArg`` objects, not template strings, also
tells Airflow that ``describe`` runs after ``generate``.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, task

from airflow_provider_klingfx.operators.klingfx import KlingFxEffectOperator

# Whoever triggers the DAG picks the photo Param, not which connections, buckets or hosts photos are
# read from: an admin lists those in the Variable klingfx_photo_locations (comma-separated prefixes).
PHOTO_LOCATIONS = "{{ var.value.get('klingfx_photo_locations', 'https://images.pexels.com/photos/') }}"


@dag(
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["example", "klingfx"],
    params={
        "photo": Param("https://images.pexels.com/photos/733872/pexels-photo-733872.jpeg", type="string"),
    },
)
def example_klingfx_chain():
    # [START howto_operator_klingfx_chain]
    generate = KlingFxEffectOperator(
        task_id="generate",
        effect_scene="expansion",
        image_urls="{{ params.photo }}",
        allowed_photo_locations=PHOTO_LOCATIONS,
    )
    # [END howto_operator_klingfx_chain]

    @task
    def describe(video_url: str, video: dict, generation_id: str) -> dict:
        """Check the video is downloadable and describe it for the next system."""
        import requests  # imported at run time, not when the DAG file is parsed

        head = requests.head(video_url, timeout=30, allow_redirects=True)
        head.raise_for_status()
        record = {
            "generation_id": generation_id,
            "url": video_url,
            "content_type": head.headers.get("Content-Type"),
            "bytes": int(head.headers.get("Content-Length") or video.get("file_size") or 0),
        }
        print(f"video record: {record}")
        return record

    # [START howto_operator_klingfx_chain_output]
    describe(generate.output, generate.output["video"], generate.output["generation_id"])
    # [END howto_operator_klingfx_chain_output]


example_klingfx_chain()
