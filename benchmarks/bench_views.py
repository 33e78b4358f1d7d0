"""The provider's views on a busy deployment: a real ``airflow api-server`` on PostgreSQL.

A throwaway PostgreSQL (the deployment tests' harness), migrated by ``airflow db migrate``, gets the
rows of a busy deployment (:mod:`benchmarks.views_data`: 10,000 generations across 200 DAGs beside
50,000 runs of 300 other DAGs, whose runs are the newest); a real ``airflow api-server`` (one worker,
SimpleAuthManager, a password user of role admin) serves it, the views loaded through the package's
``airflow.plugins`` entry point as any install does. No DAG file, no dag-processor: the ``dag`` rows
are what the auth manager reads. Everything goes through HTTP, as a browser would, and through
PostgreSQL's own statement log; nothing here imports the views, so the benchmark runs unchanged
whatever their queries are.

Measured:

* response time (median, p95 of 20 requests after 2 warm-ups) of the Browse gallery
  (``/klingfx/gallery`` as admin: every DAG), of one DAG's gallery, of ``/klingfx/api/generations``,
  and, as the same-run baseline, of Airflow's own ``GET /api/v2/dags/~/dagRuns?limit=25&order_by=-id``;
* SQL statements per request, counted by PostgreSQL (``log_min_duration_statement = 0``, the
  api-server's statements between two marker statements of this process): a generation's video, its
  GIF and its task tab, and each page above. They are split by what they touch: *data* reads
  ``xcom``, ``task_instance`` or ``dag_run`` (the views' own data), *auth* Airflow's token revocation
  check and the auth manager's DAG/team lookup (``revoked_token``, ``dag_bundle_team``), *other* any
  other table, *ping* the pool's ``SELECT 1``, *tx* ``BEGIN``/``COMMIT``/``ROLLBACK``;
* what the pages list (``/klingfx/api/generations``): whether the newest generations are there,
  and that no task of another operator is (plain ``@task`` tasks push XComs named ``request`` and
  ``output_path`` too);
* ``EXPLAIN (ANALYZE, BUFFERS)`` of the slowest statements of the gallery requests, written to
  ``views_explain.txt`` next to RESULTS.md, and the indexes of ``task_instance``, ``dag_run``, ``xcom``.

Run alone: ``.venv/bin/python benchmarks/run.py --only views --out /tmp/bench`` (``--quick``: a tenth
of the data). Needs PostgreSQL's server binaries (``make servers``) and psycopg2 (``make deploy-venv``).
``--views-source DIR`` serves the views from another copy of the package (DIR holds
``airflow_provider_klingfx/``, e.g. ``git archive <commit> airflow_provider_klingfx | tar -x -C DIR``),
to measure an older version on the same data.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from benchmarks import views_data
from benchmarks.common import REPO, Figure, Section, fmt, median, percentile
from tests.deployment.harness import Deployment, PostgresServer

ADMIN = "admin"
WARMUPS = 2
REPEATS = 20
#: Stop timing one URL after this long (at least MIN_REPEATS requests): a slow page must not eat the run.
TIME_CAP = 90.0
MIN_REPEATS = 5
#: Seconds to wait around a counted request (see ``measure``).
SETTLE = 0.3
GALLERY_GOAL = 1.0
QUERY_GOAL = 2
DATA_TABLES = ("xcom", "task_instance", "dag_run")
#: Tables only Airflow's authentication and auth manager read (token revocation, DAG teams).
AUTH_TABLES = ("revoked_token", "dag_bundle_team", "team")
CATEGORIES = ("data", "auth", "other", "ping", "tx")
#: ``log_line_prefix``: every entry of the server log starts with it.
PREFIX = "@@pg %m [%p] app=%a @@ "
ENTRY = re.compile(
    r"^@@pg (?P<ts>\S+ \S+ \S+) \[(?P<pid>\d+)\] app=(?P<app>.*?) @@ (?P<level>[A-Z]+):  (?P<msg>.*)$"
)
DURATION = re.compile(
    r"^duration: (?P<ms>[\d.]+) ms  (?P<kind>statement|execute [^:]*|parse [^:]*|bind [^:]*): "
)
TOUCHES = re.compile(r"\b(?:FROM|JOIN|UPDATE|INTO)\s+(\w+)", re.IGNORECASE)
APP_NAME = "klingfx-bench-api-server"


@dataclass
class Statement:
    pid: int
    app: str
    ms: float
    sql: str

    @property
    def category(self) -> str:
        head = self.sql.lstrip().split(None, 1)[0].upper() if self.sql.strip() else ""
        if head in ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "SET", "SHOW", "RESET", "DISCARD"):
            return "tx"
        if re.fullmatch(r"\s*SELECT 1\s*;?\s*", self.sql, re.IGNORECASE):
            return "ping"
        if set(self.tables) & set(DATA_TABLES):
            return "data"
        if set(self.tables) & set(AUTH_TABLES):
            return "auth"
        return "other"

    @property
    def tables(self) -> list[str]:
        return sorted({t.lower() for t in TOUCHES.findall(self.sql)})

    def short(self, width: int = 150) -> str:
        text = " ".join(self.sql.split())
        text = re.sub(r"\((?:'[^']*'|\d+|\([^()]*\))(?:,\s*(?:'[^']*'|\d+|\([^()]*\))){3,}\)", "(...)", text)
        return text if len(text) <= width else text[: width - 3] + "..."


@dataclass
class Counted:
    """The statements one request made PostgreSQL run, and what it answered."""

    label: str
    path: str
    status: int
    seconds: float
    statements: list[Statement] = field(default_factory=list)

    def count(self, category: str | None = None) -> int:
        return sum(1 for s in self.statements if category is None or s.category == category)

    def summary(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "status": self.status,
            "seconds": self.seconds,
            "total": self.count(),
            **{c: self.count(c) for c in CATEGORIES},
            "data_ms": sum(s.ms for s in self.statements if s.category == "data"),
            "statements": [
                {"category": s.category, "ms": s.ms, "tables": s.tables, "sql": s.short(240)}
                for s in self.statements
            ],
        }


class StatementLog:
    """PostgreSQL's statement log, read between two marker statements of our own connection."""

    def __init__(self, pg: PostgresServer) -> None:
        self.pg = pg
        self.conn = pg.connect()
        self.conn.autocommit = True
        with self.conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            self.own_pid = int(cur.fetchone()[0])

    def configure(self, *, enabled: bool) -> None:
        with self.conn.cursor() as cur:
            cur.execute(f"ALTER SYSTEM SET log_line_prefix = '{PREFIX}'")
            cur.execute(f"ALTER SYSTEM SET log_min_duration_statement = {0 if enabled else -1}")
            cur.execute("ALTER SYSTEM SET log_statement = 'none'")
            cur.execute("SELECT pg_reload_conf()")
        time.sleep(1.0)  # every backend reloads before its next command; give the signal time to land

    def marker(self, text: str) -> None:
        with self.conn.cursor() as cur:
            cur.execute("SELECT %s", (f"klingfx-bench-marker {text}",))

    def offset(self) -> int:
        return self.pg.log.stat().st_size

    def between(self, start_offset: int, token: str, timeout: float = 10.0) -> list[Statement]:
        """The statements of other connections logged after ``<token> start`` and before ``<token> end``."""
        deadline = time.monotonic() + timeout
        while True:
            with open(self.pg.log, errors="replace") as fh:
                fh.seek(start_offset)
                text = fh.read()
            if f"klingfx-bench-marker {token} end" in text or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        entries: list[dict[str, Any]] = []
        for line in text.splitlines():
            m = ENTRY.match(line)
            if m:
                entries.append({**m.groupdict(), "msg": m.group("msg")})
            elif entries:
                entries[-1]["msg"] += "\n" + line
        inside = False
        found: list[Statement] = []
        for e in entries:
            if f"klingfx-bench-marker {token} start" in e["msg"]:
                inside = True
                continue
            if f"klingfx-bench-marker {token} end" in e["msg"]:
                break
            if not inside or e["level"] != "LOG" or int(e["pid"]) == self.own_pid:
                continue
            d = DURATION.match(e["msg"])
            # Extended protocol (asyncpg): one execute per statement; its parse and bind are not extra.
            if d is None or d.group("kind").startswith(("parse", "bind")):
                continue
            found.append(Statement(int(e["pid"]), e["app"], float(d.group("ms")), e["msg"][d.end() :]))
        return found

    def explain(self, sql: str) -> str:
        with self.conn.cursor() as cur:
            cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql)  # no parameters: % is literal
            return "\n".join(r[0] for r in cur.fetchall())

    def indexes(self) -> list[tuple[str, str]]:
        with self.conn.cursor() as cur:
            cur.execute(
                "SELECT tablename, indexdef FROM pg_indexes WHERE tablename IN %s "
                "ORDER BY tablename, indexname",
                (DATA_TABLES,),
            )
            return [(r[0], r[1]) for r in cur.fetchall()]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


