"""Runs whenever ``example_klingfx_media_pipeline`` saves a new video (the Asset ``klingfx_media_videos``).

Needs no connection of its own: the asset event carries the video's ``output_path``,
``video_url`` and ``generation_id``; here it only checks the file and reports its size.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DAG, Asset, task

KLINGFX_VIDEOS = Asset(name="klingfx_media_videos", uri="file:///klingfx/media-pipeline/videos")

with DAG(
    dag_id="example_klingfx_asset_consumer",
    schedule=[KLINGFX_VIDEOS],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["example", "klingfx", "media"],
):
    # [START howto_operator_klingfx_asset_consumer]
    @task
    def new_videos(triggering_asset_events=None) -> list[dict]:
        """The videos announced by the events that triggered this run."""
        from airflow.sdk import ObjectStoragePath

        found = []
        for events in (triggering_asset_events or {}).values():
            for event in events:
                path = event.extra.get("output_path")
                size = ObjectStoragePath(path).stat().st_size if path else None
                found.append({"generation_id": event.extra.get("generation_id"), "path": path, "bytes": size})
        print(f"new videos: {found}")
        return found

    new_videos()
    # [END howto_operator_klingfx_asset_consumer]
