"""What a create request must look like, as the vendor checks it, and how ``data:`` URIs are shown.

:func:`validate_create_body` is the vendor schema's ``oneOf`` plus Kling's image-count rule (hug,
kiss, heart_gesture: exactly 2 photos; every other scene: 1), with the scenes, models and durations
taken from :mod:`airflow_provider_klingfx.domain`, the provider's own rules: one implementation of
them, shared on purpose. A ``data:`` URI is a photo (personal data, megabytes long): it is never
echoed, only shown as :func:`~airflow_provider_klingfx.domain.redact_url` shows it (media type and
length), in answers, logs and the admin endpoints alike.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

from airflow_provider_klingfx.domain import DURATIONS, EFFECT_SCENES, MODELS, image_count_range, redact_url

# RFC 3986 "URI" as the schema's ``format: uri`` means it: an absolute URI (scheme ":" ...), with
# no characters that must be percent-encoded (spaces, quotes, angle brackets...) and well-formed
# percent escapes. Deliberately not limited to http(s): that is what the schema says.
# The same language as ``scheme:(?:<char>|%XX)*``, written so that a 15 MB data: URI takes tens of
# milliseconds, not seconds (one alternation per character), whether it matches or not: runs of
# characters between escapes, each run atomic (the lookahead-and-backreference idiom, as Python
# 3.10 has no possessive quantifiers), so a failed match does not backtrack through them.
_URI_CHAR = r"[A-Za-z0-9\-._~!$&'()*+,;=:@/?#\[\]]"
_URI_RE = re.compile(
    rf"^[A-Za-z][A-Za-z0-9+.\-]*:(?=({_URI_CHAR}*))\1(?:%[0-9A-Fa-f]{{2}}(?=({_URI_CHAR}*))\2)*$"
)
_SCENE_SET = frozenset(EFFECT_SCENES)
# redact_url has shown already ("data:image/png;base64,… (123 chars)"): its length must stay.
_DATA_URI_IN_TEXT = re.compile(r"(?i)\bdata:(?![^\s'\"<>,]*,…)[^\s'\"<>]+")
# A data: URI as redact_url shows it (a real one can't contain "…": it is not a URI character).
_SHOWN_DATA_URI = re.compile(r"(?i)data:[^,]*,… \(\d+ chars\)")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a request, for both error body shapes.

    :param path: where, as the documented ``errors[].path`` says it (``image_url[1]``; ``""``: the body).
    :param message: what is wrong (``errors[].message``; ``detail[].msg``).
    :param loc: where, as the live ``detail[].loc`` says it (``("body", "image_url", 1)``).
    :param input: the offending value as sent (``None`` when it is missing).
    """

    path: str
    message: str
    loc: tuple[str | int, ...]
    input: Any = None

    def scrubbed(self) -> Problem:
        """This problem with every ``data:`` URI in its message and input shown by ``redact_url``."""
        return Problem(self.path, _scrub_text(self.message), self.loc, _scrub_value(self.input))


def show_url(url: str) -> str:
    """``redact_url(url)``, except for a data: URI ``redact_url`` has shown already (kept as it is)."""
    return url if _SHOWN_DATA_URI.fullmatch(url) else redact_url(url)


def _scrub_text(text: str) -> str:
    # A data: URI is a photo (personal data, megabytes long): never echoed, only described.
    return _DATA_URI_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)


def _scrub_value(value: Any) -> Any:
    """``value`` with every string in it that is (or contains) a ``data:`` URI shown by ``redact_url``."""
    if isinstance(value, str):
        return show_url(value) if is_data_uri(value) else _scrub_text(value)
    if isinstance(value, list):
        return [_scrub_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _scrub_value(v) for k, v in value.items()}
    return value


def is_data_uri(url: str) -> bool:
    """Whether ``url`` is a ``data:`` URI (any case, leading blanks ignored)."""
    return url.lstrip()[:5].lower() == "data:"


def _decode_data_uri(url: str) -> bytes | None:
    """The bytes of a ``data:image/<type>[;param...];base64,<data>`` URI; None if it is not one."""
    head, comma, payload = url.strip().partition(",")
    if not comma:
        return None
    media_type, *params = head[5:].split(";")
    if not media_type.strip().lower().startswith("image/") or not params or params[-1].lower() != "base64":
        return None
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        return None


