"""Worker-time benchmark: one 2-minute generation three ways (deferrable, on the worker, vendor script).

Connection ``klingfx_worker`` (the benchmark's emulator). Trigger with ``{"photo": "<url>"}``.
"""

from __future__ import annotations

import time

import pendulum
from airflow.sdk import DAG, BaseHook, Param, task

from airflow_provider_klingfx.operators.klingfx import KlingFxEffectOperator

CONN_ID = "klingfx_worker"
START = pendulum.datetime(2026, 1, 1, tz="UTC")


def _dag(dag_id: str) -> DAG:
    return DAG(
        dag_id, schedule=None, start_date=START, catchup=False, params={"photo": Param("", type="string")}
    )


for dag_id, deferrable in (("bench_wt_deferrable", True), ("bench_wt_blocking", False)):
    with _dag(dag_id):
        KlingFxEffectOperator(
            task_id="generate",
            effect_scene="squish",
            image_urls="{{ params.photo }}",
            klingfx_conn_id=CONN_ID,
            deferrable=deferrable,
            poll_interval=10,
        )


with _dag("bench_wt_vendor"):

    @task
    def generate(params: dict | None = None) -> str:
        """The vendor's example script: POST, then GET every 10 s until the status is final."""
        import requests

        conn = BaseHook.get_connection(CONN_ID)
        url = f"{conn.host}/v2/generate/video/kling/generation"
        headers = {"Authorization": f"Bearer {conn.password}", "Content-Type": "application/json"}
        body = {
            "model": "klingai/kling-video-v1.6-standard-effects",
            "image_url": (params or {})["photo"],
            "effect_scene": "squish",
            "duration": 5,
        }
        gen_id = requests.post(url, json=body, headers=headers, timeout=30).json()["id"]
        start = time.time()
        while time.time() - start < 1000:
            data = requests.get(url, params={"generation_id": gen_id}, headers=headers, timeout=30).json()
            status = data.get("status")
            if status in ("waiting", "active", "queued", "generating"):
                print(f"Status: {status}. Checking again in 10 seconds.")
                time.sleep(10)
            else:
                print("Processing complete:", data)
                return str(data["video"]["url"])
        raise TimeoutError(gen_id)

    generate()


with _dag("bench_wt_noop"):

    @task
    def noop() -> None:
        """Does nothing: what one task run costs a worker slot in this deployment, whatever the task."""

    noop()
