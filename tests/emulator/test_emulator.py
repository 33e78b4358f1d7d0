"""Tests of the AI/ML API emulator, over real HTTP on 127.0.0.1 (no mocks).

State transitions use an injected fake clock; the only waits are for real renders to finish.
"""

from __future__ import annotations

import asyncio
import copy
import io
import json
import logging
import re
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import av
import jsonschema
import pytest
import yarl
from PIL import Image

from airflow_provider_klingfx.domain import EFFECT_SCENES, TWO_PERSON_SCENES
from klingfx_emulator import (
    EmulatorConfig,
    FaultRule,
    RunningEmulator,
    run_emulator_in_thread,
    validate_create_body,
)
from klingfx_emulator.cli import build_parser, config_from_args, iter_fault_rules, main
from klingfx_emulator.render import PLACEHOLDER_BACKGROUND, SAMPLE_NAMES
from tests.conftest import configured
from tests.emulator.helpers import (
    API_KEY,
    AUTH,
    CREATE_PATH,
    LEGACY_PATH,
    REPO_ROOT,
    STANDARD,
    Emu,
    MakeEmu,
    assert_cli_rejects,
    cli_help_text,
    start_cli,
)

PRO = "klingai/kling-video-v1.6-pro-effects"
# The vendor's contract, copied into the repo (tests/contract/README.md says from where).
OPENAPI_PATH = REPO_ROOT / "tests" / "contract" / "kling-v1.6-effects.openapi.json"


def _openapi_to_jsonschema(node: Any) -> Any:
    """OpenAPI 3.0 ``nullable: true`` becomes a JSON Schema type union with ``null``."""
    if isinstance(node, dict):
        out = {k: _openapi_to_jsonschema(v) for k, v in node.items() if k != "nullable"}
        if node.get("nullable") is True and isinstance(node.get("type"), str):
            out["type"] = [node["type"], "null"]
        return out
    if isinstance(node, list):
        return [_openapi_to_jsonschema(v) for v in node]
    return node


# An independent reading of RFC 3986 for `format: uri`: a scheme, a colon, and no character that
# must be percent-encoded. (jsonschema checks "uri" only with optional packages installed.)
_URI_SHAPE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:[^\s<>\"{}|\\^`]*")


def _format_checker() -> jsonschema.FormatChecker:
    checker = jsonschema.FormatChecker()

    @checker.checks("uri")
    def is_uri(value: object) -> bool:
        return not isinstance(value, str) or _URI_SHAPE.fullmatch(value) is not None

    return checker


@dataclass
class VendorSchemas:
    """Validators for the vendor's create request and fetch response (OpenAPI 3.0 ~ draft 4)."""

    create_request: jsonschema.Draft4Validator
    fetch_response: jsonschema.Draft4Validator


