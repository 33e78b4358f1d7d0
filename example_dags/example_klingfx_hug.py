"""Two photos, one scene: two people hugging. The first photo is placed on the left.

Needs a connection ``klingfx_default`` of type ``klingfx`` (Base URL + API key); see the README.
Two-person scenes (hug, kiss, heart_gesture) need exactly two photos, each with a visible face;
otherwise the vendor fails the generation with "Could not detect face in the image" and the task
fails without retrying (a retry would pay again for the same result).

Whoever triggers the DAG chooses the photos and the scene, and at most a *file name* for the video
(``output_name``, e.g. ``team-hug.mp4``: letters, digits, ``.``, ``_``, ``-``, no folders). Where it
lands is not theirs to choose: the folder comes from the Airflow Variable ``klingfx_output_base``
(e.g. ``file:///data/kling`` or ``s3://aws_default@my-bucket/kling``), which only those who may edit
Variables set. A trigger with a path in ``output_name`` is refused before the run starts. With a
name given, the MP4 is streamed there and XCom ``output_path`` names it.
The model is a Param too, the pro one by default (it costs more than the standard one); ``make demo``
runs this DAG and says which model it ran.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag

from airflow_provider_klingfx.domain import EFFECT_SCENES, MODELS, PRO_EFFECTS_MODEL, TWO_PERSON_SCENES
from airflow_provider_klingfx.operators.klingfx import KlingFxEffectOperator

# The scenes that take two photos, in the vendor's order (a fixed order keeps the serialized DAG stable).
TWO_PHOTO_SCENES = [scene for scene in EFFECT_SCENES if scene in TWO_PERSON_SCENES]

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
        "left_photo": Param(
            "https://images.pexels.com/photos/733872/pexels-photo-733872.jpeg", type="string"
        ),
        "right_photo": Param(
            "https://storage.googleapis.com/falserverless/juggernaut_examples/QEW5VrzccxGva7mPfEXjf.png",
            type="string",
        ),
        "scene": Param("hug", enum=TWO_PHOTO_SCENES),
        "model": Param(PRO_EFFECTS_MODEL, enum=list(MODELS)),
        "output_name": Param(
            "",
            type="string",
            # A plain file name: no folder, so a trigger cannot write anywhere else.
            pattern=r"^$|^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\.mp4$",
            description="optional: a file name such as team-hug.mp4, saved in the folder the "
            "Variable klingfx_output_base names; empty: keep only the CDN URL",
        ),
    },
)
def example_klingfx_hug():
    # [START howto_operator_klingfx_hug]
    KlingFxEffectOperator(
        task_id="hug",
        effect_scene="{{ params.scene }}",
        image_urls=["{{ params.left_photo }}", "{{ params.right_photo }}"],
        allowed_photo_locations=PHOTO_LOCATIONS,
        model="{{ params.model }}",
        output_path=(
            "{% if params.output_name %}"
            "{{ var.value.klingfx_output_base.rstrip('/') }}/{{ params.output_name }}"
            "{% endif %}"
        ),
    )
    # [END howto_operator_klingfx_hug]


example_klingfx_hug()