class Client:
    """Requests to the api-server as the admin user (a JWT from ``POST /auth/token``)."""

    def __init__(self, url: str, password: str) -> None:
        import requests

        self.url = url
        self.http = requests.Session()
        resp = self.http.post(f"{url}/auth/token", json={"username": ADMIN, "password": password}, timeout=60)
        resp.raise_for_status()
        self.http.headers["Authorization"] = f"Bearer {resp.json()['access_token']}"

    def get(self, path: str) -> tuple[int, float, bytes]:
        started = time.perf_counter()
        resp = self.http.get(f"{self.url}{path}", timeout=300, allow_redirects=False)
        body = resp.content
        return resp.status_code, time.perf_counter() - started, body

    def timed(self, path: str, *, repeats: int, warmups: int = WARMUPS) -> dict[str, Any]:
        statuses: set[int] = set()
        for _ in range(warmups):
            statuses.add(self.get(path)[0])
        times: list[float] = []
        started = time.monotonic()
        while len(times) < repeats:
            status, seconds, _ = self.get(path)
            statuses.add(status)
            times.append(seconds)
            if len(times) >= MIN_REPEATS and time.monotonic() - started > TIME_CAP:
                break
        return {
            "path": path,
            "n": len(times),
            "median": median(times),
            "p95": percentile(times, 95),
            "min": min(times),
            "max": max(times),
            "statuses": sorted(statuses),
            "times": times,
        }


