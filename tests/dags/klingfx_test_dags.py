"""DAGs used only by the test-suite: the non-deferrable path, retries after a paid submission, the
sensor in both modes."""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import DAG, Param, task

from airflow_provider_klingfx.operators.klingfx import KlingFxEffectOperator
from airflow_provider_klingfx.sensors.klingfx import KlingFxGenerationSensor

with DAG(
    dag_id="test_klingfx_not_deferrable",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={"photo": Param("https://example.invalid/p.png", type="string")},
):
    KlingFxEffectOperator(
        task_id="squish",
        effect_scene="squish",
        image_urls="{{ params.photo }}",
        deferrable=False,
        poll_interval=0.2,
    )

with DAG(
    dag_id="test_klingfx_retry_reattach",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={"photo": Param("https://example.invalid/p.png", type="string")},
):
    # A timeout shorter than the generation: each try times out until the generation completes.
    # On Airflow 3.3+ the retries reattach to the first try's generation instead of paying again; on
    # 3.1/3.2 the first timeout fails the task without retries, naming the paid generation.
    KlingFxEffectOperator(
        task_id="squish",
        effect_scene="squish",
        image_urls="{{ params.photo }}",
        poll_interval=0.2,
        timeout=1,
        retries=2,
        retry_delay=timedelta(seconds=0.5),
    )

with DAG(
    dag_id="test_klingfx_retries_after_payment",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={
        "photo": Param("https://example.invalid/p.png", type="string"),
        "output_path": Param("", type="string"),
    },
):
    # Whatever fails after the submission (a download, the poll, the connection), a retry may not
    # pay again: on 3.3+ it reattaches, before 3.3 the task fails without retries.
    KlingFxEffectOperator(
        task_id="squish",
        effect_scene="squish",
        image_urls="{{ params.photo }}",
        poll_interval=0.2,
        output_path="{{ params.output_path }}",
        retries=2,
        retry_delay=timedelta(seconds=0.5),
    )

with DAG(
    dag_id="test_klingfx_sensor",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={"photo": Param("https://example.invalid/p.png", type="string")},
):

    @task
    def submit(params: dict | None = None) -> str:
        """A generation submitted outside the operator, as a script or another system would."""
        from airflow_provider_klingfx.domain import EffectRequest
        from airflow_provider_klingfx.hooks.klingfx import KlingFxHook

        return KlingFxHook().submit(EffectRequest.build("squish", (params or {})["photo"])).id

    generation_id = submit()
    # Poking first, so that it is the one meeting the test's burst of API errors.
    waits = [
        KlingFxGenerationSensor(
            task_id=f"wait_{mode}",
            generation_id=generation_id,
            deferrable=mode == "deferred",
            poll_interval=0.2,
            timeout=60,
        )
        for mode in ("poke", "deferred")
    ]
    waits[0] >> waits[1]

with DAG(
    dag_id="test_klingfx_missing_connection",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
):
    KlingFxEffectOperator(
        task_id="squish",
        effect_scene="squish",
        image_urls="https://example.com/p.png",
        klingfx_conn_id="klingfx_nowhere",
    )

with DAG(
    dag_id="test_klingfx_execution_timeout",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={"photo": Param("https://example.invalid/p.png", type="string")},
):
    KlingFxEffectOperator(
        task_id="squish",
        effect_scene="squish",
        image_urls="{{ params.photo }}",
        deferrable=False,
        poll_interval=0.5,
        execution_timeout=timedelta(seconds=3),
    )

with DAG(
    dag_id="test_klingfx_photos",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={
        "photos": Param([], type="array", description="one squish generation per photo"),
        "inline": Param(False, type="boolean"),
        "check_urls": Param(False, type="boolean"),
    },
):
    # One mapped generation per photo (storage path, local file or URL), so one run shows each
    # photo rule at work, each in its own task log.

    @task
    def photos(params: dict | None = None) -> list[dict]:
        params = params or {}
        return [
            {
                "image_urls": photo,
                "inline_base64_images": params["inline"],
                "check_image_urls": params["check_urls"],
            }
            for photo in params["photos"]
        ]

    KlingFxEffectOperator.partial(task_id="squish", effect_scene="squish", poll_interval=0.2).expand_kwargs(
        photos()
    )


class _SetFails:
    """A ``task_state_store`` whose ``set`` fails (an Airflow API hiccup); reads pass through."""

    def __init__(self, store):
        self._store = store

    def set(self, key, value):
        raise RuntimeError("the task state store did not answer")

    def __getattr__(self, name):
        return getattr(self._store, name)


class _StoreFailsOnTheFirstTry(KlingFxEffectOperator):
    def execute(self, context):
        store = context.get("task_state_store")
        if store is not None and context["ti"].try_number == 1:
            context["task_state_store"] = _SetFails(store)
        return super().execute(context)


class _ConnectionMovesAfterTheFirstTry(KlingFxEffectOperator):
    """From the second try on, the task's connection names another API (as if an admin edited it)."""

    def execute(self, context):
        if context["ti"].try_number > 1:
            self.klingfx_conn_id = "klingfx_moved"
        return super().execute(context)


with DAG(
    dag_id="test_klingfx_paying_once_at_the_edges",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={"photo": Param("https://example.invalid/p.png", type="string")},
):
    # The record of the paid generation cannot be written: a retry could not find it.
    _StoreFailsOnTheFirstTry(
        task_id="store_fails",
        effect_scene="squish",
        image_urls="{{ params.photo }}",
        poll_interval=0.2,
        retries=2,
        retry_delay=timedelta(seconds=0.5),
    )
    # The first try times out (1 s for a longer generation); the retry's connection points elsewhere.
    _ConnectionMovesAfterTheFirstTry(
        task_id="connection_moves",
        effect_scene="squish",
        image_urls="{{ params.photo }}",
        poll_interval=0.2,
        timeout=1,
        retries=2,
        retry_delay=timedelta(seconds=0.5),
    )

with DAG(
    dag_id="test_klingfx_durable",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={"photo": Param("https://example.invalid/p.png", type="string")},
):
    # The same task twice, each try timing out (1 s for a longer generation), one retry each:
    # durable reattaches (3.3+) or fails without paying again (3.1/3.2); not durable pays again.
    for durable in (True, False):
        KlingFxEffectOperator(
            task_id=f"durable_{str(durable).lower()}",
            effect_scene="squish",
            image_urls="{{ params.photo }}",
            poll_interval=0.2,
            timeout=1,
            durable=durable,
            retries=1,
            retry_delay=timedelta(seconds=0.5),
        )

with DAG(
    dag_id="test_klingfx_registry",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    params={
        "photo": Param("https://example.invalid/p.png", type="string"),
        "registry": Param("file:///tmp/klingfx-registry", type="string"),
    },
):
    # At-least-once delivery: the same photo can start several runs. One pays; the others deliver it.
    KlingFxEffectOperator(
        task_id="squish",
        effect_scene="squish",
        image_urls="{{ params.photo }}",
        generation_registry="{{ params.registry }}",
        poll_interval=0.2,
    )
