"""One real Airflow for tests/ui, shared by the HTTP and the browser tests.

The emulator renders real H.264 MP4s; an Airflow home (SQLite) runs ``airflow dags test`` of
``test_klingfx_gallery`` and ``test_klingfx_gallery_private`` (tests/dags/klingfx_ui_dags.py: three
mapped generations, the hug failing on a photo without a face, and a preview of map index 0); then
a real ``airflow api-server`` serves Airflow's UI with the provider's views, signed in through
SimpleAuthManager with three users:

* ``admin`` (admin): every DAG;
* ``alice`` (viewer): only ``test_klingfx_gallery``;
* ``bob`` (viewer): only ``test_klingfx_gallery_private``;
* ``carol`` (viewer): every DAG, but none of their XComs;

the per-DAG rights coming from the test-only auth manager in ``tests/ui/acl_auth_manager.py``.

The api-server may read saved files under two prefixes (``[klingfx] views_read_prefixes``): the
videos folder of the Airflow home, and ``s3://aws_views@media/videos/`` on a moto S3 server, read
with the api-server's own connection ``aws_views``. Beside them lie secrets it must never serve
(:class:`Secrets`), and ``test_klingfx_attacks`` leaves task instances whose XComs name them.
Everything is made once per session (about a minute on 2 cores); only tests/ui/test_views_trust.py
changes anything, the XComs of ``test_klingfx_attacks``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests

from klingfx_emulator import EmulatorConfig, RunningEmulator, run_emulator_in_thread
from tests.airflow_harness import BIN, REPO, AirflowEnv, DagRunResult
from tests.conftest import API_KEY
from tests.support import MotoServer, free_port

PUBLIC_DAG = "test_klingfx_gallery"
PRIVATE_DAG = "test_klingfx_gallery_private"
ATTACK_DAG = "test_klingfx_attacks"
DAGS = (PUBLIC_DAG, PRIVATE_DAG)
#: user -> SimpleAuthManager role.
USERS = {"admin": "admin", "alice": "viewer", "bob": "viewer", "carol": "viewer"}
#: user -> the DAGs the test auth manager lets them read (admin: all).
ACL = {"alice": PUBLIC_DAG, "bob": PRIVATE_DAG}
#: The map indexes of the ``generate`` task: squish, expansion (both succeed), hug (fails).
SCENES = {0: "squish", 1: "expansion", 2: "hug"}
FACE_ERROR = "Could not detect face in the image"


@dataclass
class Secrets:
    """Files and objects the api-server can reach but must never serve, each holding ``marker``.

    :param marker: bytes found in every secret, and in no answer the views may give.
    :param dir: a folder outside every allowed prefix (``secret.mp4`` looks like a video: an ``ftyp``
        box, then the marker; ``secret.png`` a PNG; ``secret.txt`` is text).
    :param videos: the allowed local prefix, holding ``notes.txt`` (the marker, not a media file) and
        ``link.mp4`` (a symbolic link to ``secret.mp4``).
    :param s3: the moto S3 client; bucket ``media``: ``videos/ok.mp4`` (a real video, allowed) and
        ``secrets/secret.mp4`` (outside the prefix).
    """

    marker: bytes
    dir: Path
    videos: Path
    s3: Any


@dataclass
class UiDeployment:
    """The api-server and what the DAG runs left, for the tests to read."""

    url: str
    airflow: AirflowEnv
    runs: dict[str, DagRunResult]
    outputs: dict[str, Path]
    passwords: dict[str, str]
    log: Path
    secrets: Secrets
    _tokens: dict[str, str] = field(default_factory=dict)

    def run_id(self, dag_id: str = PUBLIC_DAG) -> str:
        run_id = self.runs[dag_id].run_id
        assert run_id
        return run_id

    def token(self, user: str) -> str:
        """A JWT for ``user``, as Airflow's UI gets one (``POST /auth/token``)."""
        if user not in self._tokens:
            resp = requests.post(
                f"{self.url}/auth/token",
                json={"username": user, "password": self.passwords[user]},
                timeout=30,
            )
            assert resp.status_code in (200, 201), resp.text
            self._tokens[user] = resp.json()["access_token"]
        return self._tokens[user]

    def get(self, path: str, user: str | None = None, **kwargs: Any) -> requests.Response:
        """GET ``path`` of the api-server, as ``user`` (a bearer token) or signed out."""
        headers = dict(kwargs.pop("headers", {}))
        if user is not None:
            headers["Authorization"] = f"Bearer {self.token(user)}"
        kwargs.setdefault("allow_redirects", False)
        return requests.get(f"{self.url}{path}", headers=headers, timeout=60, **kwargs)

    def ti_path(self, kind: str, dag_id: str, map_index: int, tail: str = "") -> str:
        """``/klingfx/{kind}/{dag}/{run}/generate/{map_index}{tail}``, each id a quoted segment."""
        ids = (dag_id, self.run_id(dag_id), "generate", str(map_index))
        return f"/klingfx/{kind}/" + "/".join(quote(i, safe="") for i in ids) + tail

    def video_file(self, dag_id: str, map_index: int) -> Path:
        """Where the DAG run saved the video of a generation (its ``output_base``/{map_index}.mp4)."""
        return self.outputs[dag_id] / f"{map_index}.mp4"


def pytest_configure(config: pytest.Config) -> None:
    # pytest-xdist registers it too; this is for runs without xdist (-p no:xdist).
    config.addinivalue_line("markers", "xdist_group(name): run in one xdist worker with its group")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the api-server's whole session (its uvicorn worker too): SIGTERM, then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 20)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/api/v2/monitor/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False