def _items(data: Any) -> list[dict[str, Any]]:
    """The generations of a ``/klingfx/api/generations`` answer: a list, or the list in an object."""
    if isinstance(data, dict):
        data = next((v for v in data.values() if isinstance(v, list)), [])
    return [i for i in data if isinstance(i, dict)] if isinstance(data, list) else []


def _ti_path(kind: str, s: dict[str, Any], tail: str = "") -> str:
    ids = (s["dag_id"], s["run_id"], s["task_id"], str(s["map_index"]))
    return f"/klingfx/{kind}/" + "/".join(quote(i, safe="") for i in ids) + tail


def code_description(source: Path | None) -> str:
    """Which views the api-server serves: this checkout (its commit, and whether ui/ has changes) or DIR."""
    if source is not None:
        return f"the package in `{source}` (`--views-source`)"

    def git(*args: str) -> str:
        out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False)
        return out.stdout.strip() if out.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD")
    if not head:
        return f"the package in `{REPO}`"
    dirty = git("status", "--porcelain", "--", "airflow_provider_klingfx/ui")
    return f"this checkout, commit `{head}`" + (
        " with uncommitted changes to `airflow_provider_klingfx/ui/`" if dirty else ""
    )


def run(
    out_dir: str,
    *,
    quick: bool = False,
    source: str | None = None,
    log: Callable[[str], None] = print,
) -> Section:
    """Build the database, start the api-server, measure; the section for RESULTS.md.

    :param out_dir: where ``views_explain.txt`` goes (RESULTS.md's directory).
    :param quick: a tenth of the data.
    :param source: a directory holding another ``airflow_provider_klingfx`` package for the
        api-server to serve the views from (first on its ``PYTHONPATH``); default: the installed one.
    """
    source_dir = Path(source).resolve() if source else None
    if source_dir is not None and not (source_dir / "airflow_provider_klingfx" / "ui").is_dir():
        raise FileNotFoundError(f"{source_dir} holds no airflow_provider_klingfx/ui/")
    code = code_description(source_dir)
    sizes = views_data.QUICK if quick else views_data.FULL
    repeats = 8 if quick else REPEATS
    work = Path(tempfile.mkdtemp(prefix="bench-views-"))
    pg = PostgresServer(work / "postgres.log")
    phases: dict[str, float] = {}
    t0 = time.monotonic()
    password = secrets.token_urlsafe(12)
    (work / "passwords.json").write_text(json.dumps({ADMIN: password}))
    dep: Deployment | None = None
    stmts: StatementLog | None = None
    try:
        pg.start()
        dep = Deployment(
            work / "home",
            shape="local",
            env={
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": pg.url,
                "AIRFLOW__CORE__AUTH_MANAGER": (
                    "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
                ),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN}:admin",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(work / "passwords.json"),
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
                "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
                # Where the views may read saved videos and previews from (an option of the views
                # from 0.3; older versions ignore it).
                "AIRFLOW__KLINGFX__VIEWS_READ_PREFIXES": (work / "videos").as_uri() + "/",
                # libpq (psycopg2, Airflow's sync engine) names the api-server's connections in the log.
                "PGAPPNAME": APP_NAME,
            },
        )
        if source_dir is not None:
            paths = (str(source_dir), os.environ.get("PYTHONPATH", ""))
            dep.env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        url = f"http://127.0.0.1:{dep.api_port}"
        dep.env["AIRFLOW__API__BASE_URL"] = url
        log(f"views: PostgreSQL on port {pg.port}; airflow db migrate ...")
        dep.migrate()
        phases["migrate"] = time.monotonic() - t0
        log(f"views: populating ({sizes.generations:,} generations, {sizes.other_runs:,} other runs) ...")
        conn = pg.connect()
        try:
            manifest = views_data.populate(conn, work / "videos", sizes)
        finally:
            conn.close()
        views_data.write_sample_files(manifest.samples)
        phases["populate"] = manifest.seconds
        log(
            f"views: {manifest.dag_runs:,} runs, {manifest.task_instances:,} task instances, "
            f"{manifest.xcoms:,} XComs in {manifest.seconds:.0f} s; starting the api-server ..."
        )
        stmts = StatementLog(pg)
        stmts.configure(enabled=False)
        t1 = time.monotonic()
        dep.start("api-server", "api-server", "-H", "127.0.0.1", "-p", str(dep.api_port), "-w", "1")
        dep.wait_for("the API server", dep.api_up, 180)
        phases["api_server_start"] = time.monotonic() - t1
        client = Client(url, password)
        raw, counted = measure(client, stmts, manifest, repeats=repeats, log=log)
        raw["explain"] = explain_slowest(stmts, counted, Path(out_dir) / "views_explain.txt")
        raw["indexes"] = stmts.indexes()
    finally:
        if stmts is not None:
            stmts.close()
        if dep is not None:
            dep.close()
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)
    phases["total"] = time.monotonic() - t0
    raw["phases"] = phases
    raw["code"] = code
    raw["manifest"] = {
        k: v
        for k, v in manifest.to_dict().items()
        if not k.endswith("dag_ids") and k not in ("generation_runs", "skipped_runs")
    }
    section = build_section(raw, sizes, quick=quick)
    print_table(raw)
    return section


