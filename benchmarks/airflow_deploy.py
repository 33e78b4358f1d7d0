"""A real Airflow deployment for the benchmarks: api-server, dag-processor, scheduler and triggerer.

The deployment tests' harness (:mod:`tests.deployment.harness`) in its ``local`` shape (SQLite,
LocalExecutor, every process in its own session so only what was started is stopped), with the
benchmark DAGs, connections from ``AIRFLOW_CONN_*`` environment variables, and what only the
benchmarks read: the supervisors' worker-slot times and the task logs.
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from typing import Any

from benchmarks.common import BENCH, child_env
from tests.deployment.harness import Deployment as HarnessDeployment
from tests.deployment.harness import parse_ts

__all__ = ["DAGS", "Deployment", "parse_ts"]

DAGS = BENCH / "dags"


class Deployment(HarnessDeployment):
    """The harness's ``local`` deployment against a fresh SQLite database in ``home``.

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
        super().__init__(
            home,
            shape="local",
            dags=sorted(DAGS.glob("*.py")),
            start_env=child_env(),
            parallelism=parallelism,
            env={
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                # DAG runs are created through the REST API (``trigger``) without logging in.
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "30",
                **{f"AIRFLOW_CONN_{cid.upper()}": value for cid, value in connections.items()},
                **(extra_env or {}),
            },
        )

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