@pytest.fixture(scope="session")
def vendor_schemas() -> VendorSchemas:
    doc = json.loads(OPENAPI_PATH.read_text())
    path = doc["paths"]["/v2/video/generations"]
    create = path["post"]["requestBody"]["content"]["application/json"]["schema"]
    fetch = path["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    checker = _format_checker()
    return VendorSchemas(
        create_request=jsonschema.Draft4Validator(
            _openapi_to_jsonschema(copy.deepcopy(create)), format_checker=checker
        ),
        fetch_response=jsonschema.Draft4Validator(
            _openapi_to_jsonschema(copy.deepcopy(fetch)), format_checker=checker
        ),
    )


IMG = "https://example.com/photos/alice.jpg"
IMG2 = "https://example.com/photos/bob.png"


def _assert_envelope(body: dict[str, Any], status: int, path: str, resp: aiohttp.ClientResponse) -> None:
    assert body["statusCode"] == status
    assert body["path"] == path
    assert isinstance(body["message"], str)
    assert body["message"]
    assert body["requestId"] == resp.headers["x-request-id"]
    assert body["timestamp"].endswith("Z")
    assert "T" in body["timestamp"]


def _decode(data: bytes) -> tuple[float, list[Image.Image], str]:
    """Decode an MP4: (duration in seconds, frames as images, codec name)."""
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.video[0]
        frames = [f.to_image() for f in container.decode(video=0)]
        assert container.duration is not None
        return container.duration / av.time_base, frames, stream.codec_context.name


def _mean(img: Image.Image, box: tuple[int, int, int, int]) -> tuple[float, float, float]:
    # Box-resampling a region to one pixel averages it.
    r, g, b = img.convert("RGB").resize((1, 1), Image.Resampling.BOX, box=box).getpixel((0, 0))  # type: ignore[misc]
    return float(r), float(g), float(b)


def _refused_url() -> str:
    # A port that was free a moment ago: connecting to it is refused at once.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/gone.png"


async def _complete(emu: Emu, gen_id: str) -> dict[str, Any]:
    emu.clock.advance(3600)
    await emu.state.wait_for_renders()
    answer = await emu.fetch_json(gen_id)
    assert answer["status"] == "completed", answer
    return answer


# ---------------------------------------------------------------------------------------------
# Auth and envelopes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [CREATE_PATH, LEGACY_PATH])
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": API_KEY}])
async def test_auth_is_required_with_401_envelope(emu: Emu, path: str, headers: dict[str, str]) -> None:
    for resp in (
        await emu.client.post(path, json=emu.body(), headers=headers),
        await emu.client.get(path, params={"generation_id": "x"}, headers=headers),
    ):
        assert resp.status == 401
        body = await resp.json()
        _assert_envelope(body, 401, path, resp)
        assert body["message"] == "Unauthorized"
        assert set(body) == {"message", "path", "requestId", "statusCode", "timestamp"}
    assert emu.state.submissions == 0


async def test_unknown_route_and_method_get_envelopes(emu: Emu) -> None:
    resp = await emu.client.get("/v3/nothing", headers=AUTH)
    assert resp.status == 404
    _assert_envelope(await resp.json(), 404, "/v3/nothing", resp)
    resp = await emu.client.delete(CREATE_PATH, headers=AUTH)
    assert resp.status == 405
    _assert_envelope(await resp.json(), 405, CREATE_PATH, resp)


async def test_health(emu: Emu) -> None:
    resp = await emu.client.get("/health")
    assert resp.status == 200
    assert await resp.text() == "ok"
    assert resp.headers["x-request-id"]


# ---------------------------------------------------------------------------------------------
# Create: validation against the vendor schema
# ---------------------------------------------------------------------------------------------

# (body, schema accepts it, path of the emulator's first error or None if the emulator accepts it)
_BODIES: dict[str, tuple[Any, bool, str | None]] = {
    "standard-one-image": (
        {"model": STANDARD, "effect_scene": "magic_fireball", "image_url": IMG},
        True,
        None,
    ),
    "pro-duration-10": (
        {"model": PRO, "effect_scene": "squish", "image_url": IMG, "duration": 10},
        True,
        None,
    ),
    "hug-two-images": ({"model": STANDARD, "effect_scene": "hug", "image_url": [IMG, IMG2]}, True, None),
    "one-image-as-array": ({"model": STANDARD, "effect_scene": "expansion", "image_url": [IMG]}, True, None),
    # The vendor's schema allows two photos for any scene; Kling's rule (and the emulator) only three.
    "other-scene-two-images": (
        {"model": PRO, "effect_scene": "fight", "image_url": [IMG, IMG2]},
        True,
        "image_url",
    ),
    "apostrophe-scene": ({"model": STANDARD, "effect_scene": "let's_ride", "image_url": IMG}, True, None),
    "extra-properties-ignored": (
        {"model": STANDARD, "effect_scene": "kiss", "image_url": [IMG, IMG2], "prompt": "x", "seed": 3},
        True,
        None,
    ),
    "non-http-uri-per-schema": (
        {"model": STANDARD, "effect_scene": "pet_lion", "image_url": "s3://b/k.png"},
        True,
        None,
    ),
    "bad-model": (
        {"model": "klingai/kling-v2", "effect_scene": "hug", "image_url": [IMG, IMG2]},
        False,
        "model",
    ),
    "unknown-scene": ({"model": STANDARD, "effect_scene": "hugz", "image_url": IMG}, False, "effect_scene"),
    "duration-7": (
        {"model": STANDARD, "effect_scene": "squish", "image_url": IMG, "duration": 7},
        False,
        "duration",
    ),
    "duration-string": (
        {"model": STANDARD, "effect_scene": "squish", "image_url": IMG, "duration": "5"},
        False,
        "duration",
    ),
    "duration-float": (
        {"model": STANDARD, "effect_scene": "squish", "image_url": IMG, "duration": 5.0},
        False,
        "duration",
    ),
    "duration-null": (
        {"model": STANDARD, "effect_scene": "squish", "image_url": IMG, "duration": None},
        False,
        "duration",
    ),
    "image-not-uri": (
        {"model": STANDARD, "effect_scene": "squish", "image_url": "alice.jpg"},
        False,
        "image_url",
    ),
    "image-with-space": (
        {"model": STANDARD, "effect_scene": "squish", "image_url": "https://x.com/a b.png"},
        False,
        "image_url",
    ),
    "image-array-item-not-uri": (
        {"model": STANDARD, "effect_scene": "hug", "image_url": [IMG, "not a url"]},
        False,
        "image_url[1]",
    ),
    "image-number": ({"model": STANDARD, "effect_scene": "squish", "image_url": 42}, False, "image_url"),
    "missing-model": ({"effect_scene": "squish", "image_url": IMG}, False, "model"),
    "missing-scene": ({"model": STANDARD, "image_url": IMG}, False, "effect_scene"),
    "missing-image": ({"model": STANDARD, "effect_scene": "squish"}, False, "image_url"),
    "body-not-object": ([{"model": STANDARD}], False, ""),
    # The schema allows these; the documented image counts do not.
    "hug-one-image": ({"model": STANDARD, "effect_scene": "hug", "image_url": IMG}, True, "image_url"),
    "kiss-three-images": (
        {"model": STANDARD, "effect_scene": "kiss", "image_url": [IMG, IMG2, IMG]},
        True,
        "image_url",
    ),
    "squish-two-images": (
        {"model": STANDARD, "effect_scene": "squish", "image_url": [IMG, IMG2]},
        True,
        "image_url",
    ),
    "empty-image-array": (
        {"model": STANDARD, "effect_scene": "pet_lion", "image_url": []},
        True,
        "image_url",
    ),
}


@pytest.mark.parametrize(("body", "schema_ok", "error_path"), list(_BODIES.values()), ids=list(_BODIES))
async def test_create_validation_agrees_with_vendor_schema(
    emu: Emu, vendor_schemas: VendorSchemas, body: Any, schema_ok: bool, error_path: str | None
) -> None:
    assert vendor_schemas.create_request.is_valid(body) is schema_ok
    resp = await emu.create(body)
    answer = await resp.json()
    if error_path is None:
        assert resp.status == 200, answer
        vendor_schemas.fetch_response.validate(answer)  # the create answer has the same shape
        assert answer["status"] == "queued"
        tier = "pro" if body["model"] == PRO else "standard"
        assert answer["id"].endswith(f":kling-video/v1.6/{tier}/effects")
        assert emu.state.generations[answer["id"]].duration == body.get("duration", 5)
        credits = 120_000 * body.get("duration", 5) // 5
        assert answer["meta"] == {"usage": {"credits_used": credits, "usd_spent": credits / 2_000_000}}
    else:
        assert resp.status == 400
        _assert_envelope(answer, 400, CREATE_PATH, resp)
        assert answer["message"] == "Body validation error!"
        assert answer["errors"][0]["path"] == error_path
        assert all(e["message"] for e in answer["errors"])
        assert emu.state.submissions == 0


def test_every_scene_and_count_is_accepted_like_the_domain_says(vendor_schemas: VendorSchemas) -> None:
    for scene in EFFECT_SCENES:
        for count in (1, 2):
            body = {"model": STANDARD, "effect_scene": scene, "image_url": [IMG, IMG2][:count]}
            assert vendor_schemas.create_request.is_valid(body)
            valid, errors = validate_create_body(body)
            expected = count == 2 if scene in TWO_PERSON_SCENES else count == 1
            assert (valid is not None) is expected, (scene, count, errors)


async def test_non_json_body_is_a_400(emu: Emu) -> None:
    resp = await emu.client.post(
        CREATE_PATH, data=b"{not json", headers={**AUTH, "Content-Type": "application/json"}
    )
    assert resp.status == 400
    body = await resp.json()
    _assert_envelope(body, 400, CREATE_PATH, resp)
    assert body["message"] == "Body validation error!"
    assert body["errors"]


async def test_client_request_id_is_echoed_when_valid(emu: Emu) -> None:
    resp = await emu.create(emu.body(), headers={"X-Client-Request-Id": "dag.x:run_1:task-2:0:1"})
    assert resp.headers["X-Client-Request-Id"] == "dag.x:run_1:task-2:0:1"
    gen_id = (await resp.json())["id"]
    assert emu.state.generations[gen_id].client_request_id == "dag.x:run_1:task-2:0:1"
    resp = await emu.create(emu.body(), headers={"X-Client-Request-Id": "has space"})
    assert resp.status == 200
    assert "X-Client-Request-Id" not in resp.headers
    resp = await emu.fetch(gen_id, headers={"X-Client-Request-Id": "poll-1"})
    assert resp.headers["X-Client-Request-Id"] == "poll-1"
    records = (await emu.stats())["requests"]
    assert [r["client_request_id"] for r in records] == ["dag.x:run_1:task-2:0:1", None, "poll-1"]


# ---------------------------------------------------------------------------------------------
# Fetch and the state machine
# ---------------------------------------------------------------------------------------------


async def test_state_machine_to_completed_matches_fetch_schema(
    emu: Emu, vendor_schemas: VendorSchemas
) -> None:
    gen_id = await emu.submit(emu.body(duration=10))
    seen = []
    for step in (0.0, 0.5, 0.6, 2.0, 1.0):  # queued until 1.0 s, generating until 4.0 s
        emu.clock.advance(step)
        resp = await emu.fetch(gen_id)
        answer = await resp.json()
        vendor_schemas.fetch_response.validate(answer)
        assert answer["id"] == gen_id
        seen.append(answer["status"])
        if answer["status"] != "completed":
            assert answer["video"] is None
            assert answer["meta"] is None
            assert answer["error"] is None
            assert "x-aimlapi-credits-used" not in resp.headers
    assert seen == ["queued", "queued", "generating", "generating", "completed"]
    assert answer["error"] is None
    assert answer["meta"] == {"usage": {"credits_used": 240_000, "usd_spent": 0.12}}  # 10 s costs double
    assert resp.headers["x-aimlapi-credits-used"] == "240000"
    assert resp.headers["x-aimlapi-usd-spent"] == "0.120000000"
    video = answer["video"]
    assert video["content_type"] == "video/mp4"
    assert video["file_name"] == "output.mp4"
    # The URL is on the origin the client used.
    assert video["url"].startswith(emu.url("/files/"))
    async with emu.client.session.get(video["url"]) as got:
        assert got.status == 200
        assert got.headers["Content-Type"] == "video/mp4"
        data = await got.read()
        assert int(got.headers["Content-Length"]) == len(data) == video["file_size"]
    _, frames, _ = _decode(data)  # render "off": the tiny fixed clip, still a valid MP4
    assert frames


async def test_legacy_statuses(make_emulator: MakeEmu) -> None:
    emu = await make_emulator(legacy_statuses=True)
    resp = await emu.create(emu.body())
    assert (await resp.json())["status"] == "waiting"
    gen_id = (await resp.json())["id"]
    statuses = []
    for step in (0.0, 1.5, 3.0):
        emu.clock.advance(step)
        statuses.append((await emu.fetch_json(gen_id))["status"])
    assert statuses == ["waiting", "active", "completed"]


@pytest.mark.parametrize(
    ("create_path", "fetch_path"), [(CREATE_PATH, LEGACY_PATH), (LEGACY_PATH, CREATE_PATH)]
)
async def test_both_endpoint_styles(emu: Emu, create_path: str, fetch_path: str) -> None:
    gen_id = await emu.submit(path=create_path)
    assert (await emu.fetch_json(gen_id, path=fetch_path))["status"] == "queued"
    emu.clock.advance(10)
    assert (await emu.fetch_json(gen_id, path=create_path))["status"] == "completed"
    resp = await emu.fetch("nope", path=fetch_path)
    assert resp.status == 404
    _assert_envelope(await resp.json(), 404, fetch_path, resp)


async def test_url_encoded_ids_and_fetch_errors(emu: Emu) -> None:
    gen_id = await emu.submit()
    assert ":" in gen_id
    assert "/" in gen_id
    raw = yarl.URL(emu.url(CREATE_PATH) + "?generation_id=" + quote(gen_id, safe=""), encoded=True)
    assert "%3A" in str(raw)
    assert "%2F" in str(raw)
    async with emu.client.session.get(raw, headers=AUTH) as resp:
        assert resp.status == 200
        assert (await resp.json())["id"] == gen_id

    resp = await emu.fetch("00000000-0000-0000-0000-000000000000:kling-video/v1.6/standard/effects")
    assert resp.status == 404
    body = await resp.json()
    assert body["message"] == "Generation not found"
    _assert_envelope(body, 404, CREATE_PATH, resp)

    for params in ({}, {"generation_id": ""}):
        resp = await emu.client.get(CREATE_PATH, params=params, headers=AUTH)
        assert resp.status == 400
        _assert_envelope(await resp.json(), 400, CREATE_PATH, resp)


async def test_generating_time_spread_is_seeded(make_emulator: MakeEmu) -> None:
    spans = []
    for _ in range(2):
        emu = await make_emulator(generating_seconds=10, generating_seconds_max=20, seed=7)
        span = []
        for _ in range(5):
            gen = emu.state.generations[await emu.submit()]
            span.append(gen.ready_at - gen.queued_until)
        spans.append(span)
    assert spans[0] == spans[1]
    assert all(10 <= s <= 20 for s in spans[0])
    assert len(set(spans[0])) == 5


# ---------------------------------------------------------------------------------------------
# The face rule
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["detail", "name_message"])
async def test_noface_fails_two_person_scenes(
    make_emulator: MakeEmu, vendor_schemas: VendorSchemas, shape: str
) -> None:
    emu = await make_emulator(error_shape=shape)
    noface = emu.url("/samples/landscape-NoFace.png?x=1")
    gen_id = await emu.submit(emu.body("hug", [emu.url("/samples/person-1.png"), noface]))
    emu.clock.advance(1.5)
    assert (await emu.fetch_json(gen_id))["status"] == "generating"
    emu.clock.advance(10)
    answer = await emu.fetch_json(gen_id)
    assert answer["status"] == "error"
    assert answer["video"] is None
    assert answer["meta"] is None
    if shape == "name_message":
        vendor_schemas.fetch_response.validate(answer)
        assert answer["error"] == {
            "name": "FaceDetectionError",
            "message": "Could not detect face in the image",
        }
    else:
        assert answer["error"] == {
            "detail": [
                {
                    "loc": ["body", "image_url"],
                    "msg": "Could not detect face in the image",
                    "type": "face_detection_error",
                    "input": noface,
                }
            ]
        }


