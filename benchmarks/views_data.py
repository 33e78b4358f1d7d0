"""A busy deployment's metadata database, for ``bench_views.py``: generations among many other runs.

Written straight into a migrated Airflow 3 database (PostgreSQL) with ``COPY``, the rows Airflow's own
processes would have left (``dag_bundle``, ``dag``, ``dag_version``, ``dag_run``, ``task_instance``,
``xcom``), without importing Airflow: what the views read, nothing else. The default shape:

* **10,000 generations across 200 DAGs**: 5 runs per DAG, each with a ``photos`` ``@task``, a mapped
  ``generate`` task of ``KlingFxEffectOperator`` (10 task instances, one in 20 failed with an ``error``
  XCom) and a mapped ``preview`` task of ``KlingFxPreviewOperator`` (one per saved video). A generation's
  XComs are the operator's: ``request``, ``generation_id``, ``video``, ``usage``, ``output_path``,
  ``return_value`` (``request``, ``generation_id``, ``error`` when it failed); a preview's ``preview``
  and ``return_value``.
* **50,000 runs of 300 other DAGs** without generations: an ``extract`` ``@task``
  (``_PythonDecoratedOperator``) returning a value, half of them a ``load`` ``BashOperator`` too, and one
  run in ten a plain ``@task`` ``prepare`` that pushes XComs named ``request`` and ``output_path``
  (not generations: they must never show up as such).
* 20 of the generation DAGs also have 30 newer runs where a branch skipped ``generate`` (a ``skipped``
  task instance of the operator, map index -1, no XCom), so a DAG's 25 newest runs hold no generation.

Runs are numbered (``dag_run.id``) in time order over the last 30 days. The generation runs fall in
the oldest 80 %, the skipped ones in the next 10 %, and the newest 10 % are other DAGs' runs only: the
25 newest runs of all DAGs hold no generation, which is what a busy deployment looks like to a gallery
that looks at the newest runs overall.
"""

from __future__ import annotations

import csv
import io
import json
import random
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

EFFECT_OPERATOR = "KlingFxEffectOperator"
PREVIEW_OPERATOR = "KlingFxPreviewOperator"
PLAIN_TASK_OPERATOR = "_PythonDecoratedOperator"
BUNDLE = "dags-folder"
SCENES = ("hug", "kiss", "squish", "expansion", "heart_gesture", "fuzzyfuzzy")
MODEL = "klingai/kling-video-v1.6-standard-effects"
GENERATION_TASK = "generate"
PREVIEW_TASK = "preview"
FACE_ERROR = "Could not detect face in the image"


@dataclass(frozen=True)
class Sizes:
    """How much there is.

    :param gen_dags: DAGs with generations.
    :param runs_per_gen_dag: runs of each, each with ``mapped`` generations.
    :param mapped: generations (mapped task instances) per run.
    :param other_dags: DAGs without generations.
    :param other_runs: their runs, all together.
    :param skip_dags: generation DAGs that also have ``skip_runs`` newer runs that skipped ``generate``.
    :param skip_runs: such runs per DAG.
    """

    gen_dags: int = 200
    runs_per_gen_dag: int = 5
    mapped: int = 10
    other_dags: int = 300
    other_runs: int = 50_000
    skip_dags: int = 20
    skip_runs: int = 30

    @property
    def generations(self) -> int:
        return self.gen_dags * self.runs_per_gen_dag * self.mapped


FULL = Sizes()
QUICK = Sizes(gen_dags=20, other_dags=30, other_runs=5_000, skip_dags=2)


def gen_dag_id(i: int) -> str:
    return f"kling_effects_{i:03d}"


def other_dag_id(i: int) -> str:
    return f"etl_pipeline_{i:03d}"


def uuid7(ts: datetime, rng: random.Random) -> uuid.UUID:
    """A UUID version 7 (48-bit milliseconds, then random bits), as Airflow's ids are."""
    ms = int(ts.timestamp() * 1000) & ((1 << 48) - 1)
    value = (ms << 80) | (0x7 << 76) | (rng.getrandbits(12) << 64) | (0b10 << 62) | rng.getrandbits(62)
    return uuid.UUID(int=value)


