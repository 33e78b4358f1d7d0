"""Every day, render an effect for each photo that arrived in a folder, and keep the videos.

Needs a connection ``klingfx_default`` of type ``klingfx`` and three Airflow Variables:

* ``klingfx_inbox``: object storage prefix where photos land, one folder per day
  (``<inbox>/<YYYY-MM-DD>/*.jpg|png``), e.g. ``s3://aws_default@photos/inbox`` or ``file:///data/inbox``;
* ``klingfx_inbox_public_url``: the public http(s) URL of the same prefix (the API downloads the
  photos itself, so it needs URLs it can reach: a CDN or a public bucket in front of the inbox);
* ``klingfx_outbox``: object storage prefix for the videos (``<outbox>/<YYYY-MM-DD>/<photo>.mp4``).

One mapped generation per photo; all of them wait in the triggerer at once.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, task

from airflow_provider_klingfx.operators.klingfx import KlingFxEffectOperator

with DAG(
    dag_id="example_klingfx_daily_folder",
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["example", "klingfx", "media"],
):

    @task
    def arrived_photos(ds: str | None = None) -> list[dict]:
        """The day's photos: their public URL (for the API) and where their video goes."""
        from airflow.sdk import ObjectStoragePath, Variable

        inbox = ObjectStoragePath(f"{Variable.get('klingfx_inbox')}/{ds}")
        public = f"{Variable.get('klingfx_inbox_public_url')}/{ds}"
        outbox = f"{Variable.get('klingfx_outbox')}/{ds}"
        if not inbox.exists():
            return []
        photos = sorted(p for p in inbox.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
        return [{"image_urls": f"{public}/{p.name}", "output_path": f"{outbox}/{p.stem}.mp4"} for p in photos]

    # [START howto_operator_klingfx_expand_kwargs]
    KlingFxEffectOperator.partial(task_id="squish", effect_scene="squish").expand_kwargs(arrived_photos())
    # [END howto_operator_klingfx_expand_kwargs]