async def test_noface_renders_normally_in_other_scenes(emu: Emu) -> None:
    gen_id = await emu.submit(emu.body("squish", [emu.url("/samples/landscape-noface.png")]))
    emu.clock.advance(10)
    assert (await emu.fetch_json(gen_id))["status"] == "completed"


# ---------------------------------------------------------------------------------------------
# Videos and samples
# ---------------------------------------------------------------------------------------------


async def test_samples(emu: Emu) -> None:
    colours = set()
    for name in SAMPLE_NAMES:
        resp = await emu.client.get(f"/samples/{name}")
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "image/png"
        img = Image.open(io.BytesIO(await resp.read()))
        assert img.size == (512, 512)
        colours.add(img.convert("RGB").getpixel((5, 5)))
    assert len(colours) == len(SAMPLE_NAMES)
    assert "noface" in SAMPLE_NAMES[-1]
    assert (await emu.client.get("/samples/person-9.png")).status == 404


async def test_completion_waits_for_the_render(make_emulator: MakeEmu) -> None:
    emu = await make_emulator(render="eager", render_concurrency=1)
    # Hold the only render slot so the render can't finish before we look.
    await emu.state.render_slots.acquire()
    try:
        gen_id = await emu.submit(emu.body("squish"))
        emu.clock.advance(3600)
        assert (await emu.fetch_json(gen_id))["status"] == "generating"
    finally:
        emu.state.render_slots.release()
    await emu.state.wait_for_renders()
    assert (await emu.fetch_json(gen_id))["status"] == "completed"


@pytest.mark.parametrize(("scene", "duration"), [("squish", 5), ("hug", 10)])
async def test_rendered_mp4_decodes_with_the_right_length(
    make_emulator: MakeEmu, vendor_schemas: VendorSchemas, scene: str, duration: int
) -> None:
    emu = await make_emulator(render="eager")
    images = [emu.url("/samples/person-1.png"), emu.url("/samples/person-2.png")][
        : 2 if scene == "hug" else 1
    ]
    gen_id = await emu.submit(emu.body(scene, images, duration=duration))
    answer = await _complete(emu, gen_id)
    vendor_schemas.fetch_response.validate(answer)
    async with emu.client.session.get(answer["video"]["url"]) as resp:
        assert resp.headers["Content-Type"] == "video/mp4"
        data = await resp.read()
        assert int(resp.headers["Content-Length"]) == len(data) == answer["video"]["file_size"]
    seconds, frames, codec = _decode(data)
    assert abs(seconds - duration) < 0.2
    assert len(frames) == duration * 24
    assert frames[0].size == (320, 320)
    assert codec in ("h264", "mpeg4")
    assert emu.state.generations[gen_id].fallback_images == ()
    if scene == "hug":
        # The first photo (person-1, blue background) ends on the left, the second (orange) right.
        last = frames[-1]
        r, _, b = _mean(last, (22, 95, 42, 125))
        assert b > r + 60, (r, b)
        r, _, b = _mean(last, (280, 95, 300, 125))
        assert r > b + 60, (r, b)
    else:
        # Squish: the photo is squashed at some point (background shows at the top), not at frame 0.
        top_rows = [_mean(f, (0, 0, 320, 20)) for f in frames]
        assert top_rows[0][2] > top_rows[0][0] + 60  # blue photo fills the top at first
        assert any(abs(r - b) < 40 for r, _, b in top_rows)  # light background shows when squashed


@pytest.mark.parametrize("where", ["unreachable", "not-an-image"])
async def test_fallback_frame_when_the_image_is_unusable(make_emulator: MakeEmu, where: str) -> None:
    emu = await make_emulator(render="eager", check_images=False)
    url = _refused_url() if where == "unreachable" else emu.url("/health")
    gen_id = await emu.submit(emu.body("magic_fireball", [url]))
    await _complete(emu, gen_id)
    gen = emu.state.generations[gen_id]
    assert gen.fallback_images == (0,)
    assert gen.video is not None
    _, frames, _ = _decode(gen.video)
    mean = _mean(frames[0], (0, 0, 320, 320))
    assert all(abs(m - p) < 30 for m, p in zip(mean, PLACEHOLDER_BACKGROUND, strict=True)), mean


async def test_lazy_render_and_video_dir(make_emulator: MakeEmu, tmp_path: Path) -> None:
    emu = await make_emulator(render="lazy", video_dir=tmp_path / "videos")
    gen_id = await emu.submit(emu.body("expansion"))
    await emu.state.wait_for_renders()  # the photos are downloaded and checked at submission
    emu.clock.advance(10)
    answer = await emu.fetch_json(gen_id)
    assert answer["status"] == "completed"
    assert answer["video"]["file_size"] is None  # not rendered yet
    assert not emu.state.pending_renders
    async with emu.client.session.get(answer["video"]["url"]) as resp:
        assert resp.status == 200
        data = await resp.read()
        assert int(resp.headers["Content-Length"]) == len(data)
    assert len(_decode(data)[1]) == 120
    assert (tmp_path / "videos" / f"{emu.state.generations[gen_id].file_id}.mp4").read_bytes() == data


