"""The web app behind the views, mounted by Airflow's api-server under ``/klingfx``.

Airflow mounts a plugin's app as it is: nothing is authenticated unless the app asks. So every
route requires a signed-in user (``get_user``: the UI's ``_token`` cookie, which the browser sends
to this same-origin iframe, or an ``Authorization: Bearer`` token), and every answer is limited to
the DAGs the auth manager lets that user read: a task instance's page, media and photos need read
access to that DAG's XComs (``requires_access_dag``); a gallery lists only readable DAGs
(``get_authorized_dag_ids``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from airflow.api_fastapi.core_api.security import GetUserDep, get_user
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from sqlalchemy.orm import Session

from airflow_provider_klingfx.ui import pages
from airflow_provider_klingfx.ui.data import GenerationView, generation_dag_ids, load_generations


def _session() -> Iterator[Session]:
    from airflow.utils.session import create_session

    with create_session(scoped=False) as session:
        yield session


# At module level: FastAPI resolves a route's (string, `from __future__ import annotations`)
# parameter annotations in the module's globals; a name it cannot find there becomes a required
# query parameter.
SessionDep = Annotated[Session, Depends(_session)]


def _dag_access() -> Any:
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import requires_access_dag

    return Depends(requires_access_dag(method="GET", access_entity=DagAccessEntity.XCOM))


def _build() -> FastAPI:
    from airflow.api_fastapi.app import get_auth_manager

    app = FastAPI(
        title="Kling videos",
        dependencies=[Depends(get_user)],
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    def root_of(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    def one(
        session: Session, dag_id: str, run_id: str, task_id: str, map_index: str
    ) -> GenerationView | None:
        # Airflow leaves {MAP_INDEX} as it is for an unmapped task instance.
        index = int(map_index) if map_index.lstrip("-").isdigit() else -1
        found = load_generations(session, {dag_id}, run_id=run_id, task_id=task_id, map_index=index)
        return found[0] if found else None

    @app.get(
        "/ti/{dag_id}/{run_id}/{task_id}/{map_index}",
        response_class=HTMLResponse,
        dependencies=[_dag_access()],
    )
    def ti_tab(
        request: Request, session: SessionDep, dag_id: str, run_id: str, task_id: str, map_index: str
    ) -> str:
        """The task-instance tab: the video playing, with what made it and what it cost."""
        return pages.ti_page(root_of(request), one(session, dag_id, run_id, task_id, map_index), task_id)

    @app.get("/gallery", response_class=HTMLResponse)
    def gallery(
        request: Request,
        user: GetUserDep,
        session: SessionDep,
        dag_id: str | None = None,
        run_id: str | None = None,
        scene: str | None = None,
        state: str | None = None,
    ) -> str:
        """Every generation of recent runs of the DAGs this user may read, as tiles."""
        readable = set(get_auth_manager().get_authorized_dag_ids(user=user, session=session))
        dags = readable & {dag_id} if dag_id else readable
        views = load_generations(session, dags)
        shown = [
            v
            for v in views
            if (not run_id or v.run_id == run_id)
            and (not scene or v.scene == scene)
            and (not state or v.state == state)
        ]
        filters = {"dag_id": dag_id, "run_id": run_id, "scene": scene, "state": state}
        # Only readable DAGs are offered (a dag_id the user may not read is not echoed back).
        return pages.gallery_page(
            root_of(request), views, shown, filters, generation_dag_ids(session, readable)
        )

    @app.get("/api/generations")
    def generations(user: GetUserDep, session: SessionDep, dag_id: str | None = None) -> list[dict[str, Any]]:
        """The same as JSON (what the gallery shows), for scripts."""
        readable = set(get_auth_manager().get_authorized_dag_ids(user=user, session=session))
        return [
            {
                "dag_id": v.dag_id,
                "run_id": v.run_id,
                "task_id": v.task_id,
                "map_index": v.map_index,
                "state": v.state,
                "effect_scene": v.scene,
                "generation_id": v.xcoms.get("generation_id"),
                "has_video": v.has_video,
                "output_path": v.output_path,
                "usage": v.usage,
                "error": v.error,
            }
            for v in load_generations(session, readable & {dag_id} if dag_id else readable)
        ]

    @app.get("/media/{dag_id}/{run_id}/{task_id}/{map_index}/{kind:path}", dependencies=[_dag_access()])
    def media(
        request: Request,
        session: SessionDep,
        dag_id: str,
        run_id: str,
        task_id: str,
        map_index: str,
        kind: str,
    ) -> Response:
        """The saved video (byte ranges, for seeking), its GIF and poster, or a photo's thumbnail."""
        view = one(session, dag_id, run_id, task_id, map_index)
        if view is None:
            raise HTTPException(404, "no Kling generation in this task instance")
        if kind == "video":
            if view.output_path:
                return _stream(view.output_path, "video/mp4", request.headers.get("range"))
            if view.video_url:
                # Not saved: the vendor's CDN serves it (the URL the extra link opens too).
                return RedirectResponse(view.video_url, status_code=307)
        elif kind in ("gif", "poster") and view.preview:
            path = view.preview.get("gif_path" if kind == "gif" else "poster_path")
            if isinstance(path, str):
                media_type = "image/gif" if kind == "gif" else _image_type(path)
                return _stream(path, media_type, None)
        elif kind.startswith("photo/") and kind.removeprefix("photo/").isdigit():
            photos = view.request.get("photos") or []
            i = int(kind.removeprefix("photo/"))
            if i < len(photos) and isinstance(photos[i], dict) and photos[i].get("thumbnail"):
                return _photo(str(photos[i]["thumbnail"]))
        raise HTTPException(404, f"no {kind} for this generation")

    return app


