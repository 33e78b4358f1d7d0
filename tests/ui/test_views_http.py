"""The views' routes over HTTP, on a real api-server: who may see what, and the media they serve.

Signed-out requests get 401; each user sees only the DAGs the auth manager lets them read (403 for a
page or a file of another DAG); the video is the file the task saved, byte for byte, whole or by
ranges; and the API key (the connection's password) is in no answer.
"""

from __future__ import annotations

from urllib.parse import quote

import pytest

from tests.conftest import API_KEY
from tests.ui.conftest import ATTACK_DAG, FACE_ERROR, PRIVATE_DAG, PUBLIC_DAG, SCENES, UiDeployment

pytestmark = [pytest.mark.deployment, pytest.mark.xdist_group("ui")]


def generations(ui: UiDeployment, user: str, **params: str) -> list[dict]:
    resp = ui.get("/klingfx/api/generations", user, params=params)
    assert resp.status_code == 200, resp.text
    return resp.json()


def keys(items: list[dict]) -> set[tuple[str, str, str, int]]:
    return {(g["dag_id"], g["run_id"], g["task_id"], g["map_index"]) for g in items}


def expected_keys(ui: UiDeployment, dag_id: str) -> set[tuple[str, str, str, int]]:
    return {(dag_id, ui.run_id(dag_id), "generate", mi) for mi in SCENES}


def test_the_plugin_is_registered_with_its_three_views(ui):
    resp = ui.get("/api/v2/plugins", "admin")
    assert resp.status_code == 200, resp.text
    plugin = next(p for p in resp.json()["plugins"] if p["name"] == "klingfx_views")
    views = {(v["destination"], v["url_route"], v["name"]) for v in plugin["external_views"]}
    assert views == {
        ("task_instance", "klingfx-video", "Kling video"),
        ("dag", "klingfx-gallery", "Kling gallery"),
        ("nav", "klingfx-gallery-all", "Kling gallery"),
    }


SIGNED_OUT_PATHS = {
    "gallery": lambda ui: "/klingfx/gallery",
    "api": lambda ui: "/klingfx/api/generations",
    "ti": lambda ui: ui.ti_path("ti", PUBLIC_DAG, 0),
    "video": lambda ui: ui.ti_path("media", PUBLIC_DAG, 0, "/video"),
    "gif": lambda ui: ui.ti_path("media", PUBLIC_DAG, 0, "/gif"),
}


@pytest.mark.parametrize("what", list(SIGNED_OUT_PATHS))
def test_signed_out_requests_get_401(ui, what):
    path = SIGNED_OUT_PATHS[what](ui)
    signed_out = ui.get(path)
    assert signed_out.status_code == 401, signed_out.text
    assert signed_out.json() == {"detail": "Not authenticated"}
    # A token that is not Airflow's: 403 "Invalid JWT token", as Airflow's own API answers it.
    forged: dict
    for forged in ({"headers": {"Authorization": "Bearer x.y.z"}}, {"cookies": {"_token": "x.y.z"}}):
        resp = ui.get(path, **forged)
        assert (resp.status_code, resp.json()) == (403, {"detail": "Invalid JWT token"}), forged


def test_alice_lists_exactly_the_generations_of_her_dag(ui):
    mine = generations(ui, "alice")
    assert keys(mine) == expected_keys(ui, PUBLIC_DAG)
    by_index = {g["map_index"]: g for g in mine}
    assert {mi: g["effect_scene"] for mi, g in by_index.items()} == SCENES
    assert {mi: g["state"] for mi, g in by_index.items()} == {0: "success", 1: "success", 2: "failed"}
    for mi in (0, 1):
        assert by_index[mi]["has_video"] and by_index[mi]["error"] is None
        assert by_index[mi]["output_path"] == ui.video_file(PUBLIC_DAG, mi).as_uri()
        assert by_index[mi]["generation_id"] == ui.runs[PUBLIC_DAG].xcom("generate", "generation_id", mi)
    assert not by_index[2]["has_video"]
    assert FACE_ERROR in by_index[2]["error"]
    # Asking for the other DAG by name gives nothing either.
    assert generations(ui, "alice", dag_id=PRIVATE_DAG) == []