async def test_video_is_not_served_before_completion(emu: Emu) -> None:
    gen_id = await emu.submit()
    file_id = emu.state.generations[gen_id].file_id
    resp = await emu.client.get(f"/files/{file_id}/output.mp4")
    assert resp.status == 404
    assert (await emu.client.get("/files/unknown/output.mp4")).status == 404


# ---------------------------------------------------------------------------------------------
# Faults
# ---------------------------------------------------------------------------------------------


async def _fresh_session_call(method: str, url: str, **kwargs: Any) -> aiohttp.ClientResponse:
    # A new connection, as a client that just connected would see the drop.
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session,
        session.request(method, url, **kwargs) as resp,
    ):
        await resp.read()
        return resp


async def test_fault_status_with_retry_after_creates_nothing(make_emulator: MakeEmu) -> None:
    emu = await make_emulator(faults=[FaultRule("status", route="create", status=503, retry_after=2)])
    resp = await emu.create(emu.body())
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "2"
    _assert_envelope(await resp.json(), 503, CREATE_PATH, resp)
    assert emu.state.submissions == 0
    assert not emu.state.generations
    assert (await emu.create(emu.body())).status == 200  # times=1: the next one goes through
    stats = await emu.stats()
    assert stats["faults_injected"] == 1
    assert [r["fault"] for r in stats["requests"]] == ["status", None]


async def test_fault_skip_times_and_method(make_emulator: MakeEmu) -> None:
    emu = await make_emulator(
        faults=[
            FaultRule("status", route="fetch", status=500, skip=1, times=2),
            FaultRule("status", method="POST", status=429),
        ]
    )
    assert (await emu.create(emu.body())).status == 429
    gen_id = await emu.submit()
    statuses = [(await emu.fetch(gen_id)).status for _ in range(4)]
    assert statuses == [200, 500, 500, 200]
    assert emu.state.faults_injected == 3


async def test_fault_forever(make_emulator: MakeEmu) -> None:
    emu = await make_emulator(faults=[FaultRule("status", route="create", status=502, times=-1)])
    assert [(await emu.create(emu.body())).status for _ in range(5)] == [502] * 5


async def test_fault_drop_on_create_creates_nothing(make_emulator: MakeEmu) -> None:
    emu = await make_emulator(faults=[FaultRule("drop", route="create")])
    with pytest.raises(aiohttp.ClientConnectionError):
        await _fresh_session_call("POST", emu.url(CREATE_PATH), json=emu.body(), headers=AUTH)
    assert emu.state.submissions == 0
    assert not emu.state.generations
    stats = await emu.stats()
    assert stats["requests"][0]["fault"] == "drop"
    assert stats["requests"][0]["status"] is None
    assert (await emu.create(emu.body())).status == 200


async def test_fault_drop_after_accept_is_ambiguous(make_emulator: MakeEmu) -> None:
    # route "*": for this action it means create requests only.
    emu = await make_emulator(faults=[FaultRule("drop_after_accept")])
    with pytest.raises(aiohttp.ClientConnectionError):
        await _fresh_session_call("POST", emu.url(CREATE_PATH), json=emu.body(), headers=AUTH)
    assert emu.state.submissions == 1  # the dropped create was accepted (and paid for)
    (gen_id,) = emu.state.generations
    assert (await emu.fetch(gen_id)).status == 200  # fetches are not affected
    stats = await emu.stats()
    assert [(r["fault"], r["status"]) for r in stats["requests"]] == [
        ("drop_after_accept", None),
        (None, 200),
    ]


async def test_fault_drop_on_fetch_and_video(make_emulator: MakeEmu) -> None:
    emu = await make_emulator()
    gen_id = await emu.submit()
    emu.clock.advance(10)
    video_url = (await emu.fetch_json(gen_id))["video"]["url"]
    emu.state.set_faults([FaultRule("drop", route="fetch"), FaultRule("drop", route="video")])
    # The test client's session does not retry; a default aiohttp session retries an idempotent
    # request once after a disconnect, so a single dropped GET would go unnoticed there.
    with pytest.raises(aiohttp.ClientConnectionError):
        await emu.fetch(gen_id)
    with pytest.raises(aiohttp.ClientConnectionError):
        await emu.client.session.get(video_url)
    async with emu.client.session.get(video_url) as resp:
        assert resp.status == 200
    assert (await emu.fetch(gen_id)).status == 200
    assert emu.state.faults_injected == 2


async def test_fault_slow(make_emulator: MakeEmu) -> None:
    emu = await make_emulator(faults=[FaultRule("slow", route="fetch", delay=0.3)])
    gen_id = await emu.submit()
    started = time.monotonic()
    assert (await emu.fetch(gen_id)).status == 200
    assert time.monotonic() - started >= 0.3


async def test_fault_garbage(make_emulator: MakeEmu) -> None:
    emu = await make_emulator(faults=[FaultRule("garbage", route="fetch")])
    gen_id = await emu.submit()
    resp = await emu.fetch(gen_id)
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/html")
    with pytest.raises(ValueError):  # noqa: PT011 - json's error, whatever its message
        json.loads(await resp.text())


async def test_fault_status_on_video(make_emulator: MakeEmu) -> None:
    emu = await make_emulator(faults=[FaultRule("status", route="video", status=502)])
    gen_id = await emu.submit()
    emu.clock.advance(10)
    url = (await emu.fetch_json(gen_id))["video"]["url"]
    async with emu.client.session.get(url) as resp:
        assert resp.status == 502
    async with emu.client.session.get(url) as resp:
        assert resp.status == 200


async def test_faults_admin_endpoint(emu: Emu) -> None:
    resp = await emu.client.post(
        "/_emulator/faults",
        json={"rules": [{"action": "status", "route": "create", "status": 500, "times": 2}]},
    )
    assert resp.status == 200
    assert [(await emu.create(emu.body())).status for _ in range(3)] == [500, 500, 200]
    resp = await emu.client.post("/_emulator/faults", json={"rules": [{"action": "explode"}]})
    assert resp.status == 400
    assert (await resp.json())["errors"][0]["path"] == "rules"
    resp = await emu.client.post("/_emulator/faults", json={"rules": []})
    assert resp.status == 200
    assert emu.state.fault_rules == []


def test_fault_rule_parsing() -> None:
    rules = list(
        iter_fault_rules(
            [
                '{"action": "status", "route": "create", "status": 503, "retry_after": 1.5}',
                '[{"action": "slow", "delay": 2, "method": "get"},'
                ' {"action": "drop", "skip": 1, "times": -1}]',
            ]
        )
    )
    assert rules[0] == FaultRule("status", route="create", status=503, retry_after=1.5)
    assert rules[1].method == "GET"
    assert rules[1].delay == 2.0
    assert rules[2].times == -1
    assert rules[2].skip == 1
    assert FaultRule.from_dict(rules[0].to_dict()) == rules[0]
    for bad in (
        {"action": "explode"},
        {"action": "status"},  # no status
        {"action": "drop", "route": "everywhere"},
        {"action": "drop_after_accept", "route": "fetch"},
        {"action": "accept_without_id", "route": "fetch"},
        {"action": "accept_unreadable", "route": "video"},
        {"action": "truncate", "route": "create"},
        {"action": "drop", "bogus": 1},
        {"action": "drop", "times": "x"},
        {"route": "create"},
    ):
        with pytest.raises(ValueError):  # noqa: PT011 - each has its own message
            FaultRule.from_dict(bad)
    with pytest.raises(ValueError, match="not valid JSON"):
        list(iter_fault_rules(["{nope"]))
    args = build_parser().parse_args(["--port", "0", "--fault", '{"action": "garbage"}', "--render", "off"])
    config = config_from_args(args)
    assert config.faults == [FaultRule("garbage")]
    assert config.render == "off"


# ---------------------------------------------------------------------------------------------
# Credits, stats, reset, concurrency
# ---------------------------------------------------------------------------------------------


async def test_credits_budget(make_emulator: MakeEmu) -> None:
    emu = await make_emulator(credits=360_000)
    assert (await emu.create(emu.body(duration=10))).status == 200  # 240,000
    assert (await emu.create(emu.body())).status == 200  # 120,000
    resp = await emu.create(emu.body())
    assert resp.status == 403
    body = await resp.json()
    _assert_envelope(body, 403, CREATE_PATH, resp)
    assert body["message"] == "Insufficient credits: top up your AI/ML API balance"
    stats = await emu.stats()
    assert stats["submissions"] == 2
    assert stats["credits_remaining"] == 0
    assert stats["credits_spent"] == 360_000


