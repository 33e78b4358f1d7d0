"""Every day, render an effect for each photo that arrived in a folder, and keep the videos.

Needs a connection ``klingfx_default`` of type ``klingfx``, a connection for the storage (e.g.
``aws_default`` and the ``s3`` extra) and two Airflow Variables:

* ``klingfx_inbox``: object storage prefix where photos land, one folder per day
  (``<inbox>/<YYYY-MM-DD>/*.jpg|png``), e.g. ``s3://aws_default@photos/inbox`` or
  ``gs://google_cloud_default@photos/inbox``;
* ``klingfx_outbox``: object storage prefix for the videos (``<outbox>/<YYYY-MM-DD>/<photo>.mp4``).

Nothing has to be public: each photo is given to the operator as its storage path, and the operator
checks it against Kling's limits and sends the API a presigned URL, made on the path's connection. A
local inbox (``file:///data/inbox``) cannot be presigned: its photos would need
``inline_base64_images=True``, which the vendor does not document for the effects models.

One mapped generation per photo; all of them wait in the triggerer at once.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, task

from airflow_provider_klingfx.operators.klingfx import KlingFxEffectOperator


@dag(
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["example", "klingfx", "media"],
)
def example_klingfx_daily_folder():
    @task
    def arrived_photos(ds: str | None = None) -> list[dict]:
        """The day's photos, as storage paths, and where each one's video goes."""
        from airflow.sdk import ObjectStoragePath, Variable

        inbox = f"{Variable.get('klingfx_inbox').rstrip('/')}/{ds}"
        outbox = f"{Variable.get('klingfx_outbox').rstrip('/')}/{ds}"
        folder = ObjectStoragePath(inbox)
        if not folder.exists():
            return []
        names = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
        # The photo stays a storage path (with its connection id): the operator checks and presigns it.
        return [
            {"image_urls": f"{inbox}/{name}", "output_path": f"{outbox}/{name.rsplit('.', 1)[0]}.mp4"}
            for name in names
        ]

    # [START howto_operator_klingfx_expand_kwargs]
    KlingFxEffectOperator.partial(
        task_id="squish",
        effect_scene="squish",
        # Photos only from the inbox, whatever a listing returns.
        allowed_photo_locations="{{ var.value.klingfx_inbox.rstrip('/') }}/",
    ).expand_kwargs(arrived_photos())
    # [END howto_operator_klingfx_expand_kwargs]


example_klingfx_daily_folder()
