"""What the views show, read from what Airflow already holds: task instances and their XComs.

A generation is a task instance of the provider's own operators (the task instance's ``operator``
column), never merely a task that pushed an XCom named ``request``: any task can push XComs with
these common names. Each generation's XComs (``request``, ``generation_id``, ``video``, ``usage``,
``output_path``, ``error``) and the ``preview`` XComs of
:class:`~airflow_provider_klingfx.operators.preview.KlingFxPreviewOperator` tasks of the same run are
read in as few queries as the page needs (a gallery 2, a task instance's page or media 1 or 2), and
every value is read defensively: an XCom is data anyone with XCom write access may have shaped.

Nothing here calls the vendor or reads a connection, and nothing here reads a file: where a file may be
read from is :mod:`airflow_provider_klingfx.ui.access`'s decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from airflow_provider_klingfx.domain import Usage, redact_url
from airflow_provider_klingfx.operators.klingfx import (
    XCOM_ERROR,
    XCOM_GENERATION_ID,
    XCOM_OUTPUT_PATH,
    XCOM_REQUEST,
    XCOM_USAGE,
    XCOM_VIDEO,
    KlingFxEffectOperator,
)
from airflow_provider_klingfx.operators.preview import XCOM_PREVIEW, KlingFxPreviewOperator
from airflow_provider_klingfx.sensors.klingfx import KlingFxGenerationSensor

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

#: The XComs a generation is made of.
GENERATION_KEYS: Final = (
    XCOM_REQUEST,
    XCOM_GENERATION_ID,
    XCOM_VIDEO,
    XCOM_USAGE,
    XCOM_OUTPUT_PATH,
    XCOM_ERROR,
)
#: The operators whose task instances are generations (``task_instance.operator``: the class name):
#: the effects operator, and the sensor that waits for a generation it submitted without waiting.
GENERATION_OPERATORS: Final = (KlingFxEffectOperator.__name__, KlingFxGenerationSensor.__name__)
#: The XComs that make a task instance of those operators a generation to show: the effects operator
#: pushes ``request`` first, the sensor ``generation_id`` (a skipped or unstarted one pushed neither).
IDENTIFYING_KEYS: Final = (XCOM_REQUEST, XCOM_GENERATION_ID)
#: The operators whose ``preview`` XCom names a generation's GIF and poster.
PREVIEW_OPERATORS: Final = (KlingFxPreviewOperator.__name__,)
#: How many of the newest runs with generations a gallery shows, at most.
RECENT_RUNS: Final = 25
#: How many generations a gallery shows, at most.
MAX_TILES: Final = 300


def _text(value: Any, limit: int = 2000) -> str | None:
    return value[:limit] if isinstance(value, str) and value else None


@dataclass
class GenerationView:
    """One generation as the views show it: one task instance of the effects operator.

    :param dag_id: its DAG.
    :param run_id: its DAG run.
    :param task_id: its task.
    :param map_index: its map index (-1 unmapped).
    :param state: the task instance's state (``success``, ``failed``, ``deferred``, ...).
    :param xcoms: its XComs among :data:`GENERATION_KEYS`, as stored (untrusted).
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
        return _text(self.request.get("effect_scene"), 100) or ""

    @property
    def model(self) -> str | None:
        return _text(self.request.get("model"), 200)

    @property
    def seconds(self) -> int | None:
        value = self.request.get("duration")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def generation_id(self) -> str | None:
        return _text(self.xcoms.get(XCOM_GENERATION_ID), 300)

    @property
    def video_url(self) -> str | None:
        """The vendor's URL of the video: http(s) only (anything else is not a video to play)."""
        video = self.xcoms.get(XCOM_VIDEO)
        url = _text(video.get("url") if isinstance(video, dict) else None)
        return url if url and url.lower().startswith(("https://", "http://")) else None

    @property
    def output_path(self) -> str | None:
        return _text(self.xcoms.get(XCOM_OUTPUT_PATH))

    @property
    def error(self) -> str | None:
        """Why it failed: the vendor's reason for a generation the vendor failed, else the error."""
        value = self.xcoms.get(XCOM_ERROR)
        if isinstance(value, dict):
            return _text(value.get("reason")) or _text(value.get("message")) or _text(value.get("type"))
        return None

    @property
    def usage(self) -> Usage | None:
        return Usage.from_dict(self.xcoms.get(XCOM_USAGE))

    @property
    def photos(self) -> list[dict[str, Any]]:
        """Each photo as ``{"shown": scheme://host/path, "thumbnail": where it was read, or None}``."""
        photos = self.request.get("photos")
        out = []
        for photo in photos[:2] if isinstance(photos, list) else []:
            if isinstance(photo, dict):
                shown = _text(photo.get("shown"))
                out.append(
                    {"shown": redact_url(shown) if shown else "", "thumbnail": _text(photo.get("thumbnail"))}
                )
        return out

    @property
    def gif_path(self) -> str | None:
        return _text((self.preview or {}).get("gif_path"))

    @property
    def poster_path(self) -> str | None:
        return _text((self.preview or {}).get("poster_path"))

    @property
    def has_video(self) -> bool:
        return self.video_url is not None or self.output_path is not None


