"""A real Airflow deployment for the benchmarks: api-server, dag-processor, scheduler and triggerer.

The same shape as the package's deployment test (``tests/deployment``), copied here so the benchmark
does not depend on the test-suite: SQLite, LocalExecutor, every process in its own session so only
what was started is stopped. Connections come from ``AIRFLOW_CONN_*`` environment variables.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.common import BENCH, BIN, child_env, free_port

DAGS = BENCH / "dags"


def parse_ts(value: str | None) -> float | None:
    """Epoch seconds of a timestamp as SQLite stores Airflow's UTC datetimes."""
    if not value:
        return None
    text = value.replace(" ", "T")
    if not re.search(r"[+-]\d\d:?\d\d$|Z$", text):
        text += "+00:00"
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Deployment:
    """Airflow's own processes against a fresh SQLite database in ``home``.

    :param home: the AIRFLOW_HOME (created).
    :param connections: conn_id -> ``AIRFLOW_CONN_*`` JSON.
    :param parallelism: ``[core] parallelism`` (worker slots of the LocalExecutor).
    :param extra_env: more environment (Airflow configuration) for every process.
    """

    def __init__(
        self,
        home: Path,
        connections: dict[str, str],
        *,
        parallelism: int = 8,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.home = home
        dags = home / "dags"
        dags.mkdir(parents=True, exist_ok=True)
        for src in sorted(DAGS.glob("*.py")):
            shutil.copy(src, dags / src.name)
        self.api_port = free_port()
        self.env = child_env(
            AIRFLOW_HOME=str(home),
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False",
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="True",
            AIRFLOW__CORE__DAGS_FOLDER=str(dags),
            AIRFLOW__CORE__EXECUTOR="LocalExecutor",
            AIRFLOW__CORE__PARALLELISM=str(parallelism),
            AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"http://127.0.0.1:{self.api_port}/execution/",
            AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC="1",
            AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_SEC="1",
            AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC="1",
            AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5",
            AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL="30",
            AIRFLOW__LOGGING__BASE_LOG_FOLDER=str(home / "logs"),
            AIRFLOW__API__PORT=str(self.api_port),
            **{f"AIRFLOW_CONN_{cid.upper()}": value for cid, value in connections.items()},
            **(extra_env or {}),
        )
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs = home / "process-logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    # -- processes -------------------------------------------------------------------------

    def cli(self, *args: str, timeout: float = 180) -> str:
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
        out = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - handed to the process
        self.procs[name] = subprocess.Popen(
            [str(BIN / "airflow"), *args],
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()

    def start_all(self) -> None:
        self.cli("db", "migrate")
        self.start("api-server", "api-server", "-H", "127.0.0.1", "-p", str(self.api_port), "-w", "1")
        self.start("dag-processor", "dag-processor")
        self.start("scheduler", "scheduler", "--skip-serve-logs")
        self.start("triggerer", "triggerer", "--skip-serve-logs")
        self.wait_for("the API server", self.api_up, 180)

    def api_up(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}/api/v2/monitor/health", timeout=2):
                return True
        except OSError:
            return False

    def pids(self) -> dict[str, int]:
        return {name: proc.pid for name, proc in self.procs.items()}

    def stop_all(self) -> None:
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

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    # -- database --------------------------------------------------------------------------

    def query(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.home / "airflow.db", timeout=30) as db:
            return db.execute(sql, params).fetchall()

    def wait_for(self, what: str, predicate: Callable[[], Any], timeout: float, period: float = 0.5) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if predicate():
                    return
            except sqlite3.OperationalError:
                pass  # the database is busy: try again
            time.sleep(period)
        tails = "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}" for p in sorted(self.logs.glob("*.log"))
        )
        raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}\n{tails}")

    def wait_parsed(self, *dag_ids: str, timeout: float = 180) -> None:
        def parsed() -> bool:
            rows = self.query(
                f"SELECT count(*) FROM dag WHERE dag_id IN ({','.join('?' * len(dag_ids))})", *dag_ids
            )
            return bool(rows[0][0] == len(dag_ids))

        self.wait_for(f"DAGs {dag_ids} to be parsed", parsed, timeout)

    def trigger(self, dag_id: str, conf: dict[str, Any], run_id: str) -> float:
        """Create a DAG run through the REST API (no CLI start-up); returns the epoch time it was sent."""
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

    def run_state(self, dag_id: str, run_id: str) -> str | None:
        rows = self.query("SELECT state FROM dag_run WHERE dag_id = ? AND run_id = ?", dag_id, run_id)
        return rows[0][0] if rows else None

    def wait_run(self, dag_id: str, run_id: str, timeout: float) -> str:
        self.wait_for(
            f"{dag_id}/{run_id} to finish",
            lambda: self.run_state(dag_id, run_id) in {"success", "failed"},
            timeout,
        )
        return str(self.run_state(dag_id, run_id))

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        rows = self.query(
            "SELECT id, task_id, map_index, state, start_date, end_date, try_number "
            "FROM task_instance WHERE dag_id = ? AND run_id = ?",
            dag_id,
            run_id,
        )
        return [
            {
                "id": r[0],
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
        rows = self.query(
            "SELECT map_index, value FROM xcom WHERE dag_id = ? AND run_id = ? AND task_id = ? AND key = ?",
            dag_id,
            run_id,
            task_id,
            key,
        )
        return {m: json.loads(v) if isinstance(v, str | bytes) else v for m, v in rows}

    # -- worker slots ----------------------------------------------------------------------

    _WORKLOAD = re.compile(r"^(\S+) .*Workload finished.*$", re.MULTILINE)

    def workloads(self) -> dict[str, list[tuple[float, float]]]:
        """Each task-instance run's hold on a LocalExecutor worker: ``(end epoch, seconds)`` per run.

        The supervisor logs ``Workload finished ... duration=<s> ... workload_id=<ti id>`` (in the
        scheduler's output, where the LocalExecutor's workers run) once per run of a task: before a
        deferral and after it, separately. Keys are task-instance ids without dashes, as in the DB.
        """
        found: dict[str, list[tuple[float, float]]] = {}
        text = (self.logs / "scheduler.log").read_text(errors="replace")
        for match in self._WORKLOAD.finditer(text):
            line = match.group(0)
            ti = re.search(r"workload_id=([0-9a-f-]{36})", line)
            dur = re.search(r"duration=([0-9.]+)", line)
            end = parse_ts(match.group(1))
            if ti and dur and end is not None:
                found.setdefault(ti.group(1).replace("-", ""), []).append((end, float(dur.group(1))))
        return found

    def task_log(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> list[dict[str, Any]]:
        """The JSON lines of a task's first-attempt log (every run of the try appends to it)."""
        path = self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        if map_index >= 0:
            path = path / f"map_index={map_index}"
        path = path / "attempt=1.log"
        lines = []
        if path.exists():
            for raw in path.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    lines.append(json.loads(raw))
        return lines