async def test_stats_and_reset(make_emulator: MakeEmu) -> None:
    emu = await make_emulator(faults=[FaultRule("status", route="fetch", status=503)])
    gen_id = await emu.submit()
    await emu.create({"model": "x"})
    await emu.fetch(gen_id)  # faulted
    await emu.fetch(gen_id)
    await emu.client.get("/health")  # the observer's endpoints are not recorded
    stats = await emu.stats()
    assert stats["submissions"] == 1
    assert stats["faults_injected"] == 1
    assert stats["generations"] == {gen_id: "queued"}
    assert stats["requests"] == [
        {
            "method": "POST",
            "path": CREATE_PATH,
            "query_generation_id": None,
            "client_request_id": None,
            "status": 200,
            "fault": None,
        },
        {
            "method": "POST",
            "path": CREATE_PATH,
            "query_generation_id": None,
            "client_request_id": None,
            "status": 400,
            "fault": None,
        },
        {
            "method": "GET",
            "path": CREATE_PATH,
            "query_generation_id": gen_id,
            "client_request_id": None,
            "status": 503,
            "fault": "status",
        },
        {
            "method": "GET",
            "path": CREATE_PATH,
            "query_generation_id": gen_id,
            "client_request_id": None,
            "status": 200,
            "fault": None,
        },
    ]
    assert (await emu.client.post("/_emulator/reset")).status == 200
    stats = await emu.stats()
    assert stats["submissions"] == 0
    assert stats["requests"] == []
    assert stats["generations"] == {}
    assert stats["faults_injected"] == 0
    assert (await emu.fetch(gen_id)).status == 503  # configured faults are re-armed by a reset
    assert (await emu.fetch(gen_id)).status == 404


async def test_a_request_in_flight_across_a_reset_leaves_no_trace(emu: Emu) -> None:
    """A slow create still pending when the emulator is reset (by the next test, on a shared one)
    ends without an answer and leaves nothing in the state after the reset: no record, no
    generation, no charge."""
    emu.state.set_faults([FaultRule("slow", route="create", delay=0.5)])
    pending = asyncio.ensure_future(emu.create())
    for _ in range(500):  # until the middleware holds it (its fault fired), at most 5 s
        if emu.state.faults_injected:
            break
        await asyncio.sleep(0.01)
    emu.state.reset()
    with pytest.raises(aiohttp.ClientConnectionError):
        await pending
    stats = await emu.stats()
    assert (stats["requests"], stats["submissions"], stats["generations"]) == ([], 0, {})
    assert stats["credits_spent"] == 0


async def test_many_concurrent_generations_and_polls(emu: Emu) -> None:
    ids = await asyncio.gather(*(emu.submit() for _ in range(300)))
    assert len(set(ids)) == 300
    emu.clock.advance(2)
    answers = await asyncio.gather(*(emu.fetch_json(i) for i in ids for _ in range(2)))
    assert {a["status"] for a in answers} == {"generating"}
    stats = await emu.stats()
    assert stats["submissions"] == 300
    assert len(stats["requests"]) == 900


# ---------------------------------------------------------------------------------------------
# In a thread, and from the command line
# ---------------------------------------------------------------------------------------------


