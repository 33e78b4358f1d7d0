"""How the emulator answers: the error bodies, a create's answer, usage and the failed-generation error.

Every HTTP error goes through :func:`envelope`, in the configured ``error_body`` shape: the vendor's
documented ``{message, path, requestId, statusCode, timestamp}`` or the one seen live ``{title,
status, message, instance, requestId, timestamp, error: {name, message}}``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from aiohttp import web

from klingfx_emulator.config import LEGACY_API_PATH, EmulatorConfig, ErrorShape
from klingfx_emulator.state import STATE_KEY, GenerationRecord

if TYPE_CHECKING:
    from klingfx_emulator.validation import Problem

# Typed request-storage keys where aiohttp has them (3.12+: plain strings there warn); plain
# strings on older versions.
_RequestKey: Any = getattr(web, "RequestKey", None)
REQUEST_ID: Any = _RequestKey("klingfx_request_id", str) if _RequestKey else "klingfx_request_id"
CLIENT_ID: Any = (
    _RequestKey("klingfx_client_request_id", object) if _RequestKey else "klingfx_client_request_id"
)
# The generation a create made, for the fault actions that rewrite the create's answer.
CREATED: Any = _RequestKey("klingfx_created", object) if _RequestKey else "klingfx_created"
# The state's reset count when the request arrived (EmulatorState.resets): a request in flight
# across a reset must leave the new state alone.
RESETS: Any = _RequestKey("klingfx_resets", int) if _RequestKey else "klingfx_resets"


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# The vendor's server (NestJS) names statuses as RFC 7231 did; Python 3.13 renamed these two after
# RFC 9110 ("Content Too Large", "Unprocessable Content"), so the emulator must not take Python's.
_VENDOR_PHRASES = {413: "Payload Too Large", 422: "Unprocessable Entity"}


def _exception_name(status: int) -> str:
    # The live body names the server's exception class after the reason phrase, NestJS style:
    # 400 BadRequestException, 404 NotFoundException, 422 UnprocessableEntityException...
    phrase = reason(status)
    if phrase == "Error":
        return "HttpException"
    return re.sub(r"[^A-Za-z0-9]", "", phrase.title()) + "Exception"


def envelope(
    request: web.Request,
    status: int,
    message: str,
    *,
    problems: Sequence[Problem] | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """An HTTP error answer in the configured ``error_body`` shape (every error goes through here).

    ``documented``: ``{message, path, requestId, statusCode, timestamp}`` plus ``errors: [{path,
    message}]`` when there are problems. ``live``: ``{title, status, message, instance, requestId,
    timestamp, error: {name, message}}`` plus ``detail: [{loc, msg, type, input}]``.
    """
    request_id = request[REQUEST_ID]
    if problems is not None:
        problems = [p.scrubbed() for p in problems]
    body: dict[str, Any]
    if request.app[STATE_KEY].config.error_body == "live":
        body = {
            "title": reason(status),
            "status": status,
            "message": message,
            "instance": request.path,
            "requestId": request_id,
            "timestamp": _now_iso(),
            "error": {"name": _exception_name(status), "message": message},
        }
        if problems is not None:
            body["detail"] = [
                {"loc": list(p.loc), "msg": p.message, "type": "value_error", "input": p.input}
                for p in problems
            ]
    else:
        body = {
            "message": message,
            "path": request.path,
            "requestId": request_id,
            "statusCode": status,
            "timestamp": _now_iso(),
        }
        if problems is not None:
            body["errors"] = [{"path": p.path, "message": p.message} for p in problems]
    return web.json_response(body, status=status, headers=headers)


def stamp_headers(request: web.Request, resp: web.StreamResponse) -> None:
    """The headers every answer carries: ``x-request-id`` and the valid client id, echoed."""
    resp.headers["x-request-id"] = request[REQUEST_ID]
    client_id = request.get(CLIENT_ID)
    if client_id is not None:
        resp.headers["X-Client-Request-Id"] = client_id


def reason(status: int) -> str:
    """The reason phrase of an HTTP status as the vendor words it (``Error`` for a status Python
    does not name)."""
    if status in _VENDOR_PHRASES:
        return _VENDOR_PHRASES[status]
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def usage(config: EmulatorConfig, credits: int) -> tuple[dict[str, Any], dict[str, str]]:
    """``meta`` and the cost headers for ``credits`` (an integer count, as the vendor reports it)."""
    usd = round(credits * config.usd_per_credit, 9)
    meta = {"usage": {config.usage_field: credits, "usd_spent": usd}}
    headers = {"x-aimlapi-credits-used": str(credits), "x-aimlapi-usd-spent": f"{usd:.9f}"}
    return meta, headers


def create_answer(
    request: web.Request, gen: GenerationRecord, *, id_in_body: bool = True, trace_header: bool = True
) -> web.Response:
    """A create's 2xx answer: 200 on the universal path, 201 on the legacy one (the vendor's docs).

    :param id_in_body: ``{"id", "status"[, "meta"]}``; else only ``{"status"}`` (the id-less faults).
    :param trace_header: send ``x-inference-id`` (the generation id).
    """
    config = request.app[STATE_KEY].config
    status = config.wire_status(request.app[STATE_KEY].status_of(gen))
    answer: dict[str, Any] = {"id": gen.id, "status": status} if id_in_body else {"status": status}
    headers: dict[str, str] = {"x-inference-id": gen.id} if trace_header else {}
    if config.reports_usage("create"):
        meta, cost_headers = usage(config, gen.credits)
        if id_in_body:
            answer["meta"] = meta
        headers.update(cost_headers)
    code = 201 if request.path == LEGACY_API_PATH else 200
    return web.json_response(answer, status=code, headers=headers)


def error_object(shape: ErrorShape, gen: GenerationRecord) -> dict[str, Any]:
    """The ``error`` member of a failed generation's fetch answer.

    A photo that broke one of Kling's limits, then a failed render, then the face rule (which wins
    over both: it is decided at submission).

    :param shape: the configured ``error_shape``.
    :param gen: the failed generation.
    """
    problem = gen.image_error
    if problem is not None and not gen.fails:
        if shape == "name_message":
            return {"name": "ImageValidationError", "message": problem.message}
        loc: list[str | int] = ["body", "image_url"]
        if gen.image_url_list:
            loc.append(problem.index)
        return {
            "detail": [
                {"loc": loc, "msg": problem.message, "type": "image_validation_error", "input": problem.shown}
            ]
        }
    if gen.render_error and not gen.fails:
        return {"name": "RenderError", "message": gen.render_error}
    if shape == "name_message":
        return {"name": "FaceDetectionError", "message": "Could not detect face in the image"}
    culprit = next((u for u in gen.image_urls if "noface" in u.lower()), gen.image_urls[0])
    return {
        "detail": [
            {
                "loc": ["body", "image_url"],
                "msg": "Could not detect face in the image",
                "type": "face_detection_error",
                "input": culprit,
            }
        ]
    }
