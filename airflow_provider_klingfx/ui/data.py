"""What the views show, read from what Airflow already holds: XComs and task instances.

Every generation of :class:`~airflow_provider_klingfx.operators.klingfx.KlingFxEffectOperator`
pushes XCom ``request`` (scene, model, duration, the photos as they may be shown) before anything
else, then ``generation_id``, ``video``, ``usage``, ``output_path`` as it goes, and ``error`` when
it fails; :class:`~airflow_provider_klingfx.operators.preview.KlingFxPreviewOperator` pushes
``preview`` (the GIF and poster of a saved video). Nothing here calls the vendor or reads a
connection: the API key never comes near the browser.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from airflow_provider_klingfx.operators.klingfx import (
    XCOM_ERROR,
    XCOM_GENERATION_ID,
    XCOM_OUTPUT_PATH,
    XCOM_REQUEST,
    XCOM_USAGE,
    XCOM_VIDEO,
)
from airflow_provider_klingfx.operators.preview import XCOM_PREVIEW

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

#: The XComs a generation is made of.
GENERATION_KEYS = (XCOM_REQUEST, XCOM_GENERATION_ID, XCOM_VIDEO, XCOM_USAGE, XCOM_OUTPUT_PATH, XCOM_ERROR)
#: How many of the most recent runs a gallery looks at, at most.
RECENT_RUNS = 25
#: How many generations a gallery shows, at most.
MAX_TILES = 300


@dataclass
class GenerationView:
    """One generation as the views show it: one task instance of the effects operator.

    :param dag_id: its DAG.
    :param run_id: its DAG run.
    :param task_id: its task.
    :param map_index: its map index (-1 unmapped).
    :param state: the task instance's state (``success``, ``failed``, ``deferred``, ...).
    :param xcoms: its XComs among :data:`GENERATION_KEYS`.
    :param start_date: when the task instance started.
    :param end_date: when it ended.
    :param duration: how long it ran, in seconds.
    :param preview: the ``preview`` XCom of its saved video (``gif_path``, ``poster_path``), if any.
    """

    dag_id: str
    run_id: str
    task_id: str
    map_index: int
    state: str | None
    xcoms: dict[str, Any] = field(default_factory=dict)
    start_date: datetime | None = None
    end_date: datetime | None = None
    duration: float | None = None
    preview: dict[str, Any] | None = None

    @property
    def request(self) -> dict[str, Any]:
        value = self.xcoms.get(XCOM_REQUEST)
        return value if isinstance(value, dict) else {}

    @property
    def scene(self) -> str:
        return str(self.request.get("effect_scene") or "")

    @property
    def video_url(self) -> str | None:
        video = self.xcoms.get(XCOM_VIDEO)
        url = video.get("url") if isinstance(video, dict) else None
        return url if isinstance(url, str) and url else None

    @property
    def output_path(self) -> str | None:
        value = self.xcoms.get(XCOM_OUTPUT_PATH)
        return value if isinstance(value, str) and value else None

    @property
    def error(self) -> str | None:
        """Why it failed: the vendor's reason for a generation the vendor failed, else the error."""
        value = self.xcoms.get(XCOM_ERROR)
        if isinstance(value, dict):
            return str(value.get("reason") or value.get("message") or value.get("type") or "")
        return None

    @property
    def usage(self) -> dict[str, Any]:
        value = self.xcoms.get(XCOM_USAGE)
        return value if isinstance(value, dict) else {}

    @property
    def has_video(self) -> bool:
        return self.video_url is not None or self.output_path is not None

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.dag_id, self.run_id, self.task_id, self.map_index)


def _xcom_rows(session: Session, conditions: list[Any], keys: tuple[str, ...]) -> list[Any]:
    from airflow.models.xcom import XComModel
    from sqlalchemy import select

    stmt: Any = select(
        XComModel.dag_id,
        XComModel.run_id,
        XComModel.task_id,
        XComModel.map_index,
        XComModel.key,
        XComModel.value,
    ).where(XComModel.key.in_(keys), *conditions)
    return list(session.execute(stmt))


