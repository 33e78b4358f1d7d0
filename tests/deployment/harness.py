"""One real Airflow deployment, for the deployment tests and the benchmarks alike.

Two shapes:

``local``
    SQLite, the LocalExecutor, api-server, dag-processor, scheduler and one triggerer: the shape of
    ``tests/deployment/test_deployment.py`` and of ``benchmarks/bench_airflow.py``.

``celery``
    Production-shaped: a real PostgreSQL metadata database, the CeleryExecutor with a real Redis
    broker (its result backend on PostgreSQL, as Airflow documents), two Celery workers with distinct
    hostnames, two triggerers, plus api-server, dag-processor and scheduler. PostgreSQL and Redis are
    throwaway servers owned by the deployment: a fresh ``initdb`` and a Redis without persistence, each
    bound to 127.0.0.1 on a free port, stopped and their data removed when the deployment closes
    (``with Deployment(...)``), whether the test passed or not. They come from Debian's packages
    ``postgresql`` and ``redis-server`` (``make servers``); the Python side from the ``deploy`` extra.

Every Airflow process runs in its own session so only what was started is stopped, its output in
``<home>/process-logs/<name>.log`` (a restart writes ``<name>.<n>.log``).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from tests.support import free_port

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
INSTALL_HINT = (
    "run the project's install step for the production-shaped deployment: `make servers` "
    "(apt-get install postgresql redis-server), or `make test-production`, which runs it"
)

Shape = Literal["local", "celery"]


class MissingServerError(RuntimeError):
    """A server binary (PostgreSQL, Redis) the ``celery`` shape needs is not installed."""


def parse_ts(value: str | datetime | None) -> float | None:
    """Epoch seconds of a metadata-DB timestamp (SQLite: UTC text; PostgreSQL: a datetime)."""
    if not value:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    text = value.replace(" ", "T")
    if not re.search(r"[+-]\d\d:?\d\d$|Z$", text):
        text += "+00:00"
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def base_env() -> dict[str, str]:
    """The environment Airflow's processes start from: this one, without any Airflow setting."""
    return {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}


# ---------------------------------------------------------------------------------------------
# Throwaway servers
# ---------------------------------------------------------------------------------------------


def pg_bindir() -> Path:
    """The directory of PostgreSQL's server binaries (``postgres``, ``initdb``, ``pg_dump``...).

    ``pg_config --bindir`` first (it may name a directory without the server: libpq-dev alone has
    pg_config), then Debian's ``/usr/lib/postgresql/<version>/bin``, newest version first.
    """
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=False
            )
            if out.returncode == 0 and out.stdout.strip():
                candidates.append(Path(out.stdout.strip()))

    def version(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", p.parent.name)) or (0,)

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    for bindir in candidates:
        if all((bindir / tool).is_file() for tool in ("postgres", "initdb", "pg_dump", "pg_isready")):
            return bindir
    raise MissingServerError(
        "PostgreSQL's server binaries (postgres, initdb, pg_dump) were not found "
        f"(looked in `pg_config --bindir` and /usr/lib/postgresql/*/bin): {INSTALL_HINT}"
    )


def redis_binary() -> Path:
    """``redis-server``, from PATH or Debian's /usr/bin."""
    found = shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if Path(p).is_file()), None
    )
    if not found:
        raise MissingServerError(f"redis-server was not found (PATH, /usr/bin): {INSTALL_HINT}")
    return Path(found)


