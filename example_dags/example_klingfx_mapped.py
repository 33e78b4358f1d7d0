"""Fan out: one generation per photo with dynamic task mapping, all waiting in the triggerer at once.

Needs a connection ``klingfx_default`` of type ``klingfx``. Trigger with your own photos:
``airflow dags trigger example_klingfx_mapped -c '{"photos": ["https://...", "https://..."]}'``.
Each mapped task instance returns its own video URL; ``collect`` gathers them in photo order.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, task

from airflow_provider_klingfx.domain import EFFECT_SCENES, TWO_PERSON_SCENES
from airflow_provider_klingfx.operators.klingfx import KlingFxEffectOperator

# The scenes that take one photo, in the vendor's order (a fixed order keeps the serialized DAG stable).
ONE_PHOTO_SCENES = [scene for scene in EFFECT_SCENES if scene not in TWO_PERSON_SCENES]

# Whoever triggers the DAG picks the photo Param, not which connections, buckets or hosts photos are
# read from: an admin lists those in the Variable klingfx_photo_locations (comma-separated prefixes).
PHOTO_LOCATIONS = (
    "{{ var.value.get('klingfx_photo_locations', "
    "'https://images.pexels.com/photos/, https://storage.googleapis.com/falserverless/') }}"
)


@dag(
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["example", "klingfx"],
    params={
        "photos": Param(
            [
                "https://images.pexels.com/photos/733872/pexels-photo-733872.jpeg",
                "https://storage.googleapis.com/falserverless/juggernaut_examples/QEW5VrzccxGva7mPfEXjf.png",
            ],
            type="array",
            description="photo URLs, one generation each",
        ),
        "scene": Param("expansion", enum=ONE_PHOTO_SCENES, description="a scene that takes one photo"),
    },
)
def example_klingfx_mapped():

    @task
    def list_photos(params: dict | None = None) -> list[str]:
        """The photos to render; replace with a listing of a bucket or folder."""
        return list((params or {})["photos"])

    # [START howto_operator_klingfx_mapped]
    videos = KlingFxEffectOperator.partial(
        task_id="effect",
        effect_scene="{{ params.scene }}",
        poll_interval=10,
        allowed_photo_locations=PHOTO_LOCATIONS,
    ).expand(image_urls=list_photos())
    # [END howto_operator_klingfx_mapped]

    @task
    def collect(urls: list[str]) -> list[str]:
        """All video URLs, one per photo, in the photos' order."""
        urls = list(urls)
        print(f"{len(urls)} videos: {urls}")
        return urls

    collect(videos.output)


example_klingfx_mapped()