def measure(
    client: Client,
    stmts: StatementLog,
    manifest: views_data.Manifest,
    *,
    repeats: int,
    log: Callable[[str], None],
) -> tuple[dict[str, Any], list[Counted]]:
    skip_dag = manifest.skip_dag_ids[0] if manifest.skip_dag_ids else manifest.gen_dag_ids[0]
    newest_dag = manifest.newest_generation_run[0]
    pages = {
        "gallery_all": "/klingfx/gallery",
        "gallery_dag": f"/klingfx/gallery?dag_id={quote(skip_dag)}",
        "gallery_newest_dag": f"/klingfx/gallery?dag_id={quote(newest_dag)}",
        "api_generations": "/klingfx/api/generations",
        "rest_dag_runs": "/api/v2/dags/~/dagRuns?limit=25&order_by=-id",
    }
    timed: dict[str, Any] = {}
    for key, path in pages.items():
        timed[key] = client.timed(path, repeats=repeats)
        t = timed[key]
        log(
            f"views: {path}: median {t['median']:.3f} s, p95 {t['p95']:.3f} s "
            f"(n={t['n']}, HTTP {t['statuses']})"
        )

    # What the pages list: each item judged by its (dag_id, run_id, task_id, map_index).
    gen_runs = {(d, r) for _, d, r in manifest.generation_runs}
    skipped = {(d, r) for _, d, r in manifest.skipped_runs}
    newest = [(d, r) for _, d, r in manifest.generation_runs[::-1]]
    mapped = manifest.sizes["mapped"]
    listed: dict[str, Any] = {}
    for key, path, expected in (
        ("all", "/klingfx/api/generations", newest[:25]),
        (
            "skip_dag",
            f"/klingfx/api/generations?dag_id={quote(skip_dag)}",
            [run for run in newest if run[0] == skip_dag][:25],
        ),
    ):
        status, _, body = client.get(path)
        items = _items(json.loads(body)) if status == 200 else []

        def real(i: dict[str, Any]) -> bool:
            return (
                (i.get("dag_id"), i.get("run_id")) in gen_runs
                and i.get("task_id") == views_data.GENERATION_TASK
                and i.get("map_index") in range(mapped)
            )

        wrong = [i for i in items if not real(i)]
        runs = {(i.get("dag_id"), i.get("run_id")) for i in items if real(i)}
        listed[key] = {
            "path": path,
            "status": status,
            "items": len(items),
            "generations": len(items) - len(wrong),
            "runs": len(runs),
            "dags": len({i.get("dag_id") for i in items}),
            "not_generations": len(wrong),
            "skipped_listed": sum(1 for i in wrong if (i.get("dag_id"), i.get("run_id")) in skipped),
            "not_generation_examples": [
                f"{i.get('dag_id')}/{i.get('run_id')}/{i.get('task_id')}/{i.get('map_index')}"
                for i in wrong[:5]
            ],
            "newest_generation_run_listed": tuple(manifest.newest_generation_run) in runs,
            "newest_runs_expected": len(expected),
            "newest_runs_listed": sum(1 for run in expected if run in runs),
        }

    # Statements per request, counted by PostgreSQL.
    stmts.configure(enabled=True)
    requests_to_count: list[tuple[str, str]] = []
    for s in manifest.samples:
        where = "newest" if (s["dag_id"], s["run_id"]) == tuple(manifest.newest_generation_run) else "oldest"
        tag = f"{where} run, map index {s['map_index']}"
        requests_to_count += [
            (f"video ({tag})", _ti_path("media", s, "/video")),
            (f"gif ({tag})", _ti_path("media", s, "/gif")),
            (f"task tab ({tag})", _ti_path("ti", s)),
        ]
    requests_to_count += [(key, path) for key, path in pages.items()]
    counted: list[Counted] = []
    for label, path in requests_to_count:
        client.get(path)  # warm: the pool, the plugin's first import, caches
        # A session may be given back to the pool (its ROLLBACK) after the response is sent: let the
        # previous request finish before the window opens, and this one before it closes.
        time.sleep(SETTLE)
        token = uuid.uuid4().hex
        offset = stmts.offset()
        stmts.marker(f"{token} start")
        status, seconds, _ = client.get(path)
        time.sleep(SETTLE)
        stmts.marker(f"{token} end")
        found = Counted(label, path, status, seconds, stmts.between(offset, token))
        counted.append(found)
        split = ", ".join(f"{found.count(c)} {c}" for c in CATEGORIES)
        log(f"views: {label}: HTTP {status}, {found.count()} statements ({split})")
    stmts.configure(enabled=False)
    raw = {
        "timed": timed,
        "listed": listed,
        "counted": [dict(label=c.label, **c.summary()) for c in counted],
        "skip_dag": skip_dag,
    }
    return raw, counted


