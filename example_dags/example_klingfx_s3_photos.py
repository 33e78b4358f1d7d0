"""Photos in a private S3 bucket → one video per photo, saved to S3 → a GIF preview of each.

Needs a connection ``klingfx_default`` of type ``klingfx``, an AWS connection that can read the
photos and write the videos (``s3://<aws_conn_id>@bucket/prefix`` picks it; default
``aws_default``), and the ``s3`` and ``preview`` extras. Nothing has to be public: each photo is
checked against Kling's limits (JPEG or PNG, at most 10 MB, each side at least 300 px, aspect ratio
between 1:2.5 and 2.5:1), then sent to the API as a presigned URL valid for one hour, made with the
Amazon provider's S3Hook on the same connection.

Each photo gets its own chain, a mapped task group ``per_photo`` (``generate`` → ``preview``): a photo
that fails its checks, or a generation the vendor fails, stops only its own preview; the others go on.
Each run writes ``<videos>/<photo>.mp4``, ``<photo>.preview.gif`` and ``<photo>.poster.jpg``.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, task, task_group

from airflow_provider_klingfx.domain import EFFECT_SCENES, TWO_PERSON_SCENES
from airflow_provider_klingfx.operators.klingfx import KlingFxEffectOperator
from airflow_provider_klingfx.operators.preview import KlingFxPreviewOperator

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png"}
# The scenes that take one photo, in the vendor's order (a fixed order keeps the serialized DAG stable).
ONE_PHOTO_SCENES = [scene for scene in EFFECT_SCENES if scene not in TWO_PERSON_SCENES]

# Whoever triggers the DAG picks the photo Param, not which connections, buckets or hosts photos are
# read from: an admin lists those in the Variable klingfx_photo_locations (comma-separated prefixes).
PHOTO_LOCATIONS = "{{ var.value.get('klingfx_photo_locations', 's3://aws_default@klingfx-photos/') }}"


@dag(
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["example", "klingfx", "media", "s3"],
    params={
        "photos": Param(
            "s3://aws_default@klingfx-photos/people",
            type="string",
            description="the folder of photos: s3://<aws_conn_id>@bucket/prefix",
        ),
        "videos": Param(
            "s3://aws_default@klingfx-videos/squish",
            type="string",
            description="where the videos and previews go: s3://<aws_conn_id>@bucket/prefix",
        ),
        "scene": Param("squish", enum=ONE_PHOTO_SCENES, description="a scene that takes one photo"),
    },
)
def example_klingfx_s3_photos():
    @task
    def list_photos(params: dict | None = None) -> list[dict]:
        """One generation per photo in the folder: the photo as a storage path, and its video's path."""
        from airflow.sdk import ObjectStoragePath

        params = params or {}
        folder = params["photos"].rstrip("/")
        videos = params["videos"].rstrip("/")
        names = sorted(
            p.name for p in ObjectStoragePath(folder).iterdir() if p.suffix.lower() in PHOTO_SUFFIXES
        )
        # The photo stays an s3:// path (with its connection id): the operator checks and presigns it.
        return [
            {"image_urls": f"{folder}/{name}", "output_path": f"{videos}/{name.rsplit('.', 1)[0]}.mp4"}
            for name in names
        ]

    # [START howto_operator_klingfx_s3_photos]
    @task_group
    def per_photo(image_urls: str, output_path: str) -> None:
        """One photo's chain: its generation, then the preview of its saved video."""
        generate = KlingFxEffectOperator(
            task_id="generate",
            effect_scene="{{ params.scene }}",
            image_urls=image_urls,
            output_path=output_path,
            allowed_photo_locations=PHOTO_LOCATIONS,
        )
        KlingFxPreviewOperator(task_id="preview", video_path=generate.output["output_path"])

    per_photo.expand_kwargs(list_photos())
    # [END howto_operator_klingfx_s3_photos]


example_klingfx_s3_photos()