def _http(
    method: str, url: str, body: Any = None, key: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if data else {}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_run_in_thread_never_logs_the_key(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "sk-very-secret-0042"
    config = EmulatorConfig(api_key=secret, queued_seconds=0, generating_seconds=0, render="off")
    assert secret not in repr(config)
    with run_emulator_in_thread(config) as running:
        assert running.url.startswith("http://127.0.0.1:")
        body = {
            "model": STANDARD,
            "effect_scene": "squish",
            "image_url": f"{running.url}/samples/person-3.png",
        }
        status, _, raw = _http("POST", f"{running.url}{CREATE_PATH}", body, key=secret)
        assert status == 200
        gen_id = json.loads(raw)["id"]
        status, _, raw = _http(
            "GET", f"{running.url}{CREATE_PATH}?generation_id={quote(gen_id, safe='')}", key=secret
        )
        assert status == 200
        assert json.loads(raw)["status"] == "completed"
        assert _http("GET", f"{running.url}{CREATE_PATH}?generation_id=x", key="wrong")[0] == 401
        stats = running.stats()
        assert stats["submissions"] == 1
        assert stats["generations"] == {gen_id: "completed"}
        running.set_faults([FaultRule("status", route="create", status=500)])
        assert _http("POST", f"{running.url}{CREATE_PATH}", body, key=secret)[0] == 500
        running.reset()
        assert running.stats()["submissions"] == 0
    running.stop()  # a second stop is harmless
    assert "aiohttp.access" in {r.name for r in caplog.records}
    assert secret not in caplog.text
    assert "Bearer" not in caplog.text
    assert "Authorization" not in caplog.text


def test_configured_puts_a_running_emulators_whole_config_back(emulator: RunningEmulator) -> None:
    """What the shared emulators' fixtures rely on: every field comes back, the named ones, those
    changed in place and those changed by other means inside the block."""
    config = emulator.config
    before = emulator.call(lambda: copy.deepcopy(config))
    with configured(emulator, generating_seconds=99.0, status_words={"error": "failed"}):
        changed = emulator.call(lambda: (config.generating_seconds, config.status_words))
        assert changed == (99.0, {"error": "failed"})
        emulator.call(lambda: config.faults.append(FaultRule("drop")))
        emulator.call(lambda: setattr(config, "credits", 5))
    assert emulator.call(lambda: config == before)
    typo = configured(emulator, generating_second=1)  # not a new attribute nobody reads
    with pytest.raises(TypeError, match="no field generating_second"), typo:
        pass


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise AssertionError(f"no output within {timeout}s")
    return proc.stdout.readline()


@pytest.mark.skipif(sys.platform == "win32", reason="uses select() on a pipe and SIGTERM")
def test_cli_prints_one_line_and_serves(tmp_path: Path) -> None:
    fault = json.dumps({"action": "status", "route": "create", "status": 503, "retry_after": 1})
    proc = start_cli(
        "--fault", fault, "--queued-seconds", "0", "--generating-seconds", "0", "--render", "off",
        "--error-body", "live", "--status-word", "completed=succeeded", "--usage-in", "create",
        api_key="cli-secret-key",
    )  # fmt: skip
    try:
        line = _read_line(proc, 60)
        assert line.startswith("KLINGFX EMULATOR LISTENING http://127.0.0.1:"), line
        url = line.split()[-1]
        body = {"model": STANDARD, "effect_scene": "squish", "image_url": "https://example.com/a.png"}
        status, headers, raw = _http("POST", f"{url}{CREATE_PATH}", body, key="cli-secret-key")
        assert status == 503
        assert headers["Retry-After"] == "1"
        assert json.loads(raw)["title"] == "Service Unavailable"  # --error-body live
        status, headers, raw = _http("POST", f"{url}{CREATE_PATH}", body, key="cli-secret-key")
        assert status == 200
        assert headers["x-aimlapi-credits-used"] == "120000"  # --usage-in create
        gen_id = json.loads(raw)["id"]
        status, headers, raw = _http(
            "GET", f"{url}{CREATE_PATH}?generation_id={quote(gen_id, safe='')}", key="cli-secret-key"
        )
        assert json.loads(raw)["status"] == "succeeded"  # --status-word completed=succeeded
        assert json.loads(raw)["meta"] is None
        assert headers["x-inference-id"] == gen_id
        assert _http("GET", f"{url}/health")[0] == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out == ""  # nothing after the LISTENING line: logs go to stderr
    assert "POST /v2/video/generations" in err  # the access log
    assert "cli-secret-key" not in err


# ---------------------------------------------------------------------------------------------
# Status words
# ---------------------------------------------------------------------------------------------

# (config, two-person scene with a no-face photo, wire words of queued/generating/the end)
_STATUS_WORDS: dict[str, tuple[dict[str, Any], bool, list[str]]] = {
    "canonical-default": ({}, False, ["queued", "generating", "completed"]),
    "canonical-error": ({}, True, ["queued", "generating", "error"]),
    "succeeded": (
        {"status_words": {"completed": "succeeded", "error": "failed"}},
        False,
        ["queued", "generating", "succeeded"],
    ),
    "failed": (
        {"status_words": {"completed": "succeeded", "error": "failed"}},
        True,
        ["queued", "generating", "failed"],
    ),
    "cancelled": ({"status_words": {"error": "cancelled"}}, True, ["queued", "generating", "cancelled"]),
    "legacy": ({"legacy_statuses": True}, False, ["waiting", "active", "completed"]),
    "explicit-words-win-over-legacy": (
        {"legacy_statuses": True, "status_words": {"queued": "pending", "completed": "succeeded"}},
        False,
        ["pending", "active", "succeeded"],
    ),
}


@pytest.mark.parametrize(("config", "noface", "words"), list(_STATUS_WORDS.values()), ids=list(_STATUS_WORDS))
async def test_status_words_rename_only_the_wire(
    make_emulator: MakeEmu, config: dict[str, Any], noface: bool, words: list[str]
) -> None:
    emu = await make_emulator(**config)
    images = [emu.url("/samples/person-1.png"), emu.url("/samples/landscape-noface.png")]
    body = emu.body("hug", images) if noface else emu.body()
    resp = await emu.create(body)
    assert resp.status == 200
    created = await resp.json()
    assert created["status"] == words[0]
    gen_id = created["id"]
    seen = [(await emu.fetch_json(gen_id))["status"]]
    emu.clock.advance(1.5)
    seen.append((await emu.fetch_json(gen_id))["status"])
    assert (await emu.stats())["generations"] == {gen_id: "generating"}  # canonical, whatever the wire says
    emu.clock.advance(10)
    answer = await emu.fetch_json(gen_id)
    seen.append(answer["status"])
    assert seen == words
    canonical = "error" if noface else "completed"
    assert emu.state.status_of(emu.state.generations[gen_id]) == canonical
    assert (await emu.stats())["generations"] == {gen_id: canonical}
    if noface:
        assert answer["video"] is None
        assert answer["meta"] is None
        assert answer["error"]["detail"][0]["type"] == "face_detection_error"
    else:
        assert answer["error"] is None
        assert answer["meta"]["usage"]["credits_used"] == 120_000
        async with emu.client.session.get(answer["video"]["url"]) as got:  # served, whatever the word
            assert got.status == 200
            assert await got.read() == emu.state.tiny_video


async def test_status_words_follow_a_running_emulators_config(emu: Emu) -> None:
    # Tests of the hook flip the configuration of a running emulator; answers follow at once.
    gen_id = await emu.submit()
    assert (await emu.fetch_json(gen_id))["status"] == "queued"
    emu.state.config.legacy_statuses = True
    assert (await emu.fetch_json(gen_id))["status"] == "waiting"
    emu.state.config.status_words = {"queued": "pending"}
    assert (await emu.fetch_json(gen_id))["status"] == "pending"


@pytest.mark.parametrize(
    "words",
    [{"done": "finished"}, {"completed": ""}, {"error": "  "}, {"completed": 1}, ["completed"]],
    ids=["unknown-status", "empty-word", "blank-word", "word-not-a-string", "not-a-mapping"],
)
def test_status_words_are_validated(words: Any) -> None:
    with pytest.raises(ValueError, match="status_words"):
        EmulatorConfig(status_words=words)


# ---------------------------------------------------------------------------------------------
# Usage where the vendor reports it
# ---------------------------------------------------------------------------------------------

# (config, usage on the create answer, on the completed fetch answer, credit field, USD per 5 s video)
_USAGE: dict[str, tuple[dict[str, Any], bool, bool, str, float]] = {
    "default-both": ({}, True, True, "credits_used", 0.06),
    "create-only": ({"usage_in": "create"}, True, False, "credits_used", 0.06),
    "fetch-only": ({"usage_in": "fetch"}, False, True, "credits_used", 0.06),
    "none": ({"usage_in": "none"}, False, False, "credits_used", 0.06),
    "tokens_used-both": ({"usage_field": "tokens_used"}, True, True, "tokens_used", 0.06),
    "tokens_used-create": (
        {"usage_in": "create", "usage_field": "tokens_used"},
        True,
        False,
        "tokens_used",
        0.06,
    ),
    "usd-per-credit": ({"usd_per_credit": 0.25 / 120_000}, True, True, "credits_used", 0.25),
}


def _assert_usage(
    resp: aiohttp.ClientResponse, answer: dict[str, Any], reported: bool, field: str, usd: float
) -> None:
    if not reported:
        assert "x-aimlapi-credits-used" not in resp.headers
        assert "x-aimlapi-usd-spent" not in resp.headers
        return
    assert answer["meta"] == {"usage": {field: 120_000, "usd_spent": usd}}
    # An integer count, not 120000.0 (bool is an int subclass, but JSON would not decode to one).
    assert isinstance(answer["meta"]["usage"][field], int)
    assert resp.headers["x-aimlapi-credits-used"] == "120000"
    assert float(resp.headers["x-aimlapi-usd-spent"]) == pytest.approx(usd, abs=1e-9)


@pytest.mark.parametrize(
    ("config", "on_create", "on_fetch", "field", "usd"), list(_USAGE.values()), ids=list(_USAGE)
)
async def test_usage_in_create_and_fetch_answers(
    make_emulator: MakeEmu,
    config: dict[str, Any],
    on_create: bool,
    on_fetch: bool,
    field: str,
    usd: float,
) -> None:
    emu = await make_emulator(**config)
    resp = await emu.create(emu.body())
    created = await resp.json()
    _assert_usage(resp, created, on_create, field, usd)
    if not on_create:
        assert set(created) == {"id", "status"}
    resp = await emu.fetch(created["id"])  # queued: no usage yet, whatever the setting
    assert (await resp.json())["meta"] is None
    _assert_usage(resp, {}, False, field, usd)
    emu.clock.advance(10)
    resp = await emu.fetch(created["id"])
    answer = await resp.json()
    assert answer["status"] == "completed"
    _assert_usage(resp, answer, on_fetch, field, usd)
    if not on_fetch:
        assert answer["meta"] is None


async def test_usage_is_integer_credits_and_usd_per_duration(emu: Emu) -> None:
    resp = await emu.create(emu.body(duration=10))
    assert resp.headers["x-aimlapi-credits-used"] == "240000"
    assert resp.headers["x-aimlapi-usd-spent"] == "0.120000000"  # the format of the vendor's example
    assert (await resp.json())["meta"]["usage"] == {"credits_used": 240_000, "usd_spent": 0.12}


async def test_failed_generation_reports_no_usage_on_fetch(emu: Emu) -> None:
    images = [emu.url("/samples/person-1.png"), emu.url("/samples/landscape-noface.png")]
    gen_id = await emu.submit(emu.body("kiss", images))
    emu.clock.advance(10)
    resp = await emu.fetch(gen_id)
    answer = await resp.json()
    assert answer["status"] == "error"
    assert answer["meta"] is None
    assert "x-aimlapi-credits-used" not in resp.headers


@pytest.mark.parametrize(
    "bad",
    [
        {"usage_in": "sometimes"},
        {"usage_field": "credits"},
        {"usd_per_credit": -1.0},
        {"usd_per_credit": "x"},
    ],
    ids=["usage_in", "usage_field", "negative-price", "price-not-a-number"],
)
def test_usage_settings_are_validated(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(bad))):
        EmulatorConfig(**bad)


# ---------------------------------------------------------------------------------------------
# Tracing headers and create status codes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "code"), [(CREATE_PATH, 200), (LEGACY_PATH, 201)], ids=["universal", "legacy"]
)
async def test_create_status_and_inference_id(emu: Emu, path: str, code: int) -> None:
    resp = await emu.create(emu.body(), path=path, headers={"X-Client-Request-Id": "run-1"})
    assert resp.status == code
    gen_id = (await resp.json())["id"]
    assert resp.headers["x-inference-id"] == gen_id
    assert resp.headers["X-Client-Request-Id"] == "run-1"
    resp = await emu.fetch(gen_id, path=path)
    assert resp.status == 200
    assert resp.headers["x-inference-id"] == gen_id


