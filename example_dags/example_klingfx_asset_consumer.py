"""Runs whenever ``example_klingfx_media_pipeline`` saves a new video (the Asset ``klingfx_media_videos``).

Needs no connection of its own: the asset event carries the video's ``output_path``,
``video_url`` and ``generation_id``; here it only checks the file and reports its size.
Reads the environment variable ``KLINGFX_MEDIA_FOLDER`` as ``example_klingfx_media_pipeline`` does:
an Asset is one name and one URI in every DAG that uses it, and the URI names the folder the videos
are written to.
"""

from __future__ import annotations

import os
import re

import pendulum
from airflow.sdk import Asset, dag, task

MEDIA_FOLDER = os.environ.get("KLINGFX_MEDIA_FOLDER", "file:///tmp/klingfx-media").rstrip("/")
KLINGFX_VIDEOS = Asset(name="klingfx_media_videos", uri=re.sub(r"^(\w+://)[^/@]*@", r"\1", MEDIA_FOLDER))


@dag(
    schedule=[KLINGFX_VIDEOS],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    tags=["example", "klingfx", "media"],
)
def example_klingfx_asset_consumer():
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


example_klingfx_asset_consumer()
