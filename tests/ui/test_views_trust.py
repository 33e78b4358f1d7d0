"""What a task, an XCom or a user can make the api-server read: only what an admin allowed.

On a real api-server whose ``[klingfx] views_read_prefixes`` allow the Airflow home's videos folder
and ``s3://aws_views@media/videos/``, every media route (video, GIF, poster, photo) is asked for a
secret the api-server can reach: through a plain ``@task`` that pushes a generation's XComs, a local
photo given to the operator, and a real generation whose XComs are rewritten (as a user with XCom
write access can) to name the secret directly, ``/proc/self/environ``, a symbolic link from an
allowed folder, ``..`` segments, a text file inside the allowed folder, an S3 object outside the
allowed prefix (read with the api-server's own moto connection). Every answer is a 404 that holds
none of the secret's bytes.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.airflow_harness import BIN
from tests.support import free_port
from tests.ui.conftest import ATTACK_DAG, PUBLIC_DAG, UiDeployment, start_api_server, stop_api_server

pytestmark = [pytest.mark.deployment, pytest.mark.xdist_group("ui")]

MEDIA = ("video", "gif", "poster", "photo/0")


def ti_path(ui: UiDeployment, kind: str, task_id: str, tail: str = "") -> str:
    return f"/klingfx/{kind}/{ATTACK_DAG}/{ui.run_id(ATTACK_DAG)}/{task_id}/-1{tail}"


def assert_refused(ui: UiDeployment, task_id: str, kinds: tuple[str, ...] = MEDIA) -> None:
    for kind in kinds:
        resp = ui.get(ti_path(ui, "media", task_id, f"/{kind}"), "admin")
        assert resp.status_code == 404, (task_id, kind, resp.status_code, resp.text[:300])
        assert ui.secrets.marker not in resp.content, (task_id, kind)


def set_xcom(ui: UiDeployment, task_id: str, key: str, value: Any) -> None:
    """Rewrite one XCom of ``test_klingfx_attacks``, as a user with XCom write access can."""
    with sqlite3.connect(ui.airflow.db_path) as db:
        changed = db.execute(
            "UPDATE xcom SET value = ? WHERE dag_id = ? AND run_id = ? AND task_id = ? AND map_index = -1 "
            "AND key = ?",
            (json.dumps(value), ATTACK_DAG, ui.run_id(ATTACK_DAG), task_id, key),
        ).rowcount
    assert changed == 1, (task_id, key)


@pytest.fixture
def victim(ui: UiDeployment) -> Iterator[dict[str, Any]]:
    """The real generation's XComs, put back after the test."""
    run = ui.runs[ATTACK_DAG]
    original = {
        "output_path": run.xcom("victim", "output_path"),
        "request": run.xcom("victim", "request"),
        "preview": run.xcom("victim_preview", "preview"),
    }
    yield original
    set_xcom(ui, "victim", "output_path", original["output_path"])
    set_xcom(ui, "victim", "request", original["request"])
    set_xcom(ui, "victim_preview", "preview", original["preview"])


def point_everything_at(ui: UiDeployment, victim: dict[str, Any], target: str) -> None:
    """Make the video, the GIF, the poster and the photo of the real generation name ``target``."""
    set_xcom(ui, "victim", "output_path", target)
    request = {**victim["request"], "photos": [{"shown": "photo", "thumbnail": target}]}
    set_xcom(ui, "victim", "request", request)
    set_xcom(
        ui, "victim_preview", "preview", {"video_path": target, "gif_path": target, "poster_path": target}
    )


def test_the_real_generation_serves_its_own_files(ui, victim):
    # The control: before any rewrite, the allowed video, GIF and poster are served.
    for kind, media_type in (("video", "video/mp4"), ("gif", "image/gif"), ("poster", "image/jpeg")):
        resp = ui.get(ti_path(ui, "media", "victim", f"/{kind}"), "admin")
        assert resp.status_code == 200, (kind, resp.text[:300])
        assert resp.headers["content-type"] == media_type
        assert resp.headers["x-content-type-options"] == "nosniff"
        assert resp.headers["content-security-policy"] == "default-src 'none'; sandbox"


def test_a_plain_task_pushing_a_generations_xcoms_is_no_generation(ui):
    assert_refused(ui, "forge")
    page = ui.get(ti_path(ui, "ti", "forge"), "admin")
    assert page.status_code == 200 and "No Kling generation in task forge" in page.text
    listed = ui.get("/klingfx/api/generations", "admin", params={"dag_id": ATTACK_DAG}).json()
    assert {g["task_id"] for g in listed} == {"local_photo", "victim"}
    gallery = ui.get(f"/klingfx/gallery?dag_id={ATTACK_DAG}", "admin").text
    assert gallery.count('class="tile"') == 2 and "/forge/" not in gallery


def test_a_local_photo_given_to_the_operator_is_not_served(ui):
    run = ui.runs[ATTACK_DAG]
    error = run.xcom("local_photo", "error")
    assert error["type"] == "KlingFxImageError" and "is a local file" in error["message"]
    # The photo failed before its checks: it is not offered as a thumbnail at all.
    assert run.xcom("local_photo", "request")["photos"][0]["thumbnail"] is None
    assert_refused(ui, "local_photo", ("photo/0",))


