"""The web app behind the views, mounted by Airflow's api-server under ``/klingfx``.

Airflow mounts a plugin's app as it is: nothing is authenticated unless the app asks. So every route
requires a signed-in user (``get_user``: the UI's ``_token`` cookie, which the browser sends to this
same-origin iframe, or an ``Authorization: Bearer`` token), and every answer shows XCom content only
of DAGs whose XComs the auth manager lets that user read: a task instance's page and media through
``requires_access_dag(GET, XCOM)``, the galleries and the JSON by asking the auth manager the same
question for each DAG the user may read.

What the api-server reads from disk or object storage is decided in one place,
:mod:`airflow_provider_klingfx.ui.access`; this module only routes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

from airflow.api_fastapi.core_api.security import GetUserDep, get_user
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.orm import Session

from airflow_provider_klingfx.ui import access, pages
from airflow_provider_klingfx.ui.data import (
    GenerationView,
    load_generation,
    load_generations,
)


def _session() -> Iterator[Session]:
    from airflow.utils.session import create_session

    with create_session(scoped=False) as session:
        yield session


# At module level: FastAPI resolves a route's (string, `from __future__ import annotations`)
# parameter annotations in the module's globals; a name it cannot find there becomes a required
# query parameter.
SessionDep = Annotated[Session, Depends(_session)]

#: Keeps Airflow's GZipMiddleware, which wraps the plugin apps too, off media: it passes through a
#: response that already names its encoding. Without it, Airflow 3.1 (whose Starlette, 0.48, excludes
#: no image or video type from compression) gzips every MP4, GIF and JPEG: a 206 then carries the
#: file's Content-Range but a gzipped body and no Content-Length, and the server spends CPU
#: recompressing video for nothing.
_NOT_COMPRESSED = {"Content-Encoding": "identity"}
#: Every media answer: its type is what its bytes say (never to be sniffed into something else), and
#: it is never a document that could run anything.
_MEDIA_HEADERS = {
    **_NOT_COMPRESSED,
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox",
    "Cache-Control": "private",
}


def _dag_access() -> Any:
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import requires_access_dag

    return Depends(requires_access_dag(method="GET", access_entity=DagAccessEntity.XCOM))


def _xcom_readable(user: Any, session: Session, dag_id: str | None) -> set[str]:
    """The DAGs (of ``dag_id``, when given) whose XComs ``user`` may read: what a gallery may show."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails

    manager = get_auth_manager()
    readable = set(manager.get_authorized_dag_ids(user=user, session=session))
    if dag_id is not None:
        readable &= {dag_id}
    return {
        d
        for d in readable
        if manager.is_authorized_dag(
            method="GET", access_entity=DagAccessEntity.XCOM, details=DagDetails(id=d), user=user
        )
    }


def _map_index(value: str) -> int:
    # Airflow leaves {MAP_INDEX} as it is for an unmapped task instance.
    return int(value) if value.lstrip("-").isdigit() else -1


def _html(page: pages.Page) -> HTMLResponse:
    return HTMLResponse(
        page.html,
        headers={"Content-Security-Policy": page.csp, "X-Content-Type-Options": "nosniff"},
    )


