"""The emulator's aiohttp application: its routes and their handlers.

* create (``POST /v2/video/generations`` or the legacy ``POST /v2/generate/video/kling/generation``)
  checks the bearer key, the rate limit, validates the body like the vendor schema plus the
  documented image-count rule (:mod:`klingfx_emulator.validation`), charges the optional credit
  budget and answers ``{"id", "status": "queued", "meta": {"usage": ...}}`` (200; 201 on the legacy
  path) with ``x-inference-id`` and the cost headers;
* fetch (``GET`` on the same paths with ``?generation_id=``) computes the status lazily from the
  injected clock (:meth:`~klingfx_emulator.state.EmulatorState.status_of`);
* the video under ``/files/<uuid>/output.mp4`` (:mod:`klingfx_emulator.videos`), sample photos under
  ``/samples/``, ``/health``, and the admin endpoints under ``/_emulator/`` (stats, one
  generation, faults, outages, reset), which need no key.

Faults, outages and the request record are the middleware's (:mod:`klingfx_emulator.faults`).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import importlib.util
import json
import math
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

from aiohttp import ClientSession, ClientTimeout, web

from airflow_provider_klingfx.domain import DURATIONS, PRO_EFFECTS_MODEL, TWO_PERSON_SCENES, redact_url
from klingfx_emulator.answers import CLIENT_ID, CREATED, create_answer, envelope, error_object, usage
from klingfx_emulator.config import API_PATHS, EmulatorConfig, FaultRule
from klingfx_emulator.faults import drop_connection, is_stale, middleware
from klingfx_emulator.state import REFUSE_UNSUPPORTED, STATE_KEY, EmulatorState, GenerationRecord
from klingfx_emulator.validation import Problem, check_create_body, data_uri_problems, is_data_uri
from klingfx_emulator.videos import served_size, start_prepare, start_render, video

# An id this emulator could have issued. The vendor's tracing page: on a poll, ``x-inference-id``
# is the id polled with, left out when it does not look like an id the API could have issued.
_GENERATION_ID_RE = re.compile(
    r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}:kling-video/v1\.6/(?:standard|pro)/effects$"
)
#: The largest request body the API routes read (aiohttp's default is 1 MiB): room for two photos
#: as ``data:`` URIs even past the 10 MB limit (base64 adds a third), so that an over-size photo is
#: answered by the size rule rather than a 413.
MAX_BODY_BYTES = 64 * 1024 * 1024


def _bearer_token(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def _authorized(request: web.Request, api_key: str) -> bool:
    token = _bearer_token(request)
    # Constant-time comparison: the emulator may listen beyond localhost in someone's setup.
    return token is not None and hmac.compare_digest(token.encode(), api_key.encode())


def _rate_limited(request: web.Request) -> web.Response | None:
    """The 429 answer if the (authorized) key is over ``rate_limit``, else None (a token is taken)."""
    state = request.app[STATE_KEY]
    config = state.config
    # Read at each request, so tests may change it on a running emulator; bypassing the config's
    # validation that way, 0 (or less) means no limit, like None.
    if config.rate_limit is None or config.rate_limit <= 0:
        return None
    wait = state.take_token(cast("str", _bearer_token(request)))
    if wait is None:
        return None
    state.rate_limited += 1
    headers = {"Retry-After": str(max(1, math.ceil(wait)))} if config.rate_limit_retry_after else None
    return envelope(request, 429, "Too Many Requests", headers=headers)


async def _create(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    config = state.config
    if not _authorized(request, config.api_key):
        return envelope(request, 401, "Unauthorized")
    limited = _rate_limited(request)
    if limited is not None:
        return limited
    raw = await request.read()
    if is_stale(request):  # reset while the body came in: this create belongs to the world before
        return drop_connection(request)
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        text = raw[:800].decode("utf-8", "replace")[:200]  # not the whole of a 64 MB body
        return envelope(
            request,
            400,
            "Body validation error!",
            problems=[Problem("", "body is not valid JSON", ("body",), text)],
        )
    valid, problems = check_create_body(body)
    if valid is None:
        return envelope(request, 400, "Body validation error!", problems=problems)
    as_list = isinstance(body["image_url"], list)
    data_photos, problems = data_uri_problems(valid["image_urls"], as_list, config.accept_data_uris)
    if problems:
        return envelope(request, 422, "Body validation error!", problems=problems)
    duration: int = valid["duration"]
    cost = config.credits_per_generation * duration // DURATIONS[0]
    if state.credits_remaining is not None:
        if cost > state.credits_remaining:
            return envelope(request, 403, "Insufficient credits: top up your AI/ML API balance")
        state.credits_remaining -= cost
    state.credits_spent += cost
    state.submissions += 1

    tier = "pro" if valid["model"] == PRO_EFFECTS_MODEL else "standard"
    gen_id = f"{uuid.uuid4()}:kling-video/v1.6/{tier}/effects"
    generating = config.generating_seconds
    if config.generating_seconds_max is not None:
        generating = state.random.uniform(config.generating_seconds, config.generating_seconds_max)
    now = state.clock()
    scene: str = valid["effect_scene"]
    # data: URIs are kept as redact_url shows them (their bytes go in data_photos): neither the
    # state nor a repr holds them, and the face rule does not look for "noface" in base64 (about
    # one 10 MB photo in a hundred would contain the word, case aside, by chance).
    urls = tuple(redact_url(u) if is_data_uri(u) else u for u in valid["image_urls"])
    gen = GenerationRecord(
        id=gen_id,
        file_id=str(uuid.uuid4()),
        model=valid["model"],
        effect_scene=scene,
        image_urls=urls,
        duration=duration,
        credits=cost,
        submitted_at=now,
        queued_until=now + config.queued_seconds,
        ready_at=now + config.queued_seconds + generating,
        fails=scene in TWO_PERSON_SCENES and any("noface" in u.lower() for u in urls),
        client_request_id=request.get(CLIENT_ID),
        image_url_list=as_list,
        image_sha256=[
            hashlib.sha256(data_photos[i]).hexdigest() if i in data_photos else None for i in range(len(urls))
        ],
    )
    state.generations[gen_id] = gen
    state.files[gen.file_id] = gen
    request[CREATED] = gen
    # render="off" downloads (and so checks) nothing: the photos given inline are not kept either.
    if config.render != "off" and not gen.fails:
        gen.data_photos = data_photos
        if config.render == "eager":
            start_render(state, gen)
        elif config.check_images:
            start_prepare(state, gen)
    return create_answer(request, gen)


async def _fetch(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    config = state.config
    gen_id = request.query.get("generation_id", "").strip()
    # x-inference-id on a poll is the id polled with, when it is one the API could have issued.
    headers: dict[str, str] = {}
    if gen_id and (gen_id in state.generations or _GENERATION_ID_RE.match(gen_id)):
        headers["x-inference-id"] = gen_id
    if not _authorized(request, config.api_key):
        return envelope(request, 401, "Unauthorized", headers=headers)
    # Like a gateway's 429: before the API looks at the request, so without x-inference-id.
    limited = _rate_limited(request)
    if limited is not None:
        return limited
    if not gen_id:
        return envelope(
            request,
            400,
            "Query validation error!",
            problems=[
                Problem(
                    "generation_id",
                    "generation_id is required",
                    ("query", "generation_id"),
                    request.query.get("generation_id"),
                )
            ],
        )
    gen = state.generations.get(gen_id)
    if gen is None:
        return envelope(request, 404, "Generation not found", headers=headers)
    status = state.status_of(gen)
    answer: dict[str, Any] = {
        "id": gen.id,
        "status": config.wire_status(status),
        "video": None,
        "error": None,
        "meta": None,
    }
    if status == "completed":
        # The URL is built from the origin the client used, so it works behind port mappings.
        answer["video"] = {
            "url": f"{request.scheme}://{request.host}/files/{gen.file_id}/output.mp4",
            "content_type": "video/mp4",
            "file_name": "output.mp4",
            "file_size": served_size(state, gen),
        }
        if config.reports_usage("fetch"):
            answer["meta"], cost_headers = usage(config, gen.credits)
            headers.update(cost_headers)
    elif status == "error":
        answer["error"] = error_object(config.error_shape, gen)
    return web.json_response(answer, headers=headers)


async def _sample(request: web.Request) -> web.Response:
    from klingfx_emulator.render import SAMPLE_NAMES, sample_image_png

    state = request.app[STATE_KEY]
    name = request.match_info["name"]
    if name not in SAMPLE_NAMES:
        return envelope(request, 404, "Not Found")
    data = state.samples.get(name)
    if data is None:
        data = await asyncio.get_running_loop().run_in_executor(state.executor, sample_image_png, name)
        state.samples[name] = data
    return web.Response(body=data, content_type="image/png", headers={"Cache-Control": "max-age=3600"})


async def _health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def _stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE_KEY].stats())


async def _generation(request: web.Request) -> web.Response:
    """``GET /_emulator/generation?generation_id=``: what the emulator did with one generation."""
    state = request.app[STATE_KEY]
    gen = state.generations.get(request.query.get("generation_id", "").strip())
    if gen is None:
        return envelope(request, 404, "Generation not found")
    return web.json_response(gen.describe(state.status_of(gen)))


async def _set_faults(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    try:
        body = json.loads(await request.read())
        raw = body["rules"] if isinstance(body, dict) else None
        if not isinstance(raw, list):
            raise ValueError('expected {"rules": [...]}')
        rules = [FaultRule.from_dict(r) for r in raw]
    except (ValueError, KeyError, UnicodeDecodeError) as exc:
        return envelope(
            request, 400, "Body validation error!", problems=[Problem("rules", str(exc), ("body", "rules"))]
        )
    state.set_faults(rules)
    return web.json_response({"rules": [r.to_dict() for r in rules]})


async def _set_outage(request: web.Request) -> web.Response:
    """``POST /_emulator/outage`` ``{"start_in", "duration"[, "mode"]}``: schedule a window."""
    state = request.app[STATE_KEY]
    try:
        body = json.loads(await request.read())
        if (
            not isinstance(body, dict)
            or "duration" not in body
            or set(body) - {"start_in", "duration", "mode"}
        ):
            raise ValueError('expected {"start_in": seconds, "duration": seconds, "mode": "503" or "refuse"}')
        window = state.schedule_outage(body.get("start_in", 0), body["duration"], body.get("mode", "503"))
    except (ValueError, UnicodeDecodeError) as exc:
        return envelope(request, 400, "Body validation error!", problems=[Problem("", str(exc), ("body",))])
    return web.json_response(window.to_dict())


async def _reset(request: web.Request) -> web.Response:
    request.app[STATE_KEY].reset()
    return web.json_response({"reset": True})


async def _stop_listener(app: web.Application) -> None:
    # The refuse-outage timer and the sites it may have reopened (start_site's servers only).
    listener = app[STATE_KEY].listener
    if listener is not None:
        await listener.close()


def _check_extras() -> None:
    missing = [m for m in ("av", "PIL") if importlib.util.find_spec(m) is None]
    if missing:
        raise RuntimeError(
            f"the emulator needs {' and '.join(missing)} to render videos and sample images: "
            "pip install 'av>=12' 'pillow>=10' (dependencies of klingfx-emulator)"
        )


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    """Create the executor, the HTTP client and (render off) the fixed video; tear them down."""
    state = app[STATE_KEY]
    # start_site() attached the listener before this runs; any other server can't refuse.
    if state.listener is None and any(o.mode == "refuse" for o in state.config.outages):
        raise RuntimeError(REFUSE_UNSUPPORTED)
    state.executor = ThreadPoolExecutor(
        max_workers=state.config.render_concurrency + 1, thread_name_prefix="klingfx-emulator-render"
    )
    state.http = ClientSession(timeout=ClientTimeout(total=state.config.image_timeout))
    if state.config.video_dir is not None:
        video_dir = Path(state.config.video_dir)
        await asyncio.get_running_loop().run_in_executor(
            state.executor, lambda: video_dir.mkdir(parents=True, exist_ok=True)
        )
    if state.config.render == "off":
        from klingfx_emulator.render import render_tiny_video

        state.tiny_video = await asyncio.get_running_loop().run_in_executor(state.executor, render_tiny_video)
    try:
        yield
    finally:
        tasks = list(state.pending_renders)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await state.http.close()
        state.executor.shutdown(wait=False, cancel_futures=True)


def create_app(
    config: EmulatorConfig | None = None, *, clock: Callable[[], float] = time.monotonic
) -> web.Application:
    """Build the emulator's aiohttp application.

    :param config: the behaviour; default :class:`EmulatorConfig()`.
    :param clock: a monotonic clock in seconds driving the state machine; tests pass a fake one
        they advance by hand, so they never sleep for state changes.
    :raises RuntimeError: if PyAV or Pillow is not installed.
    """
    config = config or EmulatorConfig()
    _check_extras()
    app = web.Application(middlewares=[middleware], client_max_size=MAX_BODY_BYTES)
    app[STATE_KEY] = EmulatorState(config, clock)
    for path in API_PATHS:
        app.router.add_post(path, _create)
        app.router.add_get(path, _fetch)
    app.router.add_get("/files/{file_id}/output.mp4", video, name="video")
    app.router.add_get("/samples/{name}", _sample)
    app.router.add_get("/health", _health)
    app.router.add_get("/_emulator/stats", _stats)
    app.router.add_get("/_emulator/generation", _generation)
    app.router.add_post("/_emulator/faults", _set_faults)
    app.router.add_post("/_emulator/reset", _reset)
    app.router.add_post("/_emulator/outage", _set_outage)
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_stop_listener)
    return app