@pytest.mark.parametrize(
    "target",
    [
        "{secrets}/secret.mp4",
        "file://{secrets}/secret.mp4",
        "/proc/self/environ",
        "file:///proc/self/environ",
        "{videos}/link.mp4",
        "{videos}/../secrets/secret.mp4",
        "{videos}/%2e%2e/secrets/secret.mp4",
        "{videos}/notes.txt",
        "s3://aws_views@media/secrets/secret.mp4",
        "s3://aws_views@media/videos/../secrets/secret.mp4",
        "s3://media/secrets/secret.mp4",
    ],
    ids=[
        "outside-path",
        "outside-file-url",
        "proc-environ",
        "proc-environ-url",
        "symlink-out",
        "dotdot",
        "encoded-dotdot",
        "text-inside-prefix",
        "s3-outside-prefix",
        "s3-dotdot",
        "s3-default-connection",
    ],
)
def test_every_route_refuses_a_file_outside_what_the_admin_allowed(ui, victim, target):
    target = target.format(secrets=ui.secrets.dir, videos=ui.secrets.videos)
    point_everything_at(ui, victim, target)
    assert_refused(ui, "victim")
    # The tab still works, plays nothing stored, and shows no secret either.
    page = ui.get(ti_path(ui, "ti", "victim"), "admin")
    assert page.status_code == 200 and ui.secrets.marker.decode() not in page.text


def test_an_allowed_s3_video_is_read_with_the_prefixs_own_connection(ui, victim):
    # The XCom names another connection; the api-server reads with the one the admin's prefix names.
    set_xcom(ui, "victim", "output_path", "s3://aws_admin@media/videos/ok.mp4")
    resp = ui.get(ti_path(ui, "media", "victim", "/video"), "admin")
    assert resp.status_code == 200, resp.text[:300]
    assert resp.content == (ui.outputs[PUBLIC_DAG] / "0.mp4").read_bytes()
    ranged = ui.get(ti_path(ui, "media", "victim", "/video"), "admin", headers={"Range": "bytes=4-11"})
    assert ranged.status_code == 206 and ranged.content == resp.content[4:12]


def test_the_gallery_the_json_and_the_tab_need_xcom_read(ui):
    # carol may read every DAG, but no XCom.
    assert ui.get("/klingfx/api/generations", "carol").json() == []
    gallery = ui.get("/klingfx/gallery", "carol")
    assert gallery.status_code == 200 and 'class="tile"' not in gallery.text
    assert "No generations." in gallery.text
    for kind in ("ti", "media"):
        tail = "/video" if kind == "media" else ""
        resp = ui.get(ti_path(ui, kind, "victim", tail), "carol")
        assert resp.status_code == 403, (kind, resp.text[:300])


def test_pages_allow_no_script_or_style_but_their_own(ui):
    page = ui.get(ti_path(ui, "ti", "victim"), "admin")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self';" in policy and "style-src 'self';" in policy
    assert "frame-ancestors 'self'" in policy
    assert "<script src=" in page.text and "onmouse" not in page.text and "<style" not in page.text
    js = ui.get("/klingfx/static/klingfx.js", "admin")
    assert js.status_code == 200 and "addEventListener" in js.text


@pytest.fixture(scope="module")
def default_server(ui: UiDeployment) -> Iterator[str]:
    """A second api-server on the same metadata DB, with the views' settings left at their defaults."""
    port = free_port()
    proc = start_api_server(ui.airflow, port, ui.airflow.home / "api-server-default.log")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_api_server(proc)


def test_by_default_the_views_read_no_file_and_play_the_vendors_copy(ui, default_server):
    headers = {"Authorization": f"Bearer {ui.token('admin')}"}
    run_id = ui.run_id(PUBLIC_DAG)
    video_url = ui.runs[PUBLIC_DAG].xcom("generate", "video", 0)["url"]
    base = f"{default_server}/klingfx"
    for kind in ("video", "gif", "poster"):
        resp = requests.get(
            f"{base}/media/{PUBLIC_DAG}/{run_id}/generate/0/{kind}", headers=headers, timeout=60
        )
        assert resp.status_code == 404, (kind, resp.text[:300])
        assert "views_read_prefixes is empty" in resp.json()["detail"]
    page = requests.get(f"{base}/ti/{PUBLIC_DAG}/{run_id}/generate/0", headers=headers, timeout=60).text
    assert f'<source src="{video_url}">' in page
    assert "/media/" not in page  # nothing stored is offered
    assert (
        "not shown from there: the api-server reads no saved files: [klingfx] views_read_prefixes is empty"
        in (page)
    )
    gallery = requests.get(f"{base}/gallery?dag_id={PUBLIC_DAG}", headers=headers, timeout=60).text
    assert gallery.count('class="tile"') == 3 and "/media/" not in gallery


def test_views_enabled_false_leaves_the_views_out(ui):
    proc = subprocess.run(
        [str(BIN / "airflow"), "plugins", "--output", "json"],
        env={**ui.airflow.env, "AIRFLOW__KLINGFX__VIEWS_ENABLED": "False"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    plugins = {p["name"]: p for p in json.loads(proc.stdout[proc.stdout.index("[") :])}
    assert plugins["klingfx_views"]["fastapi_apps"] == []
    assert plugins["klingfx_views"]["external_views"] == []