def _value(row: Any) -> Any:
    from airflow.models.xcom import XComModel

    try:
        return XComModel.deserialize_value(row)
    except Exception:
        return None  # a value a custom XCom backend keeps elsewhere: shown as missing


def generation_dag_ids(session: Session, dag_ids: set[str]) -> list[str]:
    """Which of ``dag_ids`` have generations at all (the gallery's DAG choices), sorted."""
    from airflow.models.xcom import XComModel
    from sqlalchemy import select

    if not dag_ids:
        return []
    stmt: Any = select(XComModel.dag_id).where(XComModel.key == XCOM_REQUEST, XComModel.dag_id.in_(dag_ids))
    return sorted(set(session.scalars(stmt.distinct())))


def load_generations(
    session: Session,
    dag_ids: set[str],
    *,
    run_id: str | None = None,
    task_id: str | None = None,
    map_index: int | None = None,
    recent_runs: int = RECENT_RUNS,
) -> list[GenerationView]:
    """The generations of the given DAGs' most recent runs (or of one run), newest first.

    :param session: a metadata DB session.
    :param dag_ids: the DAGs to look in: only those the user may read.
    :param run_id: only this run.
    :param task_id: only this task (with ``run_id``: one task instance's view).
    :param map_index: only this map index.
    :param recent_runs: how many of the most recent runs (across ``dag_ids``) to look at.
    """
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from sqlalchemy import select, tuple_

    if not dag_ids:
        return []
    runs_stmt: Any = select(DagRun.dag_id, DagRun.run_id).where(DagRun.dag_id.in_(dag_ids))
    if run_id is not None:
        runs_stmt = runs_stmt.where(DagRun.run_id == run_id)
    runs = [
        (r.dag_id, r.run_id) for r in session.execute(runs_stmt.order_by(DagRun.id.desc()).limit(recent_runs))
    ]
    if not runs:
        return []
    in_runs = tuple_(XComModel.dag_id, XComModel.run_id).in_(runs)
    conditions: list[Any] = [in_runs]
    if task_id is not None:
        conditions.append(XComModel.task_id == task_id)
    if map_index is not None:
        conditions.append(XComModel.map_index == map_index)

    views: dict[tuple[str, str, str, int], GenerationView] = {}
    for row in _xcom_rows(session, conditions, GENERATION_KEYS):
        key = (row.dag_id, row.run_id, row.task_id, row.map_index)
        view = views.setdefault(key, GenerationView(*key, state=None))
        view.xcoms[row.key] = _value(row)
    # A task instance that pushed no ``request`` is not a generation (another task's XComs).
    views = {k: v for k, v in views.items() if XCOM_REQUEST in v.xcoms}
    if not views:
        return []

    ti_stmt = select(
        TaskInstance.dag_id,
        TaskInstance.run_id,
        TaskInstance.task_id,
        TaskInstance.map_index,
        TaskInstance.state,
        TaskInstance.start_date,
        TaskInstance.end_date,
        TaskInstance.duration,
    ).where(
        tuple_(TaskInstance.dag_id, TaskInstance.run_id, TaskInstance.task_id, TaskInstance.map_index).in_(
            list(views)
        )
    )
    for ti in session.execute(ti_stmt):
        found = views.get((ti.dag_id, ti.run_id, ti.task_id, ti.map_index))
        if found is not None:
            found.state = None if ti.state is None else str(getattr(ti.state, "value", ti.state))
            found.start_date, found.end_date, found.duration = ti.start_date, ti.end_date, ti.duration

    # Previews of the saved videos, made by any task of the same runs.
    previews: dict[str, dict[str, Any]] = {}
    for row in _xcom_rows(session, [in_runs], (XCOM_PREVIEW,)):
        value = _value(row)
        if isinstance(value, dict) and isinstance(value.get("video_path"), str):
            previews[value["video_path"]] = value
    for view in views.values():
        if view.output_path:
            view.preview = previews.get(view.output_path)

    order = {run: i for i, run in enumerate(runs)}
    return sorted(views.values(), key=lambda v: (order.get((v.dag_id, v.run_id), 0), v.task_id, v.map_index))[
        :MAX_TILES
    ]
