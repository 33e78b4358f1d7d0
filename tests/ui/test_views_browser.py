"""The views in Airflow's own UI, in a real browser (Debian's chromium driven by Playwright).

Signed in as Airflow's UI signs in (the ``_token`` cookie that ``POST /auth/token`` hands out), the
tests click through Airflow's pages to the provider's tabs and check what is inside their iframes:
the task's video playing, the gallery's tiles, its filters, and that bob's gallery holds nothing of
alice's DAG. Screenshots of the tab and of the gallery are saved, and copied to
``$KLINGFX_SCREENSHOTS_DIR`` when it is set (the README's come from
``KLINGFX_SCREENSHOTS_DIR=docs/screenshots`` on Airflow 3.3).

Airflow 3.1 and 3.3 show the views alike: the same routes (``.../mapped/{i}/plugin/klingfx-video``,
``/dags/{dag}/plugin/klingfx-gallery``, ``/plugin/klingfx-gallery-all``), tabs and Browse menu.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.ui.conftest import FACE_ERROR, PRIVATE_DAG, PUBLIC_DAG, SCENES, UiDeployment

pytestmark = [pytest.mark.deployment, pytest.mark.browser, pytest.mark.xdist_group("ui")]

#: Debian's chromium (``make browser``): Playwright drives it, it never downloads a browser.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 800}
#: Where else to put the screenshots (e.g. docs/screenshots), if set.
SCREENSHOTS_ENV = "KLINGFX_SCREENSHOTS_DIR"

PLAYING = """() => {
    const v = document.getElementById('klingfx-video');
    return v !== null && v.currentTime > 0 && !v.paused && v.readyState >= 2;
}"""
TILES = """tiles => tiles.map(t => {
    const img = t.querySelector('.media img'), video = t.querySelector('.media video');
    return {
        href: t.getAttribute('href'), state: t.dataset.state, text: t.innerText,
        img: img && img.getAttribute('src'), imgWidth: img ? img.naturalWidth : 0,
        video: video && video.querySelector('source') && video.querySelector('source').getAttribute('src'),
        videoReady: video ? video.readyState : 0,
    };
})"""
MEDIA_SHOWN = """() => {
    const imgs = [...document.querySelectorAll('.tile .media img')];
    const videos = [...document.querySelectorAll('.tile .media video')];
    return imgs.every(i => i.complete && i.naturalWidth > 0) && videos.every(v => v.readyState >= 2);
}"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: `make browser` installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def signed_in(browser: Any, ui: UiDeployment) -> Iterator[Any]:
    """``signed_in(user)``: a new page of a browser context signed in as ``user``."""
    contexts = []

    def open_page(user: str) -> Any:
        context = browser.new_context(viewport=VIEWPORT)
        context.set_default_timeout(30_000)
        context.add_cookies([{"name": "_token", "value": ui.token(user), "url": ui.url}])
        contexts.append(context)
        return context.new_page()

    yield open_page
    for context in contexts:
        context.close()


@pytest.fixture(scope="module")
def screenshot(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``screenshot(page, name)``: save the page's viewport as ``name`` (and copy it, see the module)."""
    folder = tmp_path_factory.mktemp("screenshots")

    def save(page: Any, name: str) -> Path:
        path = folder / name
        page.screenshot(path=str(path))
        if os.environ.get(SCREENSHOTS_ENV):
            target = Path(os.environ[SCREENSHOTS_ENV])
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target / name)
        return path

    return save


def plugin_frame(page: Any, src_part: str) -> Any:
    """The frame of the view whose iframe's ``src`` contains ``src_part``."""
    element = page.wait_for_selector(f"iframe[src*='{src_part}']")
    frame = element.content_frame()
    assert frame is not None
    # The element comes first, its document after (the frame is about:blank until then).
    frame.wait_for_url(lambda url: src_part in url)
    frame.wait_for_load_state("domcontentloaded")
    return frame


def tiles(frame: Any) -> list[dict[str, Any]]:
    frame.wait_for_selector("#klingfx-count")
    return list(frame.eval_on_selector_all("a.tile", TILES))


def map_index_of(tile: dict[str, Any]) -> int:
    return int(tile["href"].rsplit("/", 1)[1])