def test_bob_lists_only_the_private_dag(ui):
    assert keys(generations(ui, "bob")) == expected_keys(ui, PRIVATE_DAG)
    assert generations(ui, "bob", dag_id=PUBLIC_DAG) == []


def test_admin_lists_both_dags(ui):
    # And the two generations of the DAG tests/ui/test_views_trust.py attacks the views with.
    attacks = {(ATTACK_DAG, ui.run_id(ATTACK_DAG), task, -1) for task in ("local_photo", "victim")}
    assert (
        keys(generations(ui, "admin"))
        == expected_keys(ui, PUBLIC_DAG) | expected_keys(ui, PRIVATE_DAG) | attacks
    )
    assert keys(generations(ui, "admin", dag_id=PRIVATE_DAG)) == expected_keys(ui, PRIVATE_DAG)


def test_galleries_show_no_tile_of_an_unreadable_dag(ui):
    for user, hidden in (("alice", PRIVATE_DAG), ("bob", PUBLIC_DAG)):
        for query in ("", f"?dag_id={hidden}"):
            resp = ui.get(f"/klingfx/gallery{query}", user)
            assert resp.status_code == 200, resp.text
            assert f"/klingfx/ti/{hidden}/" not in resp.text
            assert ui.run_id(hidden) not in resp.text
            assert quote(ui.run_id(hidden), safe="") not in resp.text
            assert f'value="{hidden}"' not in resp.text  # not offered, not echoed back
    page = ui.get("/klingfx/gallery", "bob").text
    assert page.count('class="tile"') == 3
    assert f"/klingfx/ti/{PRIVATE_DAG}/" in page


@pytest.mark.parametrize(
    ("user", "dag_id"),
    [("bob", PUBLIC_DAG), ("alice", PRIVATE_DAG)],
)
def test_a_task_instance_of_an_unreadable_dag_is_forbidden(ui, user, dag_id):
    for path in (
        ui.ti_path("ti", dag_id, 0),
        ui.ti_path("media", dag_id, 0, "/video"),
        ui.ti_path("media", dag_id, 0, "/gif"),
        ui.ti_path("media", dag_id, 0, "/photo/0"),
    ):
        resp = ui.get(path, user)
        assert resp.status_code == 403, (path, resp.status_code, resp.text[:300])


def test_the_video_is_the_saved_file_byte_for_byte(ui):
    for mi in (0, 1):
        saved = ui.video_file(PUBLIC_DAG, mi).read_bytes()
        assert saved[4:8] == b"ftyp"
        resp = ui.get(ui.ti_path("media", PUBLIC_DAG, mi, "/video"), "alice")
        assert resp.status_code == 200, resp.text[:300]
        assert resp.headers["content-type"] == "video/mp4"
        assert resp.headers["accept-ranges"] == "bytes"
        # Sent as it is: Airflow's GZipMiddleware (it wraps plugin apps too) must keep off it.
        assert resp.headers.get("content-encoding", "identity") == "identity"
        assert int(resp.headers["content-length"]) == len(saved)
        assert resp.content == saved
    # The other DAG's copy, for its own reader.
    private = ui.get(ui.ti_path("media", PRIVATE_DAG, 0, "/video"), "bob")
    assert private.content == ui.video_file(PRIVATE_DAG, 0).read_bytes()


def test_byte_ranges_of_the_video(ui):
    saved = ui.video_file(PUBLIC_DAG, 0).read_bytes()
    size = len(saved)
    path = ui.ti_path("media", PUBLIC_DAG, 0, "/video")
    for header, start, end in (
        ("bytes=100-1099", 100, 1099),
        ("bytes=0-0", 0, 0),
        (f"bytes={size - 300}-", size - 300, size - 1),
        ("bytes=-500", size - 500, size - 1),
        (f"bytes=1000-{size + 5000}", 1000, size - 1),
    ):
        resp = ui.get(path, "alice", headers={"Range": header})
        assert resp.status_code == 206, (header, resp.status_code)
        assert resp.headers["content-range"] == f"bytes {start}-{end}/{size}", header
        assert resp.headers.get("content-encoding", "identity") == "identity", header
        assert int(resp.headers["content-length"]) == end - start + 1
        assert resp.content == saved[start : end + 1], header
    beyond = ui.get(path, "alice", headers={"Range": f"bytes={size}-"})
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{size}"


