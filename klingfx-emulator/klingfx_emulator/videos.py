"""A generation's video: rendered in the background from its photos, then served under ``/files``.

:mod:`klingfx_emulator.render` draws and encodes the frames (synchronous, CPU-bound, run in the
state's thread executor); this module schedules that work on the event loop, keeps the result (in
memory, or in ``video_dir``) and serves it like a CDN: nothing before the generation is completed.
The ``truncate`` fault's short download lives here too: it is a way of serving the video.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web

from klingfx_emulator.answers import envelope, stamp_headers
from klingfx_emulator.images import prepare_photos
from klingfx_emulator.state import STATE_KEY, EmulatorState, GenerationRecord

log = logging.getLogger(__name__)


async def _render_video(state: EmulatorState, gen: GenerationRecord) -> None:
    """Obtain and check the inputs (unless done at submission), then render the video in the executor."""
    from klingfx_emulator.render import render_video

    loop = asyncio.get_running_loop()
    try:
        if gen.prepare_task is not None:
            await gen.prepare_task
        else:
            await prepare_photos(state, gen)
        if gen.image_error is not None:
            return  # the generation ends in error: nothing to render
        images = list(gen.inputs or ())
        gen.inputs = None  # the render's list holds them now; freed when it ends
        async with state.render_slots:
            result = await loop.run_in_executor(
                state.executor, render_video, images, gen.effect_scene, gen.duration
            )
            if state.config.video_dir is not None:
                path = Path(state.config.video_dir) / f"{gen.file_id}.mp4"
                await loop.run_in_executor(state.executor, path.write_bytes, result.data)
                gen.video_path = path
            else:
                gen.video = result.data
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        # An emulator bug or a broken PyAV build: fail the generation visibly instead of leaving it
        # "generating" forever.
        log.exception("rendering the video of generation %s failed", gen.id)
        gen.render_error = f"the emulator could not render the video: {exc}"
        return
    gen.file_size = len(result.data)
    gen.fallback_images = result.fallback_images


def _track(state: EmulatorState, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    # Renders and checks in flight: reset and shutdown cancel them, wait_for_renders waits for them.
    task = asyncio.get_running_loop().create_task(coro)
    state.pending_renders.add(task)
    task.add_done_callback(state.pending_renders.discard)
    return task


def start_prepare(state: EmulatorState, gen: GenerationRecord) -> None:
    """Obtain and check the photos now, apart from the render (``lazy`` with ``check_images``)."""
    if gen.prepare_task is None and gen.render_task is None:
        gen.prepare_task = _track(state, prepare_photos(state, gen))


def start_render(state: EmulatorState, gen: GenerationRecord) -> asyncio.Task[None]:
    """The generation's render task, started now unless it was already (downloads share it)."""
    if gen.render_task is None:
        gen.render_task = _track(state, _render_video(state, gen))
    return gen.render_task


def served_size(state: EmulatorState, gen: GenerationRecord) -> int | None:
    """The size of the MP4 a download would get (``None`` until a lazy render has run)."""
    if state.config.render == "off":
        return len(state.tiny_video) if state.tiny_video is not None else None
    return gen.file_size


async def _video_source(request: web.Request) -> bytes | Path | web.Response:
    """What a download serves: the MP4's bytes or file, or the error answer (404, 500)."""
    state = request.app[STATE_KEY]
    gen = state.files.get(request.match_info["file_id"])
    # Like a CDN: nothing to serve until the generation is completed.
    if gen is None or state.status_of(gen) != "completed":
        return envelope(request, 404, "Not Found")
    if state.config.render == "off":
        data = state.tiny_video
    else:
        if not gen.rendered:
            # Lazy mode (or a render still running): wait for it; shielded so that a client giving
            # up does not cancel a render other downloads will need.
            await asyncio.shield(start_render(state, gen))
        if gen.render_error:
            return envelope(request, 500, "Internal Server Error")
        if gen.video_path is not None:
            return gen.video_path
        data = gen.video
    assert data is not None
    return data


async def video(request: web.Request) -> web.StreamResponse:
    """``GET /files/<uuid>/output.mp4``: the generation's MP4 once it is completed, else 404."""
    source = await _video_source(request)
    if isinstance(source, web.Response):
        return source
    if isinstance(source, Path):
        return web.FileResponse(source, headers={"Content-Type": "video/mp4"})
    return web.Response(body=source, content_type="video/mp4")


async def truncated_video(request: web.Request) -> web.StreamResponse:
    """The ``truncate`` fault: announce the whole MP4, send its first half, close the connection.

    The client gets the status line and headers (``Content-Length`` of the full file), then
    ``len // 2`` bytes of the body, then the end of the connection: a short read, as when a CDN
    stream breaks. Error answers (not completed, render failed) and ``HEAD`` go out as usual.
    """
    source = await _video_source(request)
    if isinstance(source, web.Response):
        return source
    if isinstance(source, Path):
        state = request.app[STATE_KEY]
        source = await asyncio.get_running_loop().run_in_executor(state.executor, source.read_bytes)
    if request.method == "HEAD":
        return web.Response(body=source, content_type="video/mp4")
    resp = web.StreamResponse(status=200, headers={"Content-Type": "video/mp4"})
    resp.content_length = len(source)
    stamp_headers(request, resp)
    await resp.prepare(request)
    await resp.write(source[: len(source) // 2])
    # Closing (not aborting) the transport flushes what was written, then ends the connection.
    request.protocol.force_close()
    transport = request.transport
    if transport is not None:
        transport.close()
    return resp