def _stop_group(proc: subprocess.Popen[bytes], sig: int, timeout: float) -> None:
    """Send ``sig`` to a process's group, wait for it, SIGKILL the group if it won't go."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


class PostgresServer:
    """A throwaway PostgreSQL: ``initdb`` into a fresh directory, 127.0.0.1 on a free port, trust auth.

    PostgreSQL refuses to run as root: as root, every server command runs as Debian's ``postgres``
    user (``runuser -u postgres --``) on a data directory that user owns. That directory is a fresh
    one under the system's temporary directory (pytest's are readable by their owner only), removed
    by :meth:`stop`. The server's output goes to ``log``.
    """

    user = "postgres"
    database = "airflow"

    def __init__(self, log: Path) -> None:
        self.bindir = pg_bindir()
        self.log = log
        self.port = free_port()
        self.dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.as_postgres: list[str] = []
        if os.geteuid() == 0:
            runuser = shutil.which("runuser") or "/usr/sbin/runuser"
            try:
                import pwd

                pwd.getpwnam("postgres")
            except KeyError:
                raise MissingServerError(
                    f"as root, PostgreSQL needs the `postgres` user, which does not exist: {INSTALL_HINT}"
                ) from None
            self.as_postgres = [runuser, "-u", "postgres", "--"]

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the database (psycopg2), as Airflow's ``sql_alchemy_conn``."""
        return f"postgresql+psycopg2://{self.user}@127.0.0.1:{self.port}/{self.database}"

    @property
    def celery_url(self) -> str:
        """The same database as a Celery result backend (``db+`` and a SQLAlchemy URL)."""
        return f"db+postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def _run(self, tool: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [*self.as_postgres, str(self.bindir / tool), *args],
            capture_output=True,
            timeout=timeout,
            check=False,
        )

    def start(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="klingfx-pg-"))
        if self.as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        data = self.dir / "data"
        init = self._run(
            "initdb", "-D", str(data), "-U", self.user, "--auth=trust",
            "-E", "UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{init.stdout.decode()}\n{init.stderr.decode()}")
        out = open(self.log, "ab")  # noqa: SIM115 - handed to the process
        self.proc = subprocess.Popen(
            [
                *self.as_postgres, str(self.bindir / "postgres"), "-D", str(data),
                "-h", "127.0.0.1", "-p", str(self.port),
                "-c", "unix_socket_directories=",
                # A throwaway database: durability buys nothing here and costs the 2 cores time.
                "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                "-c", "max_connections=400",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        out.close()
        deadline = time.monotonic() + 60
        while True:
            ready = self._run("pg_isready", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user)
            if ready.returncode == 0:
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"PostgreSQL did not start:\n{tail}")
            time.sleep(0.2)
        where = ("-h", "127.0.0.1", "-p", str(self.port), "-U", self.user)
        created = self._run("createdb", *where, self.database)
        if created.returncode != 0:
            raise RuntimeError(f"createdb failed: {created.stderr.decode()}")

    def dump(self) -> bytes:
        """A full ``pg_dump`` (schema and data) of the database, run as the postgres user."""
        out = self._run("pg_dump", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, self.database)
        if out.returncode != 0:
            raise RuntimeError(f"pg_dump failed: {out.stderr.decode()}")
        return out.stdout

    def connect(self) -> Any:
        """A psycopg2 connection; JSON columns come back as their text, as they do from SQLite."""
        import psycopg2
        import psycopg2.extras

        conn = psycopg2.connect(
            host="127.0.0.1", port=self.port, user=self.user, dbname=self.database, connect_timeout=10
        )
        psycopg2.extras.register_default_json(conn, loads=lambda text: text)
        psycopg2.extras.register_default_jsonb(conn, loads=lambda text: text)
        return conn

    def stop(self) -> None:
        """Fast shutdown (SIGINT to the postmaster), then remove the data directory."""
        if self.proc is not None:
            _stop_group(self.proc, signal.SIGINT, 30)
            self.proc = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


class RedisServer:
    """A throwaway Redis on 127.0.0.1 without persistence, in a fresh directory removed by :meth:`stop`."""

    def __init__(self, log: Path) -> None:
        self.binary = redis_binary()
        self.log = log
        self.port = free_port()
        self.dir: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def start(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="klingfx-redis-"))
        out = open(self.log, "ab")  # noqa: SIM115 - handed to the process
        self.proc = subprocess.Popen(
            [
                str(self.binary), "--bind", "127.0.0.1", "--port", str(self.port),
                "--save", "", "--appendonly", "no", "--dir", str(self.dir),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        out.close()
        deadline = time.monotonic() + 30
        while not self.ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"Redis did not start:\n{self.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None:
            _stop_group(self.proc, signal.SIGTERM, 15)
            self.proc = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


# ---------------------------------------------------------------------------------------------
# The deployment
# ---------------------------------------------------------------------------------------------


class Deployment:
    """Airflow's own processes in ``home``, in one of two shapes (see the module's docstring).

    Use it as a context manager: leaving the block stops every process it started and, for the
    ``celery`` shape, its PostgreSQL and Redis (entering starts them).

    :param home: the AIRFLOW_HOME (created).
    :param shape: ``"local"`` or ``"celery"``.
    :param dags: DAG files copied into ``<home>/dags``.
    :param env: more environment for every process (Airflow settings, ``AIRFLOW_CONN_*``...); it wins
        over the shape's settings.
    :param start_env: the environment to start from (default: this process's, without ``AIRFLOW*``).
    :param parallelism: ``[core] parallelism``.
    :param workers: Celery workers (``celery`` shape).
    :param worker_concurrency: task slots of each Celery worker.
    :param triggerers: how many triggerers (default: 1 for ``local``, 2 for ``celery``).
    """

    def __init__(
        self,
        home: Path,
        *,
        shape: Shape = "local",
        dags: Iterable[Path] = (),
        env: Mapping[str, str] | None = None,
        start_env: Mapping[str, str] | None = None,
        parallelism: int = 8,
        workers: int = 2,
        worker_concurrency: int = 8,
        triggerers: int | None = None,
    ) -> None:
        if shape not in ("local", "celery"):
            raise ValueError(f"shape must be 'local' or 'celery', got {shape!r}")
        self.home = home
        self.shape = shape
        self.dags = home / "dags"
        self.dags.mkdir(parents=True, exist_ok=True)
        for src in dags:
            shutil.copy(src, self.dags / Path(src).name)
        self.logs = home / "process-logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.api_port = free_port()
        self.workers = workers if shape == "celery" else 0
        self.triggerers = triggerers if triggerers is not None else (2 if shape == "celery" else 1)
        self.postgres: PostgresServer | None = None
        self.redis: RedisServer | None = None
        settings = {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags),
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": str(parallelism),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{self.api_port}/execution/",
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_SEC": "1",
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "1",
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "30",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
            "AIRFLOW__API__PORT": str(self.api_port),
        }
        if shape == "celery":
            # Constructed (binaries found, ports chosen) now; started on entering the block.
            self.postgres = PostgresServer(self.logs / "postgres.log")
            self.redis = RedisServer(self.logs / "redis.log")
            from cryptography.fernet import Fernet

            settings |= {
                "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.postgres.url,
                "AIRFLOW__CELERY__BROKER_URL": self.redis.url,
                "AIRFLOW__CELERY__RESULT_BACKEND": self.postgres.celery_url,
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(worker_concurrency),
                "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "21600",
                # What several machines must share: secrets at rest and the execution API's tokens.
                "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
                "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
            }
        self.env = {**(dict(start_env) if start_env is not None else base_env()), **settings, **(env or {})}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.starts: dict[str, int] = {}
        #: Triggerer process name -> the id of its ``TriggererJob`` row (``celery`` shape).
        self.triggerer_jobs: dict[str, int] = {}

    # -- life cycle ------------------------------------------------------------------------

    def __enter__(self) -> Deployment:
        atexit.register(self.close)
        try:
            for server in (self.postgres, self.redis):
                if server is not None:
                    server.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every Airflow process, then the servers (their data removed). Safe to call twice."""
        try:
            self.stop_all()
        finally:
            for server in (self.redis, self.postgres):
                if server is not None:
                    with contextlib.suppress(Exception):
                        server.stop()
            atexit.unregister(self.close)

    # -- processes -------------------------------------------------------------------------

    def cli(self, *args: str, timeout: float = 180) -> str:
        """``airflow <args>``; its output, or RuntimeError with it when it fails."""
        proc = subprocess.run(
            [str(BIN / "airflow"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"airflow {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            )
        return proc.stdout + proc.stderr

    def start(self, name: str, *args: str) -> None:
        """Start ``airflow <args>`` as process ``name`` in its own session."""
        self.starts[name] = self.starts.get(name, 0) + 1
        n = self.starts[name]
        out = open(self.logs / (f"{name}.log" if n == 1 else f"{name}.{n}.log"), "ab")  # noqa: SIM115
        self.procs[name] = subprocess.Popen(
            [str(BIN / "airflow"), *args],
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()

    def start_triggerer(self, name: str = "triggerer") -> None:
        """Start a triggerer; in the ``celery`` shape, wait for its job row and note its id."""
        if self.shape == "local":
            self.start(name, "triggerer", "--skip-serve-logs")
            return
        known = set(self.alive_triggerer_jobs())
        self.start(name, "triggerer", "--skip-serve-logs")
        new: list[int] = []

        def registered() -> bool:
            new[:] = sorted(set(self.alive_triggerer_jobs()) - known)
            return bool(new)

        self.wait_for(f"{name}'s job to register", registered, 120)
        self.triggerer_jobs[name] = new[0]

    def alive_triggerer_jobs(self) -> list[int]:
        """Ids of the ``TriggererJob`` rows still running (not ended)."""
        rows = self.query("SELECT id FROM job WHERE job_type = 'TriggererJob' AND end_date IS NULL")
        return [int(r[0]) for r in rows]

    def triggerer_names(self) -> list[str]:
        if self.triggerers == 1:
            return ["triggerer"]
        return [f"triggerer-{i + 1}" for i in range(self.triggerers)]

    def migrate(self) -> None:
        self.cli("db", "migrate", timeout=600)

    def start_processes(self) -> None:
        """Start the shape's processes (the database must be migrated) and wait for the API server."""
        self.start("api-server", "api-server", "-H", "127.0.0.1", "-p", str(self.api_port), "-w", "1")
        self.start("dag-processor", "dag-processor")
        self.start("scheduler", "scheduler", "--skip-serve-logs")
        for i in range(self.workers):
            name = f"worker-{i + 1}"
            self.start(name, "celery", "worker", "--celery-hostname", f"{name}@%h", "--skip-serve-logs")
        for name in self.triggerer_names():
            self.start_triggerer(name)
        self.wait_for("the API server", self.api_up, 180)

    def start_all(self) -> None:
        """Migrate the database and start everything."""
        self.migrate()
        self.start_processes()

    def api_up(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}/api/v2/monitor/health", timeout=2):
                return True
        except OSError:
            return False

    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self.procs.items()}

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Kill process ``name`` (its whole session) with ``sig`` and wait for it."""
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        proc.wait(timeout=30)

    def stop_all(self) -> None:
        """SIGTERM every process (its session), SIGKILL those still there after 20 s."""
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        self.procs.clear()

    # -- database --------------------------------------------------------------------------

    def query(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` (``?`` placeholders) on the metadata DB; JSON columns come back as text."""
        if self.postgres is None:
            with sqlite3.connect(self.home / "airflow.db", timeout=30) as db:
                return db.execute(sql, params).fetchall()
        conn = self.postgres.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(sql.replace("%", "%%").replace("?", "%s"), params)
                return list(cur.fetchall()) if cur.description else []
        finally:
            conn.close()

    def _transient_db_errors(self) -> tuple[type[BaseException], ...]:
        if self.postgres is None:
            return (sqlite3.OperationalError,)
        import psycopg2

        return (sqlite3.OperationalError, psycopg2.OperationalError)

    def log_tails(self, chars: int = 2500) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-chars:]}" for p in sorted(self.logs.glob("*.log"))
        )

    def wait_for(self, what: str, predicate: Callable[[], Any], timeout: float, period: float = 0.5) -> None:
        """Poll ``predicate`` until true; TimeoutError with every process's log tail if it never is."""
        deadline = time.monotonic() + timeout
        transient = self._transient_db_errors()
        while time.monotonic() < deadline:
            try:
                if predicate():
                    return
            except transient:
                pass  # the database is busy: try again
            time.sleep(period)
        raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}\n{self.log_tails()}")

    def wait_parsed(self, *dag_ids: str, timeout: float = 180) -> None:
        def parsed() -> bool:
            rows = self.query(
                f"SELECT count(*) FROM dag WHERE dag_id IN ({','.join('?' * len(dag_ids))})", *dag_ids
            )
            return bool(rows[0][0] == len(dag_ids))

        self.wait_for(f"DAGs {dag_ids} to be parsed", parsed, timeout)

    def trigger(self, dag_id: str, conf: dict[str, Any], run_id: str) -> float:
        """Create a DAG run through the REST API (no CLI start-up); returns the epoch time it was sent.

        Needs ``AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS=True`` in ``env``.
        """
        sent = time.time()
        body = json.dumps({"dag_run_id": run_id, "logical_date": None, "conf": conf}).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.api_port}/api/v2/dags/{dag_id}/dagRuns",
            data=body,
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            resp.read()
        return sent

    def run_state(self, dag_id: str, run_id: str | None = None) -> str | None:
        """The state of a DAG run (the latest one of the DAG without ``run_id``)."""
        if run_id is None:
            rows = self.query("SELECT state FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", dag_id)
        else:
            rows = self.query("SELECT state FROM dag_run WHERE dag_id = ? AND run_id = ?", dag_id, run_id)
        return rows[0][0] if rows else None

    def wait_run(self, dag_id: str, run_id: str | None, timeout: float) -> str:
        self.wait_for(
            f"{dag_id}/{run_id} to finish",
            lambda: self.run_state(dag_id, run_id) in {"success", "failed"},
            timeout,
        )
        return str(self.run_state(dag_id, run_id))

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """The run's task instances; ``id`` as 32 hex digits (SQLite's form) in either shape."""
        rows = self.query(
            "SELECT id, task_id, map_index, state, start_date, end_date, try_number "
            "FROM task_instance WHERE dag_id = ? AND run_id = ?",
            dag_id,
            run_id,
        )
        return [
            {
                "id": uuid.UUID(str(r[0])).hex,
                "task_id": r[1],
                "map_index": r[2],
                "state": r[3],
                "start": parse_ts(r[4]),
                "end": parse_ts(r[5]),
                "try_number": r[6],
            }
            for r in rows
        ]

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str) -> dict[int, Any]:
        """``map_index -> value`` of one XCom key of a task in a run."""
        rows = self.query(
            "SELECT map_index, value FROM xcom WHERE dag_id = ? AND run_id = ? AND task_id = ? AND key = ?",
            dag_id,
            run_id,
            task_id,
            key,
        )
        return {m: json.loads(v) if isinstance(v, str | bytes) else v for m, v in rows}

    def dump_database(self) -> bytes:
        """Everything the metadata DB holds: ``pg_dump`` (``celery``) or SQLite's ``iterdump``."""
        if self.postgres is not None:
            return self.postgres.dump()
        with sqlite3.connect(self.home / "airflow.db", timeout=30) as db:
            return "\n".join(db.iterdump()).encode()


def assert_key_only_in_connections(home: Path, secret: str) -> None:
    """``secret`` is in no file under an Airflow home (logs included) but the metadata DB, and in the
    DB only in the connection table, where it is stored on purpose (encrypted with a Fernet key)."""
    leaks = [
        str(p.relative_to(home)) for p in home.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()
    ]
    assert leaks in ([], ["airflow.db"]), leaks
    with sqlite3.connect(home / "airflow.db") as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        holding = [
            t
            for t in tables
            if any(secret in str(v) for row in db.execute(f'SELECT * FROM "{t}"') for v in row)
        ]
    assert holding in ([], ["connection"]), holding
