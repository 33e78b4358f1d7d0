"""Runs real Airflow commands (``airflow dags test`` and friends) in an isolated AIRFLOW_HOME."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
#: Migrated metadata DBs of this process, by the Airflow settings they were made with (see migrate).
_MIGRATED: dict[tuple[tuple[str, str], ...], Path] = {}


def airflow_version() -> tuple[int, int]:
    """The installed Airflow's (major, minor), for tests whose expectations differ by version."""
    from importlib.metadata import version

    major, minor = version("apache-airflow").split(".")[:2]
    return int(major), int(minor)


@dataclass
class DagRunResult:
    """What one ``airflow dags test`` left behind."""

    dag_id: str
    returncode: int
    output: str
    run_id: str | None
    state: str | None
    xcoms: dict[tuple[str, int, str], Any] = field(default_factory=dict)
    task_states: dict[tuple[str, int], str] = field(default_factory=dict)

    def xcom(self, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
        return self.xcoms[(task_id, map_index, key)]


class AirflowEnv:
    """An AIRFLOW_HOME with a migrated SQLite DB and a DAG folder of the examples and test DAGs."""

    def __init__(self, home: Path, connection: dict[str, Any]) -> None:
        self.home = home
        dags = home / "dags"
        dags.mkdir(parents=True, exist_ok=True)
        for src in [
            *sorted((REPO / "example_dags").glob("*.py")),
            *sorted((REPO / "tests" / "dags").glob("*.py")),
        ]:
            shutil.copy(src, dags / src.name)
        self.dags_folder = dags
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")},
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
            "AIRFLOW_CONN_KLINGFX_DEFAULT": json.dumps(connection),
            # The example DAGs read photos only where this Variable allows: here, the emulator's samples.
            "AIRFLOW_VAR_KLINGFX_PHOTO_LOCATIONS": f"{connection.get('host', '')}/samples/",
            "PYTHONWARNINGS": "ignore::DeprecationWarning:starlette",
        }
        self.outputs: list[str] = []

    @property
    def db_path(self) -> Path:
        return self.home / "airflow.db"

    def run(
        self, *args: str, env: dict[str, str] | None = None, timeout: float = 240
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(BIN / "airflow"), *args],
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        self.outputs.append(proc.stdout + proc.stderr)
        return proc

    def migrate(self) -> None:
        """A freshly migrated metadata DB: ``airflow db migrate`` once per process and set of settings,
        then a copy of its DB (a migration from scratch costs about 10 s of CPU, and every test module
        makes a home). A fresh DB holds no connection or variable, so no key or Fernet key is copied."""
        settings = tuple(
            sorted(
                (k, v) for k, v in self.env.items() if k.startswith("AIRFLOW__") and str(self.home) not in v
            )
        )
        template = _MIGRATED.get(settings)
        if template is None:
            home = Path(tempfile.mkdtemp(prefix="klingfx-migrated-"))
            atexit.register(shutil.rmtree, home, True)
            proc = self.run(
                "db",
                "migrate",
                env={
                    "AIRFLOW_HOME": str(home),
                    "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
                    "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
                },
            )
            assert proc.returncode == 0, proc.stdout + proc.stderr
            template = _MIGRATED[settings] = home / "airflow.db"
        shutil.copyfile(template, self.db_path)

    def dags_test(
        self, dag_id: str, conf: dict[str, Any] | None = None, env: dict[str, str] | None = None
    ) -> DagRunResult:
        args = ["dags", "test", dag_id]
        dag_file = self.dag_file(dag_id)
        if dag_file is not None:
            args += ["-f", str(dag_file)]
        if conf is not None:
            args += ["-c", json.dumps(conf)]
        proc = self.run(*args, env=env)
        check = self._integrity()
        assert check == "ok", (
            f"the metadata DB is damaged after 'airflow dags test {dag_id}': {check}\n"
            + (proc.stdout + proc.stderr)[-6000:]
        )
        with sqlite3.connect(self.db_path) as db:
            row = db.execute(
                "SELECT run_id, state FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (dag_id,)
            ).fetchone()
            run_id, state = row if row else (None, None)
            xcoms = {
                (task_id, map_index, key): json.loads(value) if isinstance(value, str) else value
                for task_id, map_index, key, value in db.execute(
                    "SELECT task_id, map_index, key, value FROM xcom WHERE dag_id = ? AND run_id = ?",
                    (dag_id, run_id),
                )
            }
            states = {
                (task_id, map_index): ti_state
                for task_id, map_index, ti_state in db.execute(
                    "SELECT task_id, map_index, state FROM task_instance WHERE dag_id = ? AND run_id = ?",
                    (dag_id, run_id),
                )
            }
        return DagRunResult(dag_id, proc.returncode, proc.stdout + proc.stderr, run_id, state, xcoms, states)

    def dag_file(self, dag_id: str) -> Path | None:
        """The one file of the DAG folder that names ``dag_id``, or None (then the whole folder is parsed).

        ``airflow dags test -f`` parses (and writes to the DB) only that file, not the 13 others: about
        2 s less per run, and the tests make a hundred runs on each Airflow line.
        """
        named = self.dags_folder / f"{dag_id}.py"
        if named.exists():
            return named
        found = [p for p in sorted(self.dags_folder.glob("*.py")) if dag_id in p.read_text()]
        return found[0] if len(found) == 1 else None

    def _integrity(self) -> str:
        db = sqlite3.connect(self.db_path)
        try:
            return str(db.execute("PRAGMA quick_check").fetchone()[0])
        except sqlite3.DatabaseError as exc:
            return f"{exc}; processes still using this Airflow home: {self.processes_using_home()}"
        finally:
            db.close()

    def processes_using_home(self) -> list[str]:
        """Command lines of processes whose environment points at this AIRFLOW_HOME."""
        found = []
        needle = f"AIRFLOW_HOME={self.home}".encode()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                if needle in (proc / "environ").read_bytes():
                    found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:200])
            except OSError:
                continue
        return found

    def places_containing(self, secret: str) -> list[str]:
        """Every file under AIRFLOW_HOME (DB included), DB table, and captured output holding ``secret``."""
        found = []
        needle = secret.encode()
        for path in self.home.rglob("*"):
            if path.is_file() and needle in path.read_bytes():
                found.append(str(path))
        with sqlite3.connect(self.db_path) as db:
            tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            for table in tables:
                for row in db.execute(f'SELECT * FROM "{table}"'):
                    if any(secret in str(v) for v in row):
                        found.append(f"table {table}")
                        break
        found += [f"command output #{i}" for i, out in enumerate(self.outputs) if secret in out]
        return found