def explain_slowest(
    stmts: StatementLog, counted: list[Counted], path: Path, top: int = 4
) -> list[dict[str, Any]]:
    """EXPLAIN (ANALYZE, BUFFERS) the slowest SELECTs of the page requests; every plan to ``path``.

    psycopg2 sends statements with their values in, so the logged text runs as it is. What is kept
    (the file, the raw figures) has its long lists of literals shortened.
    """
    pages = ("gallery_all", "gallery_dag", "gallery_newest_dag", "api_generations")
    seen: dict[str, tuple[str, Statement]] = {}
    for c in counted:
        if c.label not in pages:
            continue
        for s in c.statements:
            runnable = s.category in ("data", "auth", "other") and s.sql.lstrip().upper().startswith(
                ("SELECT", "WITH")
            )
            if runnable and (s.sql not in seen or seen[s.sql][1].ms < s.ms):
                seen[s.sql] = (c.label, s)
    slowest = sorted(seen.values(), key=lambda x: -x[1].ms)[:top]
    out: list[dict[str, Any]] = []
    lines: list[str] = []
    for label, s in slowest:
        try:
            plan = stmts.explain(s.sql)
        except Exception as exc:  # e.g. a statement with bind parameters (asyncpg): not runnable alone
            plan = f"(EXPLAIN failed: {exc})"
        plan = "\n".join(_short_line(line, 400) for line in plan.splitlines())
        out.append({"request": label, "ms": s.ms, "tables": s.tables, "sql": s.short(400), "plan": plan})
        lines += [f"-- {label}: {s.ms:.1f} ms when the api-server ran it", s.short(4000), "", plan, "", ""]
    path.write_text("\n".join(lines))
    return out


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def build_section(raw: dict[str, Any], sizes: views_data.Sizes, *, quick: bool) -> Section:
    from benchmarks.run import TITLES  # here: run imports this module

    timed, listed, counted = raw["timed"], raw["listed"], raw["counted"]
    base = timed["rest_dag_runs"]
    figures: list[Figure] = []

    def page(name: str, key: str, stat: str, goal: bool) -> Figure:
        t = timed[key]
        ok = t["statuses"] == [200]
        return Figure(
            name,
            t[stat],
            "s",
            baseline=base[stat],
            baseline_name="Airflow's REST dagRuns, 25 newest",
            goal=f"<= {GALLERY_GOAL:g} s" if goal else "",
            met=(ok and t[stat] <= GALLERY_GOAL) if goal else None,
            note=f"{stat} of {t['n']}" + ("" if ok else f"; HTTP {t['statuses']}"),
        )

    figures += [
        page("Browse gallery (`/klingfx/gallery`, admin, every DAG)", "gallery_all", "median", True),
        page("Browse gallery (`/klingfx/gallery`, admin, every DAG)", "gallery_all", "p95", True),
        page("one DAG's gallery (`/klingfx/gallery?dag_id=`)", "gallery_dag", "median", False),
        page("`/klingfx/api/generations` (every DAG)", "api_generations", "median", False),
    ]
    la, ld = listed["all"], listed["skip_dag"]
    figures.append(
        Figure(
            "generations the Browse gallery lists (`/klingfx/api/generations`)",
            la["generations"],
            "generations",
            goal="> 0, the newest generation run's among them, nothing else",
            met=la["generations"] > 0 and la["newest_generation_run_listed"] and not la["not_generations"],
            note=f"of {la['runs']} runs: {la['newest_runs_listed']} of the "
            f"{la['newest_runs_expected']} newest runs with generations; listed that are not "
            f"generations: {la['not_generations']} ({la['skipped_listed']} skipped task instances)",
        )
    )
    figures.append(
        Figure(
            "generations a DAG's gallery lists when its 25 newest runs skipped the generation",
            ld["generations"],
            "generations",
            goal="> 0, nothing else",
            met=ld["generations"] > 0 and not ld["not_generations"],
            note=f"{raw['skip_dag']}: {sizes.runs_per_gen_dag * sizes.mapped} generations in "
            f"{ld['newest_runs_expected']} runs, {ld['newest_runs_listed']} of them listed; listed that are "
            f"not generations: {ld['not_generations']}",
        )
    )
    for kind in ("video", "gif", "task tab"):
        rows = [c for c in counted if c["label"].startswith(kind + " (")]
        if not rows:
            continue
        worst = max(rows, key=lambda c: (c["data"], c["total"]))
        what = "task tab" if kind == "task tab" else f"media request ({kind})"
        figures.append(
            Figure(
                f"SQL statements of one {what}: views' own data (`xcom`, `task_instance`, `dag_run`)",
                worst["data"],
                "queries",
                goal=f"<= {QUERY_GOAL}",
                met=worst["data"] <= QUERY_GOAL and all(c["status"] == 200 for c in rows),
                note=f"most of {len(rows)} requests; all statements: {worst['total']} "
                f"({', '.join(f'{worst[c]} {c}' for c in CATEGORIES if c != 'data')}); "
                f"HTTP {sorted({c['status'] for c in rows})}",
            )
        )

    m = raw["manifest"]
    ph = raw["phases"]
    body = [
        "A real `airflow api-server` (1 worker, SimpleAuthManager, user `admin` of role admin) on a "
        f"throwaway PostgreSQL 15 holding **{sizes.generations:,} generations across "
        f"{sizes.gen_dags} DAGs** ({sizes.runs_per_gen_dag} runs x {sizes.mapped} mapped "
        "`KlingFxEffectOperator` task instances, 1 in 20 failed, a mapped `KlingFxPreviewOperator`) "
        f"beside **{sizes.other_runs:,} runs of {sizes.other_dags} other DAGs** (a `@task` returning a "
        "value, half a `BashOperator` too, one in ten a plain `@task` pushing XComs named `request` and "
        f"`output_path`), the newest 10 % of all runs being theirs; {sizes.skip_dags} generation DAGs "
        f"also have {sizes.skip_runs} newer runs that skipped the generation. In all "
        f"{m['dag_runs']:,} DAG runs, {m['task_instances']:,} task instances, {m['xcoms']:,} XComs, "
        f"written by `benchmarks/views_data.py` (COPY, then VACUUM ANALYZE) in {ph['populate']:.0f} s; "
        f"`airflow db migrate` took {ph['migrate']:.0f} s, the api-server "
        f"{ph['api_server_start']:.0f} s to start. Only HTTP and PostgreSQL's statement log are used: "
        f"the benchmark does not import the views. Views measured: {raw['code']}.",
        "",
        "| request | median | p95 | n | HTTP |",
        "|---|---|---|---|---|",
        *(
            f"| `{t['path']}` | {fmt(t['median'])} s | {fmt(t['p95'])} s | {t['n']} | "
            f"{', '.join(map(str, t['statuses']))} |"
            for t in timed.values()
        ),
        "",
        "SQL statements one request makes PostgreSQL run (`log_min_duration_statement = 0`, the api-server's "
        "statements between two markers; asyncpg's parse/bind not counted apart from their execute). "
        "*data*: reads `xcom`, `task_instance` or `dag_run` (the views' data); *auth*: Airflow's token "
        "revocation check and the auth manager's DAG/team lookup (`revoked_token`, `dag_bundle_team`); "
        "*other*: any other table; *ping*: the pool's `SELECT 1`; *tx*: `BEGIN`/`COMMIT`/`ROLLBACK`. "
        "*data ms*: PostgreSQL's own time for the data statements; *time*: the request's, with every "
        "statement being logged.",
        "",
        "| request | HTTP | data | auth | other | ping | tx | all | data ms | time |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *(
            f"| {c['label']} | {c['status']} | {' | '.join(str(c[k]) for k in CATEGORIES)} | "
            f"{c['total']} | {fmt(c['data_ms'])} | {fmt(c['seconds'])} s |"
            for c in counted
        ),
        "",
        "The statements of the Browse gallery request, in order (lists of literals shortened to `(...)`):",
        "",
        "| # | category | ms | statement |",
        "|---|---|---|---|",
    ]
    gallery = next((c for c in counted if c["label"] == "gallery_all"), None)
    if gallery is not None:
        body += [
            f"| {i + 1} | {s['category']} | {fmt(s['ms'])} | `{_cell(s['sql'][:220])}` |"
            for i, s in enumerate(gallery["statements"])
        ]
    explained = raw.get("explain") or []
    if explained:
        top = explained[0]
        plan = [_short_line(line) for line in top["plan"].splitlines()]
        body += [
            "",
            f"The slowest statement of the page requests ({top['request']}, {fmt(top['ms'])} ms), "
            "`EXPLAIN (ANALYZE, BUFFERS)` afterwards (the others: `views_explain.txt`):",
            "",
            "```",
            *plan[:40],
            *(["..."] if len(plan) > 40 else []),
            "```",
        ]
    body += [
        "",
        "Indexes of the tables the views read (this Airflow's migrations):",
        "",
        "```",
        *(d for _, d in raw.get("indexes", [])),
        "```",
    ]
    if quick:
        body.insert(0, "**--quick: a tenth of the data; not the reported figures.**\n")
    return Section("views", TITLES["views"], figures=figures, body=body, raw=raw)