class _Table:
    """Rows of one table, written with ``COPY ... FROM STDIN (FORMAT csv)`` in chunks."""

    def __init__(self, name: str, columns: Sequence[str]) -> None:
        self.name = name
        self.columns = tuple(columns)
        self.buf = io.StringIO()
        self.writer = csv.writer(self.buf, lineterminator="\n")
        self.count = 0
        self.pending = 0

    def add(self, **row: Any) -> None:
        self.writer.writerow([_csv_value(row.get(c)) for c in self.columns])
        self.count += 1
        self.pending += 1

    def flush(self, cur: Any) -> None:
        if not self.pending:
            return
        self.buf.seek(0)
        cur.copy_expert(
            f"COPY {self.name} ({', '.join(self.columns)}) FROM STDIN WITH (FORMAT csv, NULL '\\N')",
            self.buf,
        )
        self.buf = io.StringIO()
        self.writer = csv.writer(self.buf, lineterminator="\n")
        self.pending = 0


def _csv_value(value: Any) -> Any:
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _json(value: Any) -> str:
    """An XCom value as Airflow 3 stores it: the JSON of the value itself (``xcom.value`` is JSONB)."""
    return json.dumps(value, separators=(",", ":"))


@dataclass
class Manifest:
    """What was written, and what the benchmark requests."""

    sizes: dict[str, int]
    dag_runs: int
    task_instances: int
    xcoms: int
    gen_dag_ids: list[str]
    other_dag_ids: list[str]
    skip_dag_ids: list[str]
    #: The newest run with generations: (dag_id, run_id).
    newest_generation_run: list[str]
    #: The ``dag_run.id`` of the newest generation run, and of the newest run overall.
    newest_generation_run_pk: int
    #: Every run with generations, oldest first: [dag_run.id, dag_id, run_id].
    generation_runs: list[list[Any]]
    #: Every run of a generation DAG that skipped the generation (a ``skipped`` task instance of the
    #: operator, no XCom): [dag_run.id, dag_id, run_id].
    skipped_runs: list[list[Any]]
    newest_run_pk: int
    #: Generations to request the media and tab of: dicts of dag_id, run_id, task_id, map_index,
    #: output_path, gif_path, poster_path (all file:// URLs under ``videos_root``).
    samples: list[dict[str, Any]]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def populate(conn: Any, videos_root: Path, sizes: Sizes = FULL, *, seed: int = 20261207) -> Manifest:
    """Write the deployment's rows into the migrated database behind ``conn`` (psycopg2), then ANALYZE.

    :param conn: a psycopg2 connection to a freshly migrated Airflow 3.3 database.
    :param videos_root: where generations' ``output_path``, GIFs and posters point (``file://``); only
        the sampled ones are created, by the benchmark.
    :param sizes: how much.
    :param seed: the random draw (run placement, failures) is the same every time.
    """
    started = time.monotonic()
    rng = random.Random(seed)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    span = timedelta(days=30)
    base = now - span

    gen_dags = [gen_dag_id(i) for i in range(sizes.gen_dags)]
    other_dags = [other_dag_id(i) for i in range(sizes.other_dags)]
    skip_dags = gen_dags[: sizes.skip_dags]

    # -- run placement, in dag_run.id (time) order -----------------------------------------------
    gen_runs = sizes.gen_dags * sizes.runs_per_gen_dag
    skip_runs = len(skip_dags) * sizes.skip_runs
    total = gen_runs + skip_runs + sizes.other_runs
    tail = int(total * 0.10)  # newest: other DAGs' runs only
    seg_b = max(skip_runs, int(total * 0.10))  # next: the skipped runs among other runs
    seg_a = total - tail - seg_b  # oldest: every generation run among other runs
    kinds_a = ["gen"] * gen_runs + ["other"] * (seg_a - gen_runs)
    kinds_b = ["skip"] * skip_runs + ["other"] * (seg_b - skip_runs)
    rng.shuffle(kinds_a)
    rng.shuffle(kinds_b)
    kinds = kinds_a + kinds_b + ["other"] * tail
    # Generation runs in round-robin over the DAGs (run k of every DAG before run k+1 of any).
    gen_order = iter([(d, k) for k in range(sizes.runs_per_gen_dag) for d in range(sizes.gen_dags)])
    skip_order = iter([(d, k) for k in range(sizes.skip_runs) for d in range(len(skip_dags))])

    t_bundle = _Table("dag_bundle", ("name", "active", "last_refreshed"))
    t_dag = _Table(
        "dag",
        (
            "dag_id", "is_paused", "is_stale", "last_parsed_time", "last_parse_duration", "fileloc",
            "relative_fileloc", "bundle_name", "owners", "timetable_type", "timetable_summary",
            "timetable_description", "partition_mapper_info", "max_active_tasks", "max_active_runs",
            "max_consecutive_failed_dag_runs", "has_task_concurrency_limits", "has_import_errors",
        ),
    )  # fmt: skip
    t_version = _Table(
        "dag_version", ("id", "version_number", "dag_id", "bundle_name", "created_at", "last_updated")
    )
    t_run = _Table(
        "dag_run",
        (
            "id", "dag_id", "queued_at", "logical_date", "start_date", "end_date", "state", "run_id",
            "run_type", "triggered_by", "conf", "data_interval_start", "data_interval_end", "run_after",
            "last_scheduling_decision", "log_template_id", "created_at", "updated_at", "clear_number",
            "created_dag_version_id",
        ),
    )  # fmt: skip
    t_ti = _Table(
        "task_instance",
        (
            "id", "task_id", "dag_id", "run_id", "map_index", "start_date", "end_date", "duration",
            "state", "try_number", "max_tries", "hostname", "unixname", "pool", "pool_slots", "queue",
            "priority_weight", "operator", "custom_operator_name", "queued_dttm", "scheduled_dttm",
            "pid", "executor", "updated_at", "dag_version_id",
        ),
    )  # fmt: skip
    t_xcom = _Table(
        "xcom",
        ("dag_run_id", "task_id", "map_index", "key", "dag_result", "dag_id", "run_id", "value", "timestamp"),
    )
    tables = (t_bundle, t_dag, t_version, t_run, t_ti, t_xcom)

    t_bundle.add(name=BUNDLE, active=True, last_refreshed=now)
    versions: dict[str, uuid.UUID] = {}
    for dag_id in gen_dags + other_dags:
        is_gen = dag_id in gen_dags
        t_dag.add(
            dag_id=dag_id,
            is_paused=False,
            is_stale=False,
            last_parsed_time=now,
            last_parse_duration=0.2,
            fileloc=f"/opt/airflow/dags/{dag_id}.py",
            relative_fileloc=f"{dag_id}.py",
            bundle_name=BUNDLE,
            owners="airflow",
            timetable_type="airflow.timetables.simple.NullTimetable"
            if is_gen
            else "airflow.timetables.trigger.CronTriggerTimetable",
            timetable_summary=None if is_gen else "0 * * * *",
            timetable_description="Never, external triggers only" if is_gen else "Every hour",
            partition_mapper_info="[]",
            max_active_tasks=16,
            max_active_runs=16,
            max_consecutive_failed_dag_runs=0,
            has_task_concurrency_limits=False,
            has_import_errors=False,
        )
        versions[dag_id] = uuid7(base, rng)
        t_version.add(
            id=versions[dag_id],
            version_number=1,
            dag_id=dag_id,
            bundle_name=BUNDLE,
            created_at=base - timedelta(days=1),
            last_updated=base - timedelta(days=1),
        )

    step = span / total
    samples: list[dict[str, Any]] = []
    newest_gen: tuple[str, str] = ("", "")
    newest_gen_pk = 0
    generation_runs: list[list[Any]] = []
    skipped_runs: list[list[Any]] = []
    other_count = 0
    # The media and tab requests: generations of the oldest and of the newest generation run.
    sample_runs = {(0, 0), (sizes.gen_dags - 1, sizes.runs_per_gen_dag - 1)}

    def ti(dag_id: str, run_id: str, task_id: str, operator: str, when: datetime, **kw: Any) -> None:
        state = kw.pop("state", "success")
        seconds = kw.pop("seconds", 2.0)
        ran = state in ("success", "failed")
        t_ti.add(
            id=uuid7(when, rng),
            task_id=task_id,
            dag_id=dag_id,
            run_id=run_id,
            map_index=kw.pop("map_index", -1),
            start_date=when if ran else None,
            end_date=when + timedelta(seconds=seconds) if ran else when,
            duration=seconds if ran else None,
            state=state,
            try_number=1 if ran else 0,
            max_tries=0,
            hostname="worker-1" if ran else None,
            unixname="airflow",
            pool="default_pool",
            pool_slots=1,
            queue="default",
            priority_weight=1,
            operator=operator,
            custom_operator_name="@task" if operator == PLAIN_TASK_OPERATOR else None,
            queued_dttm=when - timedelta(seconds=1) if ran else None,
            scheduled_dttm=when - timedelta(seconds=2) if ran else None,
            pid=None,
            executor=None,
            updated_at=when + timedelta(seconds=seconds),
            dag_version_id=versions[dag_id],
        )
        assert not kw, kw

    def xcom(
        pk: int, dag_id: str, run_id: str, task_id: str, key: str, value: Any, when: datetime, mi: int = -1
    ) -> None:
        t_xcom.add(
            dag_run_id=pk,
            task_id=task_id,
            map_index=mi,
            key=key,
            dag_result=False,
            dag_id=dag_id,
            run_id=run_id,
            value=_json(value),
            timestamp=when,
        )

    for pk0, kind in enumerate(kinds):
        pk = pk0 + 1
        when = base + step * pk0
        state = "success"
        if kind == "gen":
            d, k = next(gen_order)
            dag_id = gen_dags[d]
            run_id = f"manual__{when.isoformat()}"
            run_type, triggered_by, conf = "manual", "REST_API", {"scenes": list(SCENES)}
        elif kind == "skip":
            d, k = next(skip_order)
            dag_id = skip_dags[d]
            run_id = f"manual__{when.isoformat()}"
            run_type, triggered_by, conf = "manual", "REST_API", {"scenes": []}
        else:
            dag_id = other_dags[rng.randrange(len(other_dags))]
            run_id = f"scheduled__{when.isoformat()}"
            run_type, triggered_by, conf = "scheduled", "TIMETABLE", {}
            other_count += 1
            if rng.random() < 0.02:
                state = "failed"
        t_run.add(
            id=pk,
            dag_id=dag_id,
            queued_at=when,
            logical_date=when,
            start_date=when + timedelta(seconds=1),
            end_date=when + timedelta(minutes=3),
            state=state,
            run_id=run_id,
            run_type=run_type,
            triggered_by=triggered_by,
            conf=_json(conf),
            data_interval_start=when,
            data_interval_end=when,
            run_after=when,
            last_scheduling_decision=when + timedelta(minutes=3),
            log_template_id=2,
            created_at=when,
            updated_at=when + timedelta(minutes=3),
            clear_number=0,
            created_dag_version_id=versions[dag_id],
        )
        t0 = when + timedelta(seconds=2)
        if kind == "gen":
            newest_gen, newest_gen_pk = (dag_id, run_id), pk
            generation_runs.append([pk, dag_id, run_id])
            photos = [f"s3://kling-photos/{dag_id}/{k}/person-{i}.png" for i in range(2)]
            ti(dag_id, run_id, "photos", PLAIN_TASK_OPERATOR, t0)
            xcom(pk, dag_id, run_id, "photos", "return_value", photos, t0)
            t1 = t0 + timedelta(seconds=5)
            saved: list[tuple[int, str]] = []
            for mi in range(sizes.mapped):
                failed = (pk * sizes.mapped + mi) % 20 == 7
                ti(dag_id, run_id, GENERATION_TASK, EFFECT_OPERATOR, t1, map_index=mi,
                   state="failed" if failed else "success", seconds=95.0 + mi)  # fmt: skip
                scene = SCENES[(pk + mi) % len(SCENES)]
                request = {
                    "effect_scene": scene,
                    "model": MODEL,
                    "duration": 5,
                    "photos": [{"shown": p, "thumbnail": None} for p in photos[: 2 if scene == "hug" else 1]],
                }
                gen_id = f"gen-{pk:06d}-{mi:02d}"
                xcom(pk, dag_id, run_id, GENERATION_TASK, "request", request, t1, mi)
                xcom(pk, dag_id, run_id, GENERATION_TASK, "generation_id", gen_id, t1, mi)
                end = t1 + timedelta(seconds=95 + mi)
                if failed:
                    error = {"type": "KlingFxGenerationFailed", "message": f"generation failed: {FACE_ERROR}",
                             "reason": FACE_ERROR}  # fmt: skip
                    xcom(pk, dag_id, run_id, GENERATION_TASK, "error", error, end, mi)
                    continue
                url = f"https://cdn.aimlapi.example/kling/{gen_id}.mp4"
                video = {"url": url, "content_type": "video/mp4", "file_name": f"{gen_id}.mp4",
                         "file_size": 2_400_000 + mi}  # fmt: skip
                output = (videos_root / dag_id / f"run-{pk}" / f"{mi}.mp4").as_uri()
                xcom(pk, dag_id, run_id, GENERATION_TASK, "video", video, end, mi)
                xcom(
                    pk,
                    dag_id,
                    run_id,
                    GENERATION_TASK,
                    "usage",
                    {"credits_used": 1.0, "usd_spent": 0.01},
                    end,
                    mi,
                )
                xcom(pk, dag_id, run_id, GENERATION_TASK, "output_path", output, end, mi)
                xcom(pk, dag_id, run_id, GENERATION_TASK, "return_value", url, end, mi)
                saved.append((mi, output))
            t2 = t1 + timedelta(seconds=120)
            for pi, (mi, output) in enumerate(saved):
                stem = output.removesuffix(".mp4")
                preview = {"video_path": output, "gif_path": f"{stem}.gif", "poster_path": f"{stem}.jpg"}
                ti(dag_id, run_id, PREVIEW_TASK, PREVIEW_OPERATOR, t2, map_index=pi, seconds=4.0)
                xcom(pk, dag_id, run_id, PREVIEW_TASK, "preview", preview, t2, pi)
                xcom(pk, dag_id, run_id, PREVIEW_TASK, "return_value", {**preview, "frames": 48}, t2, pi)
                if (d, k) in sample_runs and mi in (1, 3):
                    samples.append({"dag_id": dag_id, "run_id": run_id, "task_id": GENERATION_TASK,
                                    "map_index": mi, "output_path": output, **preview})  # fmt: skip
        elif kind == "skip":
            skipped_runs.append([pk, dag_id, run_id])
            ti(dag_id, run_id, "check_photos", "BranchPythonOperator", t0)
            xcom(pk, dag_id, run_id, "check_photos", "return_value", "no_photos", t0)
            ti(dag_id, run_id, GENERATION_TASK, EFFECT_OPERATOR, t0, state="skipped")
            ti(dag_id, run_id, "no_photos", "EmptyOperator", t0, seconds=0.1)
        else:
            ti(dag_id, run_id, "extract", PLAIN_TASK_OPERATOR, t0, state=state)
            xcom(
                pk,
                dag_id,
                run_id,
                "extract",
                "return_value",
                {"rows": rng.randrange(10_000), "batch": pk},
                t0,
            )
            if other_count % 2 == 0:
                ti(dag_id, run_id, "load", "BashOperator", t0 + timedelta(seconds=30))
                xcom(pk, dag_id, run_id, "load", "return_value", f"loaded batch {pk}", t0)
            if other_count % 10 == 0:
                # A plain @task that happens to push XComs named like a generation's: not a generation.
                ti(dag_id, run_id, "prepare", PLAIN_TASK_OPERATOR, t0)
                xcom(pk, dag_id, run_id, "prepare", "request",
                     {"endpoint": "https://api.example/v2/export", "params": {"batch": pk}}, t0)  # fmt: skip
                export = f"s3://warehouse/exports/{dag_id}/{pk}.parquet"
                xcom(pk, dag_id, run_id, "prepare", "output_path", export, t0)
        if t_xcom.pending >= 50_000:
            with conn.cursor() as cur:
                for t in tables:
                    t.flush(cur)
    with conn.cursor() as cur:
        for t in tables:
            t.flush(cur)
        cur.execute("SELECT setval('dag_run_id_seq', %s)", (total,))
    conn.commit()
    old = conn.autocommit
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("VACUUM ANALYZE")
    conn.autocommit = old

    return Manifest(
        sizes=asdict(sizes),
        dag_runs=t_run.count,
        task_instances=t_ti.count,
        xcoms=t_xcom.count,
        gen_dag_ids=gen_dags,
        other_dag_ids=other_dags,
        skip_dag_ids=skip_dags,
        newest_generation_run=list(newest_gen),
        newest_generation_run_pk=newest_gen_pk,
        generation_runs=generation_runs,
        skipped_runs=skipped_runs,
        newest_run_pk=total,
        samples=samples,
        seconds=time.monotonic() - started,
    )


def write_sample_files(samples: Iterable[dict[str, Any]], video_bytes: int = 256 * 1024) -> None:
    """Create the files the sampled generations' media requests serve (a stand-in MP4, GIF, JPEG)."""
    from urllib.parse import unquote, urlsplit

    for s in samples:
        for key, head in (("output_path", b"\x00\x00\x00\x20ftypisom"), ("gif_path", b"GIF89a"),
                          ("poster_path", b"\xff\xd8\xff\xe0")):  # fmt: skip
            path = Path(unquote(urlsplit(s[key]).path))
            path.parent.mkdir(parents=True, exist_ok=True)
            size = video_bytes if key == "output_path" else 16 * 1024
            path.write_bytes(head + bytes(size - len(head)))