_UNKNOWN_ID = "00000000-0000-4000-8000-000000000000:kling-video/v1.6/pro/effects"


# request -> (expected status, whether x-inference-id is the polled id)
_TRACED_ERRORS: dict[str, tuple[int, bool]] = {
    "fetch-known-id-bad-key": (401, True),
    "fetch-well-formed-unknown-id": (404, True),
    "fetch-malformed-id": (404, False),
    "fetch-missing-id": (400, False),
    "create-invalid-body": (400, False),
    "create-bad-key": (401, False),
}


@pytest.mark.parametrize(
    ("case", "status", "traced"),
    [(case, *expected) for case, expected in _TRACED_ERRORS.items()],
    ids=list(_TRACED_ERRORS),
)
async def test_inference_id_on_error_answers(emu: Emu, case: str, status: int, traced: bool) -> None:
    gen_id = await emu.submit()
    polled: str | None = None
    if case == "fetch-known-id-bad-key":
        polled = gen_id
        resp = await emu.client.get(CREATE_PATH, params={"generation_id": gen_id}, headers={})
    elif case == "fetch-well-formed-unknown-id":
        polled = _UNKNOWN_ID
        resp = await emu.fetch(_UNKNOWN_ID)
    elif case == "fetch-malformed-id":
        resp = await emu.fetch("nope")
    elif case == "fetch-missing-id":
        resp = await emu.client.get(CREATE_PATH, headers=AUTH)
    elif case == "create-invalid-body":
        resp = await emu.create({"model": STANDARD})
    else:
        resp = await emu.client.post(CREATE_PATH, json=emu.body())
    assert resp.status == status
    if traced:
        assert resp.headers["x-inference-id"] == polled
    else:
        assert "x-inference-id" not in resp.headers
    assert resp.headers["x-request-id"] == (await resp.json())["requestId"]


# ---------------------------------------------------------------------------------------------
# A 2xx create answer without a readable id
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "header_kept"),
    [("accept_without_id", True), ("accept_unreadable", False)],
    ids=["accept_without_id", "accept_unreadable"],
)
async def test_create_accepted_without_a_readable_id(
    make_emulator: MakeEmu, action: str, header_kept: bool
) -> None:
    # route "*": for these actions it means create requests only.
    emu = await make_emulator(faults=[FaultRule(action)])
    resp = await emu.create(emu.body(), headers={"X-Client-Request-Id": "idless-1"})
    assert resp.status == 200
    assert await resp.json() == {"status": "queued"}
    assert emu.state.submissions == 1  # accepted and paid for
    assert emu.state.credits_spent == 120_000
    (gen_id,) = emu.state.generations
    assert emu.state.generations[gen_id].client_request_id == "idless-1"
    assert resp.headers["X-Client-Request-Id"] == "idless-1"
    if header_kept:
        assert resp.headers["x-inference-id"] == gen_id
    else:
        assert "x-inference-id" not in resp.headers
    fetched = await emu.fetch(gen_id)  # fetches are not affected
    assert fetched.status == 200
    assert (await fetched.json())["id"] == gen_id
    resp = await emu.create(emu.body())  # times=1: the next create is answered in full
    assert "id" in await resp.json()
    stats = await emu.stats()
    assert [(r["fault"], r["status"]) for r in stats["requests"]] == [(action, 200), (None, 200), (None, 200)]


@pytest.mark.parametrize("action", ["accept_without_id", "accept_unreadable"])
async def test_create_without_id_faults_keep_rejections_and_status_words(
    make_emulator: MakeEmu, action: str
) -> None:
    emu = await make_emulator(
        faults=[FaultRule(action, route="create", times=-1)], status_words={"queued": "waiting"}
    )
    resp = await emu.create({"model": STANDARD})  # rejected: the error answer goes out unchanged
    assert resp.status == 400
    assert (await resp.json())["message"] == "Body validation error!"
    assert emu.state.submissions == 0
    resp = await emu.create(emu.body(), path=LEGACY_PATH)
    assert resp.status == 201  # the legacy path's 2xx
    assert await resp.json() == {"status": "waiting"}
    assert emu.state.submissions == 1


# ---------------------------------------------------------------------------------------------
# A download cut halfway
# ---------------------------------------------------------------------------------------------


async def _raw_get(url: str) -> tuple[str, dict[str, str], bytes]:
    """GET over a bare socket, reading to EOF: (status line, headers, every body byte received)."""
    parts = yarl.URL(url)
    reader, writer = await asyncio.open_connection(parts.host, parts.port)
    try:
        writer.write(f"GET {parts.raw_path_qs} HTTP/1.1\r\nHost: {parts.host}:{parts.port}\r\n\r\n".encode())
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout=10)  # to EOF: the server closes
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return status_line, headers, body