def _short_line(line: str, width: int = 160) -> str:
    """A plan line for the report: literal arrays and lists cut down, the line cut at ``width``."""
    line = re.sub(
        r"'\{([^{}']{60,})\}'",
        lambda m: f"'{{{m.group(1)[:40]}... {m.group(1).count(',') + 1} values}}'",
        line,
    )
    return line if len(line) <= width else line[: width - 3] + "..."


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def print_table(raw: dict[str, Any]) -> None:
    print("\nviews on a busy deployment (PostgreSQL)")
    print(f"{'request':<58} {'median':>8} {'p95':>8} {'n':>3}")
    for t in raw["timed"].values():
        print(f"{t['path'][:58]:<58} {t['median']:>7.3f}s {t['p95']:>7.3f}s {t['n']:>3}")
    print(f"\n{'request':<44} {'HTTP':>4} " + " ".join(f"{k:>5}" for k in (*CATEGORIES, "all")))
    for c in raw["counted"]:
        cells = " ".join(f"{c[k]:>5}" for k in (*CATEGORIES, "total"))
        print(f"{c['label'][:44]:<44} {c['status']:>4} {cells}")
    for key, li in raw["listed"].items():
        print(
            f"listed ({key}): {li['generations']} generations in {li['runs']} runs "
            f"({li['newest_runs_listed']} of the {li['newest_runs_expected']} newest with generations), "
            f"not generations: {li['not_generations']} ({li['skipped_listed']} skipped)"
        )
    print(flush=True)