@pytest.fixture(scope="session")
def ui_emulator() -> Iterator[RunningEmulator]:
    # Real, playable H.264 MP4s (render="eager"), quickly: the browser must play them.
    config = EmulatorConfig(api_key=API_KEY, queued_seconds=0, generating_seconds=0.5, render="eager")
    with run_emulator_in_thread(config) as emu:
        yield emu


def _make_secrets(home: Path, s3_client: Any) -> Secrets:
    marker = f"KLINGFX-SECRET-{secrets.token_hex(16)}".encode()
    folder = home / "secrets"
    folder.mkdir()
    video_like = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2" + marker
    (folder / "secret.mp4").write_bytes(video_like)
    (folder / "secret.png").write_bytes(b"\x89PNG\r\n\x1a\n" + marker)
    (folder / "secret.txt").write_bytes(marker)
    videos = home / "videos"
    videos.mkdir()
    (videos / "notes.txt").write_bytes(marker)
    (videos / "link.mp4").symlink_to(folder / "secret.mp4")
    s3_client.create_bucket(Bucket="media")
    s3_client.put_object(Bucket="media", Key="secrets/secret.mp4", Body=video_like)
    return Secrets(marker, folder, videos, s3_client)


@pytest.fixture(scope="session")
def ui_s3() -> Iterator[dict[str, Any]]:
    """A moto S3 server for the api-server's own connection ``aws_views``."""
    server = MotoServer()
    yield {"client": server.client("s3"), "conn": json.dumps(server.connection())}
    server.stop()


def start_api_server(airflow: AirflowEnv, port: int, log: Path, env: dict[str, str] | None = None) -> Any:
    """A real ``airflow api-server`` on 127.0.0.1 (its own session: stop it with :func:`stop_api_server`)."""
    url = f"http://127.0.0.1:{port}"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [str(BIN / "airflow"), "api-server", "-H", "127.0.0.1", "-p", str(port), "-w", "1"],
            env={**airflow.env, "AIRFLOW__API__BASE_URL": url, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while not _healthy(url):
            assert proc.poll() is None, f"the api-server exited:\n{log.read_text()[-6000:]}"
            assert time.monotonic() < deadline, f"the api-server is not up:\n{log.read_text()[-6000:]}"
            time.sleep(0.5)
    except BaseException:
        _stop(proc)
        raise
    return proc


def stop_api_server(proc: Any) -> None:
    _stop(proc)


@pytest.fixture(scope="session")
def ui(
    tmp_path_factory: pytest.TempPathFactory, ui_emulator: RunningEmulator, ui_s3: dict[str, Any]
) -> Iterator[UiDeployment]:
    home = tmp_path_factory.mktemp("ui_airflow_home")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    passwords = {user: secrets.token_urlsafe(12) for user in USERS}
    passwords_file = home / "passwords.json"
    passwords_file.write_text(json.dumps(passwords))
    airflow = AirflowEnv(home, {"conn_type": "klingfx", "host": ui_emulator.url, "password": API_KEY})
    hidden = _make_secrets(home, ui_s3["client"])
    pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    airflow.env |= {
        "PYTHONPATH": pythonpath,
        "AIRFLOW__CORE__AUTH_MANAGER": "tests.ui.acl_auth_manager.DagAclSimpleAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{r}" for u, r in USERS.items()),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file),
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
        "AIRFLOW__API__BASE_URL": url,
        "KLINGFX_TEST_DAG_ACL": ";".join(f"{u}:{d}" for u, d in ACL.items()),
        "KLINGFX_TEST_NO_XCOM": "carol",
        "AIRFLOW_CONN_AWS_VIEWS": ui_s3["conn"],
    }
    airflow.migrate()

    runs: dict[str, DagRunResult] = {}
    outputs: dict[str, Path] = {}
    for dag_id in DAGS:
        outputs[dag_id] = home / "videos" / dag_id
        conf = {"samples": f"{ui_emulator.url}/samples", "output_base": outputs[dag_id].as_uri()}
        result = airflow.dags_test(dag_id, conf)
        # The hug fails (no face in its second photo), the others succeed. The run itself succeeds:
        # Airflow judges a run by its leaves, and the one leaf, the preview (all_done), succeeds.
        states = {mi: result.task_states.get(("generate", mi)) for mi in SCENES}
        assert result.state == "success", result.output[-6000:]
        assert states == {0: "success", 1: "success", 2: "failed"}, result.output[-6000:]
        assert result.task_states.get(("preview", -1)) == "success", result.output[-6000:]
        runs[dag_id] = result
    outputs[ATTACK_DAG] = home / "videos" / ATTACK_DAG
    attack_conf = {
        "samples": f"{ui_emulator.url}/samples",
        "output_base": outputs[ATTACK_DAG].as_uri(),
        "secret_dir": str(hidden.dir),
    }
    runs[ATTACK_DAG] = airflow.dags_test(ATTACK_DAG, attack_conf)
    attacks = runs[ATTACK_DAG].task_states
    assert attacks == {
        ("forge", -1): "success",
        ("local_photo", -1): "failed",
        ("victim", -1): "success",
        ("victim_preview", -1): "success",
    }, runs[ATTACK_DAG].output[-6000:]
    # A real video in the allowed S3 prefix, for the test that reads it with the prefix's connection.
    hidden.s3.put_object(
        Bucket="media", Key="videos/ok.mp4", Body=(outputs[PUBLIC_DAG] / "0.mp4").read_bytes()
    )

    log = home / "api-server.log"
    prefixes = f"{hidden.videos.as_uri()}/, s3://aws_views@media/videos/"
    proc = start_api_server(airflow, port, log, {"AIRFLOW__KLINGFX__VIEWS_READ_PREFIXES": prefixes})
    try:
        yield UiDeployment(url, airflow, runs, outputs, passwords, log, hidden)
    finally:
        _stop(proc)