def test_preview_gif_and_poster_of_map_index_0_only(ui):
    preview = ui.runs[PUBLIC_DAG].xcom("preview", "preview")
    assert preview["video_path"] == ui.video_file(PUBLIC_DAG, 0).as_uri()
    gif = ui.get(ui.ti_path("media", PUBLIC_DAG, 0, "/gif"), "alice")
    assert gif.status_code == 200 and gif.headers["content-type"] == "image/gif"
    assert gif.content.startswith(b"GIF8")
    assert gif.content == ui.video_file(PUBLIC_DAG, 0).with_name("0.preview.gif").read_bytes()
    poster = ui.get(ui.ti_path("media", PUBLIC_DAG, 0, "/poster"), "alice")
    assert poster.status_code == 200 and poster.headers["content-type"] == "image/jpeg"
    assert poster.content.startswith(b"\xff\xd8")
    for image in (gif, poster):
        assert image.headers.get("content-encoding", "identity") == "identity"
        assert int(image.headers["content-length"]) == len(image.content)
    # No preview of map index 1; no video at all for the failed hug.
    assert ui.get(ui.ti_path("media", PUBLIC_DAG, 1, "/gif"), "alice").status_code == 404
    assert ui.get(ui.ti_path("media", PUBLIC_DAG, 2, "/video"), "alice").status_code == 404
    # The photos were http URLs without a query: the page shows them from there, and the api-server
    # neither reads them nor redirects to them (no open redirect to a URL an XCom names).
    photo = ui.get(ui.ti_path("media", PUBLIC_DAG, 0, "/photo/0"), "alice")
    assert photo.status_code == 404
    page = ui.get(ui.ti_path("ti", PUBLIC_DAG, 0), "alice").text
    assert '<img src="http://127.0.0.1:' in page and '/samples/person-1.png" alt="photo 1"' in page


def test_task_tab_pages(ui):
    run = ui.runs[PUBLIC_DAG]
    page = ui.get(ui.ti_path("ti", PUBLIC_DAG, 0), "alice")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert '<video id="klingfx-video"' in html
    assert ui.ti_path("media", PUBLIC_DAG, 0, "/video") in html
    request = run.xcom("generate", "request", 0)
    usage = run.xcom("generate", "usage", 0)
    for shown in (
        "squish",
        request["model"],
        run.xcom("generate", "generation_id", 0),
        f"${usage['usd_spent']:g}",
    ):
        assert shown in html
    failed = ui.get(ui.ti_path("ti", PUBLIC_DAG, 2), "alice").text
    assert FACE_ERROR in failed and 'id="klingfx-error"' in failed and "<video" not in failed
    # A task that is not a generation, unmapped: Airflow leaves {MAP_INDEX} in the URL as it is.
    unmapped = f"/klingfx/ti/{PUBLIC_DAG}/{quote(run.run_id or '', safe='')}/preview/%7BMAP_INDEX%7D"
    other = ui.get(unmapped, "alice")
    assert other.status_code == 200 and "No Kling generation in task preview" in other.text


def test_no_answer_holds_the_api_key(ui):
    seen = 0
    for user, dag_id in (("alice", PUBLIC_DAG), ("bob", PRIVATE_DAG), ("admin", PUBLIC_DAG)):
        paths = ["/klingfx/gallery", "/klingfx/api/generations", f"/klingfx/gallery?dag_id={dag_id}"]
        paths += [ui.ti_path("ti", dag_id, mi) for mi in SCENES]
        for path in paths:
            resp = ui.get(path, user)
            assert resp.status_code == 200, (path, resp.status_code)
            assert API_KEY not in resp.text, path
            seen += 1
    assert seen == 18