def _range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end)`` of a single ``bytes=a-b`` range, None for the whole file.

    :raises HTTPException: 416 for a range that cannot be served.
    """
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    first, _, last = header.removeprefix("bytes=").partition("-")
    try:
        if first:
            start, end = int(first), min(int(last) if last else size - 1, size - 1)
        else:  # the last N bytes
            start, end = max(0, size - int(last)), size - 1
    except ValueError:
        raise HTTPException(416, "bad range") from None
    if start > end or start >= size:
        raise HTTPException(416, "range not satisfiable", headers={"Content-Range": f"bytes */{size}"})
    return start, end


def _serve(media: access.Media, range_header: str | None) -> Response:
    """A file the trust model allowed: whole or one byte range (video seeking)."""
    try:
        chosen = _range(range_header, media.size)
    except HTTPException:
        media.close()
        raise
    start, end = chosen or (0, media.size - 1)
    headers = {**_MEDIA_HEADERS, "Accept-Ranges": "bytes", "Content-Length": str(end - start + 1)}
    if chosen:
        headers["Content-Range"] = f"bytes {start}-{end}/{media.size}"
    return StreamingResponse(
        media.chunks(start, end),
        status_code=206 if chosen else 200,
        media_type=media.media_type,
        headers=headers,
    )


def _stored_file(view: GenerationView, kind: str) -> tuple[str | None, access.Kind]:
    """Which stored file a media route serves for ``kind``, and what kind of file it must be."""
    if kind == "video":
        return view.output_path, "video"
    if kind == "gif":
        return view.gif_path, "gif"
    if kind == "poster":
        return view.poster_path, "picture"
    index = kind.removeprefix("photo/")
    if kind.startswith("photo/") and index.isdigit() and int(index) < len(view.photos):
        return view.photos[int(index)]["thumbnail"], "picture"
    return None, "picture"


def _build() -> FastAPI:
    app = FastAPI(
        title="Kling videos",
        dependencies=[Depends(get_user)],
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    # The stylesheet and the script of the pages (no secret in them; a mount is outside the app's
    # dependencies, so they load before the iframe's cookie is checked).
    app.mount("/static", StaticFiles(directory=Path(__file__).with_name("static")), name="static")

    def root_of(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    @app.get(
        "/ti/{dag_id}/{run_id}/{task_id}/{map_index}",
        response_class=HTMLResponse,
        dependencies=[_dag_access()],
    )
    def ti_tab(
        request: Request, session: SessionDep, dag_id: str, run_id: str, task_id: str, map_index: str
    ) -> HTMLResponse:
        """The task-instance tab: the video playing, with what made it and what it cost."""
        view = load_generation(session, dag_id, run_id, task_id, _map_index(map_index))
        return _html(pages.ti_page(root_of(request), view, task_id))

    @app.get("/gallery", response_class=HTMLResponse)
    def gallery(
        request: Request,
        user: GetUserDep,
        session: SessionDep,
        dag_id: str | None = None,
        run_id: str | None = None,
        scene: str | None = None,
        state: str | None = None,
    ) -> HTMLResponse:
        """The generations of the newest runs that have any, of the DAGs whose XComs this user may read."""
        # The filter form sends every field; an empty one means "all".
        dag_id, run_id, scene, state = (value or None for value in (dag_id, run_id, scene, state))
        readable = _xcom_readable(user, session, None)
        views = load_generations(session, readable & {dag_id} if dag_id else readable, run_id=run_id)
        shown = [v for v in views if (not scene or v.scene == scene) and (not state or v.state == state)]
        filters = {
            "dag_id": dag_id if dag_id in readable else None,
            "run_id": run_id,
            "scene": scene,
            "state": state,
        }
        # The DAG choices are the DAGs of the runs shown (no query of their own), never one the user
        # may not read: a dag_id the user may not read is not echoed back.
        choices = sorted({v.dag_id for v in views} | ({dag_id} if dag_id in readable else set()))
        return _html(pages.gallery_page(root_of(request), views, shown, filters, choices))

    @app.get("/api/generations")
    def generations(user: GetUserDep, session: SessionDep, dag_id: str | None = None) -> JSONResponse:
        """The same as JSON (what the gallery shows), for scripts."""
        readable = _xcom_readable(user, session, dag_id)
        return JSONResponse(
            [
                {
                    "dag_id": v.dag_id,
                    "run_id": v.run_id,
                    "task_id": v.task_id,
                    "map_index": v.map_index,
                    "state": v.state,
                    "effect_scene": v.scene,
                    "generation_id": v.generation_id,
                    "has_video": v.has_video,
                    "output_path": v.output_path,
                    "usage": v.usage.to_dict() if v.usage else None,
                    "error": v.error,
                }
                for v in load_generations(session, readable)
            ],
            headers={"X-Content-Type-Options": "nosniff"},
        )

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
        """A stored file of a generation: its saved video (byte ranges, for seeking), GIF, poster or a
        photo's thumbnail, where the trust model allows it (:mod:`~airflow_provider_klingfx.ui.access`);
        404 otherwise, with none of the file's bytes."""
        view = load_generation(session, dag_id, run_id, task_id, _map_index(map_index))
        if view is None:
            raise HTTPException(404, "no Kling generation in this task instance")
        url, file_kind = _stored_file(view, kind)
        if not url:
            raise HTTPException(404, f"no stored {kind} for this generation")
        try:
            opened = access.open_media(url, file_kind)
        except access.NotServed as exc:
            raise HTTPException(404, f"{kind} not served: {exc}") from None
        return _serve(opened, request.headers.get("range") if file_kind == "video" else None)

    return app


#: The app, built on first import of this module (by the api-server, through the plugin).
app = _build()