@pytest.mark.parametrize(
    "render", ["off", "eager", "lazy-video-dir"], ids=["render-off-tiny", "render-eager", "render-lazy-file"]
)
async def test_truncate_sends_half_the_announced_bytes_then_closes(
    make_emulator: MakeEmu, tmp_path: Path, render: str
) -> None:
    config: dict[str, Any] = {"render": render.split("-")[0]}
    if render == "lazy-video-dir":
        config["video_dir"] = tmp_path
    # route "*": truncate means video downloads only.
    emu = await make_emulator(faults=[FaultRule("truncate", times=2)], **config)
    gen_id = await emu.submit(emu.body("squish"))
    answer = await _complete(emu, gen_id)  # fetches are not affected
    url = answer["video"]["url"]

    status_line, headers, body = await _raw_get(url)
    assert status_line == "HTTP/1.1 200 OK"
    assert headers["content-type"] == "video/mp4"
    assert "transfer-encoding" not in headers
    announced = int(headers["content-length"])
    assert headers["x-request-id"]
    assert len(body) == announced // 2

    # The same cut, as an HTTP client sees it: a payload error, not a short "successful" read.
    async with emu.client.session.get(url) as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()

    async with emu.client.session.get(url) as resp:  # times=2: the third download is whole
        full = await resp.read()
    assert len(full) == announced
    assert body == full[: announced // 2]
    if render == "off":
        assert full == emu.state.tiny_video
    else:
        assert len(_decode(full)[1]) == 120  # a real 5 s video at 24 fps
    stats = await emu.stats()
    assert [r["fault"] for r in stats["requests"] if r["path"].startswith("/files/")] == [
        "truncate",
        "truncate",
        None,
    ]


async def test_truncate_leaves_error_answers_alone(make_emulator: MakeEmu) -> None:
    emu = await make_emulator(faults=[FaultRule("truncate", route="video", times=-1)])
    gen_id = await emu.submit()
    file_id = emu.state.generations[gen_id].file_id
    resp = await emu.client.get(f"/files/{file_id}/output.mp4")  # not completed yet: a whole 404
    assert resp.status == 404
    _assert_envelope(await resp.json(), 404, f"/files/{file_id}/output.mp4", resp)


# ---------------------------------------------------------------------------------------------
# HTTP error body shapes
# ---------------------------------------------------------------------------------------------

# (request, status, message, exception name in the live body)
_ERRORS: dict[str, tuple[int, str, str]] = {
    "unauthorized": (401, "Unauthorized", "UnauthorizedException"),
    "not-found": (404, "Generation not found", "NotFoundException"),
    "unknown-route": (404, "Not Found", "NotFoundException"),
    "method-not-allowed": (405, "Method Not Allowed", "MethodNotAllowedException"),
    "credits-spent": (403, "Insufficient credits: top up your AI/ML API balance", "ForbiddenException"),
    "fault-503": (503, "Service Unavailable", "ServiceUnavailableException"),
    "fault-429": (429, "Too Many Requests", "TooManyRequestsException"),
}


async def _error_request(emu: Emu, case: str) -> tuple[aiohttp.ClientResponse, str]:
    if case == "unauthorized":
        return await emu.client.post(CREATE_PATH, json=emu.body()), CREATE_PATH
    if case == "not-found":
        return await emu.fetch("nope", path=LEGACY_PATH), LEGACY_PATH
    if case == "unknown-route":
        return await emu.client.get("/v3/nothing", headers=AUTH), "/v3/nothing"
    if case == "method-not-allowed":
        return await emu.client.delete(CREATE_PATH, headers=AUTH), CREATE_PATH
    if case == "credits-spent":
        emu.state.credits_remaining = 0
        return await emu.create(emu.body()), CREATE_PATH
    status = int(case.rpartition("-")[2])
    emu.state.set_faults([FaultRule("status", route="create", status=status)])
    return await emu.create(emu.body()), CREATE_PATH


@pytest.mark.parametrize("error_body", ["documented", "live"])
@pytest.mark.parametrize(
    ("case", "status", "message", "name"), [(case, *v) for case, v in _ERRORS.items()], ids=list(_ERRORS)
)
async def test_error_body_shapes(
    make_emulator: MakeEmu, error_body: str, case: str, status: int, message: str, name: str
) -> None:
    emu = await make_emulator(error_body=error_body)
    resp, path = await _error_request(emu, case)
    assert resp.status == status
    body = await resp.json()
    assert body["message"] == message
    assert body["requestId"] == resp.headers["x-request-id"]
    assert body["timestamp"].endswith("Z")
    if error_body == "documented":
        assert set(body) == {"message", "path", "requestId", "statusCode", "timestamp"}
        _assert_envelope(body, status, path, resp)
    else:
        assert set(body) == {"title", "status", "message", "instance", "requestId", "timestamp", "error"}
        # The vendor's (RFC 7231) phrases, which Python 3.13 renamed for 413 and 422.
        assert body["title"] == VENDOR_PHRASES.get(status, HTTPStatus(status).phrase)
        assert body["status"] == status
        assert body["instance"] == path
        assert body["error"] == {"name": name, "message": message}
    assert emu.state.submissions == 0


VENDOR_PHRASES = {413: "Payload Too Large", 422: "Unprocessable Entity"}

# (body sent, documented errors[].path, live detail[].loc, live detail[].input)
_VALIDATION: dict[str, tuple[Any, str, list[Any], Any]] = {
    "image-not-uri": (
        {"model": STANDARD, "effect_scene": "squish", "image_url": "https://x.com/a b.png"},
        "image_url",
        ["body", "image_url"],
        "https://x.com/a b.png",
    ),
    "image-array-item": (
        {"model": STANDARD, "effect_scene": "hug", "image_url": [IMG, "not a url"]},
        "image_url[1]",
        ["body", "image_url", 1],
        "not a url",
    ),
    "image-count": (
        {"model": STANDARD, "effect_scene": "hug", "image_url": IMG},
        "image_url",
        ["body", "image_url"],
        IMG,
    ),
    "duration": (
        {"model": STANDARD, "effect_scene": "squish", "image_url": IMG, "duration": 7},
        "duration",
        ["body", "duration"],
        7,
    ),
    "missing-model": ({"effect_scene": "squish", "image_url": IMG}, "model", ["body", "model"], None),
    "not-an-object": ([1], "", ["body"], [1]),
}


@pytest.mark.parametrize("error_body", ["documented", "live"])
@pytest.mark.parametrize(("sent", "path", "loc", "value"), list(_VALIDATION.values()), ids=list(_VALIDATION))
async def test_validation_error_details_in_either_shape(
    make_emulator: MakeEmu, error_body: str, sent: Any, path: str, loc: list[Any], value: Any
) -> None:
    emu = await make_emulator(error_body=error_body)
    resp = await emu.create(sent)
    assert resp.status == 400
    body = await resp.json()
    assert body["message"] == "Body validation error!"  # the details follow in the body
    if error_body == "documented":
        assert "detail" not in body
        assert len(body["errors"]) == 1
        assert body["errors"][0]["path"] == path
        assert body["errors"][0]["message"]
    else:
        assert "errors" not in body
        assert body["error"] == {"name": "BadRequestException", "message": "Body validation error!"}
        (detail,) = body["detail"]
        assert detail["loc"] == loc
        assert detail["type"] == "value_error"
        assert detail["input"] == value
        assert isinstance(detail["msg"], str)
        assert detail["msg"]


async def test_live_error_body_for_non_json_and_query_errors(make_emulator: MakeEmu) -> None:
    emu = await make_emulator(error_body="live")
    resp = await emu.client.post(
        CREATE_PATH, data=b"{not json", headers={**AUTH, "Content-Type": "application/json"}
    )
    body = await resp.json()
    assert resp.status == 400
    assert body["message"] == "Body validation error!"
    assert body["detail"] == [
        {"loc": ["body"], "msg": "body is not valid JSON", "type": "value_error", "input": "{not json"}
    ]
    resp = await emu.client.get(CREATE_PATH, params={"generation_id": ""}, headers=AUTH)
    body = await resp.json()
    assert resp.status == 400
    assert body["message"] == "Query validation error!"
    assert body["detail"] == [
        {
            "loc": ["query", "generation_id"],
            "msg": "generation_id is required",
            "type": "value_error",
            "input": "",
        }
    ]


# ---------------------------------------------------------------------------------------------
# The new settings from the command line
# ---------------------------------------------------------------------------------------------

_CLI: dict[str, tuple[list[str], dict[str, Any]]] = {
    "defaults": (
        [],
        {
            "status_words": {},
            "usage_in": "both",
            "usage_field": "credits_used",
            "usd_per_credit": 0.0000005,
            "error_body": "documented",
        },
    ),
    "status-words": (
        ["--status-word", "completed=succeeded", "--status-word", "error=failed"],
        {"status_words": {"completed": "succeeded", "error": "failed"}},
    ),
    "usage": (
        ["--usage-in", "create", "--usage-field", "tokens_used", "--usd-per-credit", "0.000002"],
        {"usage_in": "create", "usage_field": "tokens_used", "usd_per_credit": 0.000002},
    ),
    "error-body": (["--error-body", "live"], {"error_body": "live"}),
    "new-faults": (
        ["--fault", '[{"action": "accept_unreadable"}, {"action": "truncate", "times": -1}]'],
        {"faults": [FaultRule("accept_unreadable"), FaultRule("truncate", times=-1)]},
    ),
}


@pytest.mark.parametrize(("argv", "expected"), list(_CLI.values()), ids=list(_CLI))
def test_cli_flags_for_the_vendor_variants(argv: list[str], expected: dict[str, Any]) -> None:
    config = config_from_args(build_parser().parse_args(argv))
    assert {name: getattr(config, name) for name in expected} == expected


@pytest.mark.parametrize(
    "argv",
    [
        ["--status-word", "completed"],
        ["--status-word", "done=finished"],
        ["--status-word", "error="],
        ["--usage-in", "sometimes"],
        ["--error-body", "rfc7807"],
        ["--fault", '{"action": "truncate", "route": "fetch"}'],
        ["--log-level", "loud"],
    ],
    ids=[
        "no-equals",
        "unknown-status",
        "empty-word",
        "bad-usage-in",
        "bad-error-body",
        "truncate-on-fetch",
        "bad-log-level",
    ],
)
def test_cli_rejects_bad_values(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert_cli_rejects(argv, capsys)


def test_cli_leaves_the_root_logger_as_it_found_it(capsys: pytest.CaptureFixture[str]) -> None:
    """main() logs to stderr while it serves, then puts the root logger back: called in a process
    that goes on (a test under capsys), it must leave no handler on a stream closed by then, where
    the next emulator thread's access log would fail ('--- Logging error ---')."""
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["--port", str(port), "--log-level", "debug"]) == 1  # it cannot bind the port
    assert (list(root.handlers), root.level) == before
    err = capsys.readouterr().err
    assert "klingfx emulator: " in err
    assert "Using selector" in err  # asyncio's debug line: the logs went to stderr meanwhile


def test_cli_help_documents_the_new_flags(capsys: pytest.CaptureFixture[str]) -> None:
    text = cli_help_text(capsys)
    for flag in ("--status-word", "--usage-in", "--usage-field", "--usd-per-credit", "--error-body"):
        assert flag in text
    for action in ("accept_without_id", "accept_unreadable", "truncate"):
        assert action in text