def test_task_tab_plays_the_video(ui, signed_in, screenshot):
    page = signed_in("alice")
    media = ui.ti_path("media", PUBLIC_DAG, 0, "/video")
    statuses: list[int] = []
    page.on("response", lambda r: statuses.append(r.status) if r.url.endswith(media) else None)
    run = quote(ui.run_id(PUBLIC_DAG), safe="")
    page.goto(f"{ui.url}/dags/{PUBLIC_DAG}/runs/{run}/tasks/generate/mapped/0")
    page.get_by_role("link", name="Kling video", exact=True).click()
    page.wait_for_url("**/tasks/generate/mapped/0/plugin/klingfx-video")
    frame = plugin_frame(page, "/klingfx/ti/")

    frame.wait_for_selector("video#klingfx-video")
    frame.wait_for_function(PLAYING, timeout=30_000)
    state = frame.evaluate(
        "() => { const v = document.getElementById('klingfx-video');"
        " return {src: v.currentSrc, time: v.currentTime, paused: v.paused, ready: v.readyState,"
        " width: v.videoWidth, error: v.error && v.error.code}; }"
    )
    assert state["src"] == ui.url + ui.ti_path("media", PUBLIC_DAG, 0, "/video")
    assert state["time"] > 0 and not state["paused"] and state["ready"] >= 2, state
    assert state["width"] > 0 and state["error"] is None, state

    result = ui.runs[PUBLIC_DAG]
    text = frame.inner_text("body")
    usage = result.xcom("generate", "usage", 0)
    for shown in (
        "squish",
        result.xcom("generate", "request", 0)["model"],
        result.xcom("generate", "generation_id", 0),
        f"${usage['usd_spent']:g}",
    ):
        assert shown in text
    # A second into the video: a frame of it on screen, not the poster or black.
    frame.wait_for_function("() => document.getElementById('klingfx-video').currentTime > 1")
    screenshot(page, "task-tab.png")
    # Seeking: the browser asks the api-server for byte ranges, answered 206.
    frame.evaluate(
        "() => new Promise(done => { const v = document.getElementById('klingfx-video');"
        " v.addEventListener('seeked', done, {once: true}); v.currentTime = v.duration / 2; })"
    )
    assert 206 in statuses, statuses


def test_dag_gallery_tab_shows_one_tile_per_generation(ui, signed_in, screenshot):
    page = signed_in("alice")
    page.goto(f"{ui.url}/dags/{PUBLIC_DAG}")
    page.get_by_role("link", name="Kling gallery", exact=True).click()
    page.wait_for_url(f"**/dags/{PUBLIC_DAG}/plugin/klingfx-gallery")
    frame = plugin_frame(page, "/klingfx/gallery")
    assert f"dag_id={PUBLIC_DAG}" in frame.url

    found = tiles(frame)
    run_path = f"/klingfx/ti/{PUBLIC_DAG}/{quote(ui.run_id(PUBLIC_DAG), safe='')}/generate/"
    assert sorted(t["href"] for t in found) == [f"{run_path}{mi}" for mi in SCENES]
    by_index = {map_index_of(t): t for t in found}
    assert {mi: t["state"] for mi, t in by_index.items()} == {0: "success", 1: "success", 2: "failed"}
    # Map index 0 has a preview: its GIF. Map index 1 has none: its MP4. The hug failed: its reason.
    assert by_index[0]["img"] == ui.ti_path("media", PUBLIC_DAG, 0, "/gif") and not by_index[0]["video"]
    assert by_index[1]["video"] == ui.ti_path("media", PUBLIC_DAG, 1, "/video") and not by_index[1]["img"]
    assert not by_index[2]["img"] and not by_index[2]["video"]
    assert FACE_ERROR in by_index[2]["text"]
    assert FACE_ERROR not in by_index[0]["text"] + by_index[1]["text"]
    for mi, scene in SCENES.items():
        assert scene in by_index[mi]["text"]

    frame.wait_for_function(MEDIA_SHOWN, timeout=30_000)
    shown = {map_index_of(t): t for t in tiles(frame)}
    assert shown[0]["imgWidth"] > 0 and shown[1]["videoReady"] >= 2
    screenshot(page, "gallery.png")


def test_gallery_filters_narrow_the_tiles(ui, signed_in):
    page = signed_in("alice")
    page.goto(f"{ui.url}/dags/{PUBLIC_DAG}/plugin/klingfx-gallery")
    frame = plugin_frame(page, "/klingfx/gallery")
    assert len(tiles(frame)) == 3

    frame.select_option("select[name=state]", "failed")
    frame.wait_for_function("() => document.getElementById('klingfx-count').innerText === '1 generation'")
    assert "state=failed" in frame.url
    (failed,) = tiles(frame)
    assert failed["state"] == "failed" and map_index_of(failed) == 2
    assert FACE_ERROR in failed["text"]

    frame.select_option("select[name=state]", "success")
    frame.wait_for_function("() => document.getElementById('klingfx-count').innerText === '2 generations'")
    assert sorted(map_index_of(t) for t in tiles(frame)) == [0, 1]

    frame.select_option("select[name=scene]", "expansion")
    frame.wait_for_function("() => document.getElementById('klingfx-count').innerText === '1 generation'")
    (expansion,) = tiles(frame)
    assert map_index_of(expansion) == 1 and "expansion" in expansion["text"]


def test_bobs_nav_gallery_has_nothing_of_alices_dag(ui, signed_in):
    page = signed_in("bob")
    page.goto(f"{ui.url}/")
    page.get_by_role("button", name="Browse").click()
    page.get_by_role("menuitem", name="Kling gallery").click()
    page.wait_for_url("**/plugin/klingfx-gallery-all")
    frame = plugin_frame(page, "/klingfx/gallery")

    found = tiles(frame)
    assert len(found) == 3
    assert all(t["href"].startswith(f"/klingfx/ti/{PRIVATE_DAG}/") for t in found), found
    dags = frame.eval_on_selector_all("select[name=dag_id] option", "os => os.map(o => o.value)")
    assert dags == ["", PRIVATE_DAG]
    content = frame.content()
    assert f"/klingfx/ti/{PUBLIC_DAG}/" not in content
    assert quote(ui.run_id(PUBLIC_DAG), safe="") not in content
