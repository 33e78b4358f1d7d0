"""One photo, one effect: squish a person like clay.

Needs a connection ``klingfx_default`` of type ``klingfx`` (Base URL + API key); see the README.
Trigger it with another photo: ``airflow dags trigger example_klingfx_squish -c '{"photo": "https://..."}'``.
The video URL lands in XCom ``return_value`` of task ``squish``, the generation id in ``generation_id``.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag

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
        "photo": Param(
            "https://images.pexels.com/photos/733872/pexels-photo-733872.jpeg",
            type="string",
            description="URL of a photo of one person (jpg/png, at least 300 px a side)",
        ),
        "duration": Param(5, enum=[5, 10]),
    },
)
def example_klingfx_squish():
    # [START howto_operator_klingfx_squish]
    KlingFxEffectOperator(
        task_id="squish",
        effect_scene="squish",
        image_urls="{{ params.photo }}",
        allowed_photo_locations=PHOTO_LOCATIONS,
        duration="{{ params.duration }}",
    )
    # [END howto_operator_klingfx_squish]


example_klingfx_squish()