def data_uri_problems(
    urls: Sequence[str], as_list: bool, accept: bool
) -> tuple[dict[int, bytes], list[Problem]]:
    """Decode the ``data:`` URIs among ``urls`` (``accept_data_uris``); 422 problems if refused or malformed.

    :returns: ``({0-based position: bytes}, [])`` or ``({}, problems)``.
    """
    photos: dict[int, bytes] = {}
    problems: list[Problem] = []
    for i, url in enumerate(urls):
        if not is_data_uri(url):
            continue
        path = f"image_url[{i}]" if as_list else "image_url"
        loc: tuple[str | int, ...] = ("body", "image_url", i) if as_list else ("body", "image_url")
        if not accept:
            message = (
                f"{path} is a data URI; data URIs are not accepted (emulator switch accept_data_uris is "
                "off): give an http(s) URL the API can download"
            )
            problems.append(Problem(path, message, loc, redact_url(url)))
            continue
        data = _decode_data_uri(url)
        if data is None:
            message = f"{path} is not a valid data URI: expected data:image/<type>;base64,<base64 data>"
            problems.append(Problem(path, message, loc, redact_url(url)))
        else:
            photos[i] = data
    return ({}, problems) if problems else (photos, [])


def validate_create_body(body: object) -> tuple[dict[str, Any] | None, list[dict[str, str]]]:
    """Validate a create body like the vendor: the schema's ``oneOf`` plus the image-count rule.

    Unknown extra properties are ignored, as the schema allows them.

    :param body: the decoded JSON body.
    :returns: ``(normalized, [])`` with keys model, effect_scene, image_urls (tuple), duration; or
        ``(None, errors)`` with errors as ``{"path", "message"}``.
    """
    valid, problems = check_create_body(body)
    return valid, [{"path": p.path, "message": _scrub_text(p.message)} for p in problems]


def check_create_body(body: object) -> tuple[dict[str, Any] | None, list[Problem]]:
    """:func:`validate_create_body` with the offending values kept for the live error body."""
    if not isinstance(body, dict):
        return None, [Problem("", f"body must be a JSON object, got {type(body).__name__}", ("body",), body)]
    errors: list[Problem] = []

    model = body.get("model")
    if "model" not in body:
        errors.append(Problem("model", "model is required", ("body", "model")))
    elif not isinstance(model, str) or model not in MODELS:
        errors.append(
            Problem("model", f"model must be one of {list(MODELS)}, got {model!r}", ("body", "model"), model)
        )

    scene = body.get("effect_scene")
    if "effect_scene" not in body:
        errors.append(Problem("effect_scene", "effect_scene is required", ("body", "effect_scene")))
    elif not isinstance(scene, str) or scene not in _SCENE_SET:
        hint = ""
        if isinstance(scene, str):
            close = difflib.get_close_matches(scene, EFFECT_SCENES, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
        errors.append(
            Problem(
                "effect_scene",
                f"effect_scene must be one of the {len(EFFECT_SCENES)} effect scenes, got {scene!r}{hint}",
                ("body", "effect_scene"),
                scene,
            )
        )

    urls: list[str] | None = None
    raw_urls = body.get("image_url")
    if "image_url" not in body:
        errors.append(Problem("image_url", "image_url is required", ("body", "image_url")))
    elif isinstance(raw_urls, str):
        if _URI_RE.match(raw_urls):
            urls = [raw_urls]
        else:
            errors.append(
                Problem(
                    "image_url",
                    f"image_url must be a URI, got {raw_urls[:200]!r}",
                    ("body", "image_url"),
                    raw_urls,
                )
            )
    elif isinstance(raw_urls, list):
        bad = False
        for i, item in enumerate(raw_urls):
            if not isinstance(item, str) or not _URI_RE.match(item):
                shown = item[:200] if isinstance(item, str) else item
                errors.append(
                    Problem(
                        f"image_url[{i}]",
                        f"image_url[{i}] must be a URI, got {shown!r}",
                        ("body", "image_url", i),
                        item,
                    )
                )
                bad = True
        urls = None if bad else list(raw_urls)
    else:
        errors.append(
            Problem(
                "image_url",
                f"image_url must be a URI or an array of URIs, got {type(raw_urls).__name__}",
                ("body", "image_url"),
                raw_urls,
            )
        )

    duration = body.get("duration", DURATIONS[0])
    # JSON booleans and floats are not integers for the schema, though Python would compare them.
    if isinstance(duration, bool) or not isinstance(duration, int) or duration not in DURATIONS:
        errors.append(
            Problem(
                "duration",
                f"duration must be one of {list(DURATIONS)} (seconds), got {duration!r}",
                ("body", "duration"),
                duration,
            )
        )

    if urls is not None and isinstance(scene, str) and scene in _SCENE_SET:
        low, high = image_count_range(scene)
        if not low <= len(urls) <= high:
            want = f"exactly {low}" if low == high else f"{low} or {high}"
            errors.append(
                Problem(
                    "image_url",
                    f"effect_scene {scene!r} takes {want} image URL{'s' if high > 1 else ''}, "
                    f"got {len(urls)}",
                    ("body", "image_url"),
                    raw_urls,
                )
            )
    if errors:
        return None, errors
    return {
        "model": model,
        "effect_scene": scene,
        "image_urls": tuple(cast("list[str]", urls)),
        "duration": duration,
    }, []