def _xcom_value(raw: Any) -> Any:
    from airflow.models.xcom import XComModel

    try:
        return XComModel.deserialize_value(_Row(raw))
    except Exception:
        return None  # a value a custom XCom backend keeps elsewhere, or garbage: shown as missing


@dataclass
class _Row:
    value: Any


def _state(value: Any) -> str | None:
    return None if value is None else str(getattr(value, "value", value))


def _query(run_filter: Any, generation_filter: Any) -> Any:
    """The XComs of generation task instances that pass ``generation_filter``, and the ``preview``
    XComs of preview task instances, in the runs ``run_filter`` selects, with the task instances'
    fields: one statement, along the XCom table's primary key (it starts with the run's id)."""
    from airflow.models.taskinstance import TaskInstance as TI
    from airflow.models.xcom import XComModel as X
    from sqlalchemy import and_, or_, select

    same_task_instance = and_(
        TI.dag_id == X.dag_id, TI.run_id == X.run_id, TI.task_id == X.task_id, TI.map_index == X.map_index
    )
    return (
        select(
            X.dag_id,
            X.run_id,
            X.task_id,
            X.map_index,
            X.key,
            X.value,
            TI.state,
            TI.start_date,
            TI.end_date,
            TI.duration,
        )
        .join(TI, same_task_instance)
        .where(
            run_filter,
            or_(
                and_(X.key.in_(GENERATION_KEYS), TI.operator.in_(GENERATION_OPERATORS), generation_filter),
                and_(X.key == XCOM_PREVIEW, TI.operator.in_(PREVIEW_OPERATORS)),
            ),
        )
        .order_by(X.dag_run_id.desc(), X.task_id, X.map_index)
    )


def _views(session: Session, stmt: Any) -> list[GenerationView]:
    """The generations the rows of :func:`_query` make, each with its preview, in the rows' order.

    A task instance that pushed none of :data:`IDENTIFYING_KEYS` is not shown (a skipped or not yet
    started one).
    """
    views: dict[tuple[str, str, str, int], GenerationView] = {}
    previews: dict[str, dict[str, Any]] = {}
    for row in session.execute(stmt):
        value = _xcom_value(row.value)
        if row.key == XCOM_PREVIEW:
            if isinstance(value, dict) and isinstance(value.get("video_path"), str):
                previews[value["video_path"]] = value
            continue
        key = (row.dag_id, row.run_id, row.task_id, row.map_index)
        if key not in views:
            views[key] = GenerationView(
                *key,
                state=_state(row.state),
                start_date=row.start_date,
                end_date=row.end_date,
                duration=row.duration,
            )
        views[key].xcoms[row.key] = value
    shown = [v for v in views.values() if any(k in v.xcoms for k in IDENTIFYING_KEYS)]
    for view in shown:
        view.preview = previews.get(view.output_path) if view.output_path else None
    return shown


def load_generation(
    session: Session, dag_id: str, run_id: str, task_id: str, map_index: int
) -> GenerationView | None:
    """One task instance's generation, with its preview (one query), or None if it is not one.

    :param session: a metadata DB session.
    :param dag_id: the DAG (the caller has checked the user may read its XComs).
    :param run_id: the run.
    :param task_id: the task.
    :param map_index: the map index (-1 unmapped).
    """
    from airflow.models.dagrun import DagRun
    from airflow.models.xcom import XComModel as X
    from sqlalchemy import and_, select

    run = select(DagRun.id).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id).scalar_subquery()
    stmt = _query(X.dag_run_id == run, and_(X.task_id == task_id, X.map_index == map_index))
    return next(iter(_views(session, stmt)), None)


def load_generations(
    session: Session,
    dag_ids: set[str],
    *,
    run_id: str | None = None,
    recent_runs: int = RECENT_RUNS,
) -> list[GenerationView]:
    """The generations of the newest runs *that have generations* of the given DAGs, newest first.

    Two queries, whatever else the deployment runs: the newest runs holding an identifying XCom of a
    generation task instance (newest first along the XCom table's primary key), then their
    generations and previews (:func:`_query`).

    :param session: a metadata DB session.
    :param dag_ids: the DAGs to look in: only those whose XComs the user may read.
    :param run_id: only this run.
    :param recent_runs: how many runs with generations (across ``dag_ids``) to show.
    """
    from airflow.models.taskinstance import TaskInstance as TI
    from airflow.models.xcom import XComModel as X
    from sqlalchemy import select, true

    if not dag_ids:
        return []
    is_generation = (
        select(TI.id)
        .where(
            TI.dag_id == X.dag_id,
            TI.run_id == X.run_id,
            TI.task_id == X.task_id,
            TI.map_index == X.map_index,
            TI.operator.in_(GENERATION_OPERATORS),
        )
        .exists()
    )
    runs_stmt: Any = select(X.dag_run_id).where(
        X.key.in_(IDENTIFYING_KEYS), X.dag_id.in_(dag_ids), is_generation
    )
    if run_id is not None:
        runs_stmt = runs_stmt.where(X.run_id == run_id)
    runs_stmt = runs_stmt.group_by(X.dag_run_id).order_by(X.dag_run_id.desc()).limit(recent_runs)
    runs = list(session.scalars(runs_stmt))
    if not runs:
        return []
    return _views(session, _query(X.dag_run_id.in_(runs), true()))[:MAX_TILES]