def _image_type(path: str) -> str:
    return "image/png" if path.lower().endswith(".png") else "image/jpeg"


def _open(url: str) -> Any:
    from airflow_provider_klingfx.media import as_storage_path

    path = as_storage_path(url)
    try:
        size = int(path.stat().st_size)
    except FileNotFoundError:
        raise HTTPException(404, "the file is gone from where the task saved it") from None
    return path, size


#: Keeps Airflow's GZipMiddleware, which wraps the plugin apps too, off media: it passes through a
#: response that already names its encoding. Without it, Airflow 3.1 (whose Starlette, 0.48, excludes
#: no image or video type from compression) gzips every MP4, GIF and JPEG: a 206 then carries the
#: file's Content-Range but a gzipped body and no Content-Length, and the server spends CPU
#: recompressing video for nothing.
_NOT_COMPRESSED = {"Content-Encoding": "identity"}


def _stream(url: str, media_type: str, range_header: str | None) -> Response:
    """Serve a file from object storage, whole or one ``bytes=a-b`` range (video seeking)."""
    path, size = _open(url)
    start, end = 0, size - 1
    status = 200
    if range_header and range_header.startswith("bytes=") and "," not in range_header:
        first, _, last = range_header.removeprefix("bytes=").partition("-")
        try:
            if first:
                start, end = int(first), min(int(last) if last else size - 1, size - 1)
            else:  # the last N bytes
                start = max(0, size - int(last))
        except ValueError:
            raise HTTPException(416, "bad range") from None
        if start > end or start >= size:
            return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
        status = 206

    def body() -> Iterator[bytes]:
        with path.open("rb") as fh:
            fh.seek(start)
            left = end - start + 1
            while left > 0:
                chunk = fh.read(min(1 << 20, left))
                if not chunk:
                    break
                left -= len(chunk)
                yield chunk

    headers = {
        "Accept-Ranges": "bytes",
        "Content-Length": str(end - start + 1),
        "Cache-Control": "private",
        **_NOT_COMPRESSED,
    }
    if status == 206:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return StreamingResponse(body(), status_code=status, media_type=media_type, headers=headers)


def _photo(ref: str) -> Response:
    """A storage or local photo, for its thumbnail (http(s) photos are shown from their own URL)."""
    from airflow_provider_klingfx.domain import PHOTO_URL, photo_kind
    from airflow_provider_klingfx.images import MAX_IMAGE_BYTES

    if photo_kind(ref) == PHOTO_URL:
        return RedirectResponse(ref, status_code=307)
    path, size = _open(ref)
    if size > MAX_IMAGE_BYTES:
        raise HTTPException(404, "photo too large to show")
    with path.open("rb") as fh:
        data = fh.read()
    return Response(
        data,
        # By content, as the photo was checked: JPEG or PNG whatever its name says.
        media_type="image/png" if data.startswith(b"\x89PNG") else "image/jpeg",
        headers=_NOT_COMPRESSED,
    )


#: The app, built on first import of this module (by the api-server, through the plugin).
app = _build()
