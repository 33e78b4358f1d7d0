"""The emulator and photos: Kling's limits (``check_images``), ``data:`` URIs (``accept_data_uris``)
and presigned S3 URLs, over real HTTP on 127.0.0.1.

The emulator downloads each photo itself, from a second aiohttp server these tests run or from a
moto S3 server; the generation's state moves on a fake clock, the only waits are for real
downloads and renders. The expected messages come from :func:`check_image` itself: the emulator
must say what the one implementation of the rules says.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import random
import socket
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import av
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from PIL import Image

from airflow_provider_klingfx.domain import redact_url
from airflow_provider_klingfx.images import MAX_IMAGE_BYTES, KlingFxImageError, check_image
from klingfx_emulator import EmulatorConfig, run_emulator_in_thread
from klingfx_emulator.cli import build_parser, config_from_args
from klingfx_emulator.images import download_image
from klingfx_emulator.render import PLACEHOLDER_BACKGROUND, SAMPLE_NAMES, sample_image_png
from klingfx_emulator.routes import MAX_BODY_BYTES
from tests.emulator.helpers import API_KEY, CREATE_PATH, STANDARD, Emu, MakeEmu, cli_help_text

RED = (220, 30, 30)
LOGGER = "klingfx_emulator"

# ---------------------------------------------------------------------------------------------
# Photos, and a server for them
# ---------------------------------------------------------------------------------------------


def picture(width: int, height: int, fmt: str = "PNG", colour: tuple[int, int, int] = RED) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, format=fmt)
    return buf.getvalue()


def noise_png(width: int, height: int) -> bytes:
    """A PNG that does not compress: bigger than a few KB."""
    rng = random.Random(width * height)
    buf = io.BytesIO()
    Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3)).save(buf, format="PNG")
    return buf.getvalue()


def oversize_jpeg(total: int = 11 * 1024 * 1024) -> bytes:
    """A valid 400x400 JPEG padded after its end-of-image marker to ``total`` bytes."""
    head = picture(400, 400, "JPEG")
    return head + random.Random(7).randbytes(total - len(head))


HTML = b"<!DOCTYPE html><html><body><h1>403 Forbidden</h1></body></html>"

# name -> (bytes, content type, the rule it breaks)
BAD_PHOTOS: dict[str, tuple[bytes, str, str]] = {
    "gif": (picture(400, 400, "GIF"), "image/gif", "format"),
    "html": (HTML, "text/html", "format"),
    "side-299": (picture(299, 600), "image/png", "side"),
    "aspect-3.33": (picture(1000, 300), "image/png", "aspect"),
    "size-11MiB": (oversize_jpeg(), "image/jpeg", "size"),
}


@dataclass
class PhotoServer:
    """Serves photos over HTTP: ``put`` one, get its URL."""

    server: TestServer
    photos: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    #: The path and query of every request, as sent.
    seen: list[str] = field(default_factory=list)

    def put(self, name: str, data: bytes, content_type: str = "image/png") -> str:
        self.photos[name] = (data, content_type)
        return self.url(f"/p/{name}")

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))


@pytest.fixture
async def photos() -> AsyncIterator[PhotoServer]:
    """A photo server on 127.0.0.1: ``/p/<name>`` (with Content-Length), ``/chunked/<name>``
    (chunked, no Content-Length), ``/loop`` (redirects to itself, with a signature in the query)."""
    holder: dict[str, PhotoServer] = {}

    async def plain(request: web.Request) -> web.Response:
        holder["s"].seen.append(request.raw_path)
        found = holder["s"].photos.get(request.match_info["name"])
        if found is None:
            return web.Response(status=404, text="no such photo")
        return web.Response(body=found[0], content_type=found[1])

    async def chunked(request: web.Request) -> web.StreamResponse:
        data, content_type = holder["s"].photos[request.match_info["name"]]
        resp = web.StreamResponse(headers={"Content-Type": content_type})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        try:
            for start in range(0, len(data), 256 * 1024):
                await resp.write(data[start : start + 256 * 1024])
        except (ConnectionError, RuntimeError):
            pass  # the emulator stopped reading, as it should
        return resp

    async def loop(request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop?X-Amz-Signature=s3cr3t-loop&n=" + request.query.get("n", "") + "1")

    app = web.Application()
    app.router.add_get("/p/{name}", plain)
    app.router.add_get("/chunked/{name}", chunked)
    app.router.add_get("/loop", loop)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    holder["s"] = PhotoServer(server)
    yield holder["s"]
    await server.close()


def refused_url() -> str:
    # A port that was free a moment ago: connecting to it is refused at once.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/gone.png"


def rule_error(data: bytes, url: str, position: int = 1) -> KlingFxImageError:
    """What the one implementation of the rules says of ``data`` served at ``url``."""
    with pytest.raises(KlingFxImageError) as info:
        check_image(data, len(data), position, shown=redact_url(url), complete=True)
    return info.value


def data_uri(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def first_frame(video: bytes) -> Image.Image:
    with av.open(io.BytesIO(video), mode="r") as container:
        return next(container.decode(video=0)).to_image()


def mean(img: Image.Image, box: tuple[int, int, int, int] = (0, 0, 320, 320)) -> tuple[float, ...]:
    # Box-resampling a region to one pixel averages it.
    pixel = img.convert("RGB").resize((1, 1), Image.Resampling.BOX, box=box).getpixel((0, 0))
    assert isinstance(pixel, tuple)
    return tuple(float(c) for c in pixel)


async def described(emu: Emu, gen_id: str) -> dict[str, Any]:
    """``GET /_emulator/generation``: what the emulator did with the generation."""
    resp = await emu.client.get("/_emulator/generation", params={"generation_id": gen_id})
    assert resp.status == 200, await resp.text()
    return dict(await resp.json())


async def finish(emu: Emu, gen_id: str) -> dict[str, Any]:
    """Move the clock past the generation's end, wait for its downloads and render, fetch it."""
    emu.clock.advance(3600)
    await emu.state.wait_for_renders()
    return await emu.fetch_json(gen_id)


async def video_of(emu: Emu, answer: dict[str, Any]) -> bytes:
    async with emu.client.session.get(answer["video"]["url"]) as resp:
        assert resp.status == 200
        return await resp.read()


def assert_red(video: bytes) -> None:
    r, g, b = mean(first_frame(video))
    assert r > 150 and g < 90 and b < 90, (r, g, b)


# ---------------------------------------------------------------------------------------------
# Kling's limits on downloaded photos
# ---------------------------------------------------------------------------------------------


def test_the_sample_photos_pass_the_rules() -> None:
    for name in SAMPLE_NAMES:
        info = check_image(sample_image_png(name), None, 1, shown=name, complete=True)
        assert (info.format, info.width, info.height) == ("PNG", 512, 512)


@pytest.mark.parametrize("shape", ["detail", "name_message"])
@pytest.mark.parametrize("case", list(BAD_PHOTOS))
async def test_each_rule_fails_the_generation(
    make_emulator: MakeEmu, photos: PhotoServer, case: str, shape: str
) -> None:
    emu = await make_emulator(render="eager", error_shape=shape)
    data, content_type, rule = BAD_PHOTOS[case]
    url = photos.put(case, data, content_type) + "?X-Amz-Signature=s3cr3t"
    expected = rule_error(data, url)
    assert expected.rule == rule

    gen_id = await emu.submit(emu.body("squish", [url]))
    assert (await emu.fetch_json(gen_id))["status"] == "queued"
    emu.clock.advance(1.5)
    await emu.state.wait_for_renders()  # the photo is checked by now: still "generating"
    assert (await emu.fetch_json(gen_id))["status"] == "generating"
    answer = await finish(emu, gen_id)

    assert answer["status"] == "error"
    assert answer["video"] is None
    assert answer["meta"] is None
    if shape == "detail":
        assert answer["error"] == {
            "detail": [
                {
                    "loc": ["body", "image_url"],  # image_url was one string
                    "msg": str(expected),
                    "type": "image_validation_error",
                    "input": redact_url(url),
                }
            ]
        }
    else:
        assert answer["error"] == {"name": "ImageValidationError", "message": str(expected)}
    assert "s3cr3t" not in json.dumps(answer)
    about = await described(emu, gen_id)
    assert about["image_error"] == {"index": 0, "rule": rule, "message": str(expected)}
    assert about["rendered"] is False
    assert about["render_error"] is None  # a failed check is not a RenderError
    assert about["status"] == "error"


async def test_a_bad_photo_in_an_array_is_located_by_its_index(
    make_emulator: MakeEmu, photos: PhotoServer
) -> None:
    emu = await make_emulator(render="eager")
    data = picture(1000, 300)
    good, bad = emu.url("/samples/person-1.png"), photos.put("wide", data)
    gen_id = await emu.submit(emu.body("hug", [good, bad]))
    answer = await finish(emu, gen_id)
    assert answer["status"] == "error"
    (detail,) = answer["error"]["detail"]
    assert detail["loc"] == ["body", "image_url", 1]
    assert detail["msg"] == str(rule_error(data, bad, position=2))
    assert detail["msg"].startswith(f"image 2 ({bad}) is 1000x300 px, an aspect ratio of 3.33:1")
    assert detail["type"] == "image_validation_error"


async def test_good_photos_complete_and_are_rendered(make_emulator: MakeEmu, photos: PhotoServer) -> None:
    emu = await make_emulator(render="eager")
    # At the limits: exactly 2.5:1, 300 px on the short side, a JPEG.
    query = "?X-Amz-Credential=moto%2F20250101%2Fs3%2Faws4_request&X-Amz-Security-Token=a%2Bb%3D&q=a+b"
    url = photos.put("edge.jpg", picture(750, 300, "JPEG"), "image/jpeg") + query
    gen_id = await emu.submit(emu.body("magic_fireball", [url]))
    answer = await finish(emu, gen_id)
    assert answer["status"] == "completed", answer
    assert photos.seen == ["/p/edge.jpg" + query]  # byte for byte, as a signed URL must be
    assert (await described(emu, gen_id))["fallback_images"] == []
    assert_red(await video_of(emu, answer))


async def test_photos_that_cannot_be_downloaded_keep_the_placeholder(
    make_emulator: MakeEmu, photos: PhotoServer
) -> None:
    emu = await make_emulator(render="eager")
    gen_id = await emu.submit(emu.body("hug", [photos.url("/p/missing.png"), refused_url()]))
    answer = await finish(emu, gen_id)
    assert answer["status"] == "completed", answer
    assert (await described(emu, gen_id))["fallback_images"] == [0, 1]
    assert (await described(emu, gen_id))["image_error"] is None


async def test_the_placeholder_frame_is_what_a_missing_photo_renders(
    make_emulator: MakeEmu, photos: PhotoServer
) -> None:
    emu = await make_emulator(render="eager")
    gen_id = await emu.submit(emu.body("magic_fireball", [photos.url("/p/missing.png?sig=1")]))
    answer = await finish(emu, gen_id)
    assert answer["status"] == "completed", answer
    frame = first_frame(await video_of(emu, answer))
    assert all(abs(m - p) < 30 for m, p in zip(mean(frame), PLACEHOLDER_BACKGROUND, strict=True))


async def test_check_images_off_renders_what_it_can(make_emulator: MakeEmu, photos: PhotoServer) -> None:
    emu = await make_emulator(render="eager", check_images=False)
    narrow, page = photos.put("narrow", picture(299, 600)), photos.put("page", HTML, "text/html")
    gen_id = await emu.submit(emu.body("hug", [narrow, page]))
    assert (await finish(emu, gen_id))["status"] == "completed"
    about = await described(emu, gen_id)
    assert about["fallback_images"] == [1]  # the HTML page; the narrow photo was used
    assert about["image_error"] is None


async def test_render_off_downloads_and_checks_nothing(make_emulator: MakeEmu, photos: PhotoServer) -> None:
    emu = await make_emulator(render="off")
    gen_id = await emu.submit(emu.body("squish", [photos.put("gif", *BAD_PHOTOS["gif"][:2])]))
    assert (await finish(emu, gen_id))["status"] == "completed"


async def test_lazy_renders_check_at_submission(make_emulator: MakeEmu, photos: PhotoServer) -> None:
    emu = await make_emulator(render="lazy")
    bad = await emu.submit(emu.body("squish", [photos.put("gif", *BAD_PHOTOS["gif"][:2])]))
    good = await emu.submit(emu.body("squish", [photos.put("red", picture(400, 400))]))
    emu.clock.advance(3600)
    await emu.state.wait_for_renders()
    assert not emu.state.generations[good].rendered  # checked, not rendered
    assert (await emu.fetch_json(bad))["status"] == "error"
    answer = await emu.fetch_json(good)
    assert answer["status"] == "completed"
    assert answer["video"]["file_size"] is None
    assert_red(await video_of(emu, answer))  # rendered on this download from the checked photo
    assert (await described(emu, good))["fallback_images"] == []


async def test_an_oversize_photo_is_read_no_further_than_the_limit(
    make_emulator: MakeEmu, photos: PhotoServer
) -> None:
    emu = await make_emulator(render="eager")
    data, content_type, _ = BAD_PHOTOS["size-11MiB"]
    photos.put("big", data, content_type)
    # Chunked, so the size is only known by reading: the emulator stops one byte past 10 MiB.
    got = await download_image(emu.state, photos.url("/chunked/big"))
    assert got is not None
    assert (len(got.data), got.size, got.complete) == (MAX_IMAGE_BYTES + 1, MAX_IMAGE_BYTES + 1, False)
    # Announced by Content-Length: not a byte is read.
    got = await download_image(emu.state, photos.url("/p/big"))
    assert got is not None
    assert (got.data, got.size, got.complete) == (b"", len(data), False)
    # Either way the generation fails by the size rule.
    gen_id = await emu.submit(emu.body("squish", [photos.url("/chunked/big")]))
    answer = await finish(emu, gen_id)
    assert answer["status"] == "error"
    assert (await described(emu, gen_id))["image_error"]["rule"] == "size"
    assert "Kling takes photos of at most 10 MB" in answer["error"]["detail"][0]["msg"]


async def test_a_photo_over_a_smaller_download_limit_gets_the_placeholder(
    make_emulator: MakeEmu, photos: PhotoServer, caplog: pytest.LogCaptureFixture
) -> None:
    emu = await make_emulator(render="eager", max_image_bytes=1000)
    data = noise_png(400, 400)
    assert len(data) > 2000
    url = photos.put("noise", data)
    got = await download_image(emu.state, photos.url("/chunked/noise"))
    assert got is not None and len(got.data) == 1001 and not got.complete
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        gen_id = await emu.submit(emu.body("squish", [url + "?sig=s3cr3t"]))
        assert (await finish(emu, gen_id))["status"] == "completed"  # under Kling's 10 MiB: no rule broken
    assert (await described(emu, gen_id))["fallback_images"] == [0]
    assert f"input image {url} is over the emulator's 1000 byte download limit" in caplog.text
    assert "s3cr3t" not in caplog.text


# ---------------------------------------------------------------------------------------------
# data: URIs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("error_body", ["documented", "live"])
@pytest.mark.parametrize("as_list", [False, True], ids=["string", "array"])
async def test_data_uris_are_refused_when_off(make_emulator: MakeEmu, error_body: str, as_list: bool) -> None:
    emu = await make_emulator(render="eager", error_body=error_body, credits=1_000_000)
    uri = data_uri(picture(400, 400))
    images = [emu.url("/samples/person-1.png"), uri] if as_list else [uri]
    resp = await emu.create(emu.body("hug" if as_list else "squish", images))
    assert resp.status == 422
    text = await resp.text()
    assert uri not in text and uri[-40:] not in text
    body = json.loads(text)
    assert body["message"] == "Body validation error!"
    path = "image_url[1]" if as_list else "image_url"
    if error_body == "documented":
        (error,) = body["errors"]
        assert error["path"] == path
        message = error["message"]
    else:
        (detail,) = body["detail"]
        assert detail["loc"] == (["body", "image_url", 1] if as_list else ["body", "image_url"])
        assert detail["input"] == redact_url(uri) == f"data:image/png;base64,… ({len(uri)} chars)"
        assert body["error"]["name"] == "UnprocessableEntityException"
        message = detail["msg"]
    assert "data URIs are not accepted (emulator switch accept_data_uris is off)" in message
    stats = await emu.stats()
    assert (stats["submissions"], stats["credits_spent"], stats["credits_remaining"]) == (0, 0, 1_000_000)


async def test_data_uris_are_rendered_and_checked_when_on(
    make_emulator: MakeEmu, caplog: pytest.LogCaptureFixture
) -> None:
    emu = await make_emulator(render="eager", accept_data_uris=True)
    good_jpeg = picture(400, 400, "JPEG")
    good = data_uri(good_jpeg, "image/jpeg")
    narrow_png = picture(299, 600)
    narrow = data_uri(narrow_png)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        good_id = await emu.submit(emu.body("squish", [good]))
        bad_id = await emu.submit(emu.body("hug", [emu.url("/samples/person-2.png"), narrow]))
        answer = await finish(emu, good_id)
        assert answer["status"] == "completed", answer
        assert_red(await video_of(emu, answer))
        failed = await emu.fetch_json(bad_id)
    assert failed["status"] == "error"
    (detail,) = failed["error"]["detail"]
    assert detail["loc"] == ["body", "image_url", 1]
    assert detail["input"] == redact_url(narrow)
    assert detail["msg"] == str(rule_error(narrow_png, narrow, position=2))
    assert detail["msg"].startswith(f"image 2 (data:image/png;base64,… ({len(narrow)} chars)) is 299x600 px")
    # Never in full: not in answers, the admin endpoints, the state's repr, nor the logs.
    seen = [
        json.dumps(failed),
        json.dumps(await emu.stats()),
        json.dumps(await described(emu, good_id)),
        json.dumps(await described(emu, bad_id)),
        repr(emu.state.generations[bad_id]),
        caplog.text,
    ]
    for uri in (good, narrow):
        assert all(uri[40:100] not in text for text in seen)
    about = await described(emu, good_id)
    assert about["image_urls"] == [redact_url(good)]
    assert about["image_sha256"] == [hashlib.sha256(good_jpeg).hexdigest()]  # these very bytes
    assert not emu.state.generations[good_id].data_photos  # the bytes are let go once used


async def test_an_oversize_data_uri_fails_by_the_size_rule_and_is_not_recorded(
    make_emulator: MakeEmu,
) -> None:
    emu = await make_emulator(render="eager", accept_data_uris=True)
    data = BAD_PHOTOS["size-11MiB"][0]
    uri = data_uri(data, "image/jpeg")
    assert len(uri) > 14_000_000  # well past aiohttp's default 1 MiB body limit
    assert len(uri) < MAX_BODY_BYTES
    gen_id = await emu.submit(emu.body("squish", [uri]))
    answer = await finish(emu, gen_id)
    assert answer["status"] == "error"
    assert answer["error"]["detail"][0]["msg"] == str(rule_error(data, uri))
    assert len(json.dumps(await emu.stats())) < 5_000  # no request body is recorded


@pytest.mark.parametrize(
    "uri",
    [
        "data:image/png;base64",  # no comma
        "data:image/png;base64,abc",  # not base64 (bad padding)
        "data:image/png;base64,QUJD*REVG",  # not base64 (a character outside the alphabet)
        "data:image/png,rawbytes",  # not base64 at all
        "data:text/plain;base64,aGVsbG8=",  # not an image
    ],
    ids=["no-comma", "padding", "alphabet", "not-base64", "not-an-image"],
)
async def test_malformed_data_uris_are_422(make_emulator: MakeEmu, uri: str) -> None:
    emu = await make_emulator(accept_data_uris=True, error_body="live")
    resp = await emu.create(emu.body("squish", [uri]))
    assert resp.status == 422
    (detail,) = (await resp.json())["detail"]
    assert detail["loc"] == ["body", "image_url"]
    assert "is not a valid data URI" in detail["msg"]
    assert detail["input"] == redact_url(uri)
    assert emu.state.submissions == 0


async def test_data_uris_in_other_validation_errors_are_not_echoed(make_emulator: MakeEmu) -> None:
    emu = await make_emulator(accept_data_uris=True, error_body="live")
    uri = data_uri(picture(400, 400))
    bodies = [
        emu.body("hug", [uri]),  # one image where two are needed: the input is the whole image_url
        {"model": uri, "effect_scene": "squish", "image_url": uri},  # a data URI in the wrong field
        [uri],  # not an object
        emu.body("squish", [uri[:60] + " " + uri[60:]]),  # not a URI (a space)
    ]
    for body in bodies:
        resp = await emu.create(body)
        assert resp.status == 400
        text = await resp.text()
        assert uri[40:100] not in text, text[:500]
        assert "data:image/png;base64,… (" in json.dumps(json.loads(text), ensure_ascii=False)
    # Not JSON at all: the 200 characters echoed are scrubbed too.
    resp = await emu.client.post(
        CREATE_PATH,
        data=b'{"image_url": "' + uri.encode(),
        headers={"Authorization": f"Bearer {emu.api_key}", "Content-Type": "application/json"},
    )
    assert resp.status == 400
    assert uri[40:100] not in await resp.text()


async def test_data_uris_with_render_off_are_validated_but_not_kept(make_emulator: MakeEmu) -> None:
    emu = await make_emulator(render="off", accept_data_uris=True)
    gen_id = await emu.submit(emu.body("squish", [data_uri(HTML, "image/png")]))  # not checked: not rendered
    assert not emu.state.generations[gen_id].data_photos
    assert (await described(emu, gen_id))["image_sha256"] == [hashlib.sha256(HTML).hexdigest()]
    assert (await finish(emu, gen_id))["status"] == "completed"
    assert (await emu.create(emu.body("squish", ["data:image/png;base64,abc"]))).status == 422


# ---------------------------------------------------------------------------------------------
# Presigned S3 URLs (moto)
# ---------------------------------------------------------------------------------------------


async def test_a_presigned_s3_photo_is_downloaded_and_used(
    make_emulator: MakeEmu, s3: dict[str, Any]
) -> None:
    emu = await make_emulator(render="eager")
    async with emu.client.session.get(emu.url("/samples/person-1.png")) as resp:
        png = await resp.read()
    client = s3["client"]
    client.put_object(Bucket="videos", Key="photos/person-1.png", Body=png, ContentType="image/png")
    url = client.generate_presigned_url(
        "get_object", Params={"Bucket": "videos", "Key": "photos/person-1.png"}, ExpiresIn=600
    )
    assert "Signature=" in url and url.startswith("http://127.0.0.1:")
    gen_id = await emu.submit(emu.body("squish", [url]))
    answer = await finish(emu, gen_id)
    assert answer["status"] == "completed", answer
    about = await described(emu, gen_id)
    assert about["fallback_images"] == []  # the real photo, not the placeholder
    assert about["image_sha256"] == [hashlib.sha256(png).hexdigest()]
    assert about["image_urls"] == [url.split("?", 1)[0]]  # shown without the signature
    # person-1's blue background fills the top of the first squish frame.
    r, _, b = mean(first_frame(await video_of(emu, answer)), (0, 0, 320, 20))
    assert b > r + 60, (r, b)


async def test_unusable_photo_urls_are_logged_without_query_or_user_info(
    make_emulator: MakeEmu, photos: PhotoServer, s3: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    emu = await make_emulator(render="eager")
    missing = s3["client"].generate_presigned_url(
        "get_object", Params={"Bucket": "videos", "Key": "photos/nobody.png"}, ExpiresIn=600
    )
    signature = missing.split("Signature=", 1)[1].split("&", 1)[0]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        gen_id = await emu.submit(emu.body("squish", [missing]))
        assert (await finish(emu, gen_id))["status"] == "completed"
        # A redirect loop (aiohttp's error quotes the URL, query included) and user info.
        assert await download_image(emu.state, photos.url("/loop?X-Amz-Signature=s3cr3t-first")) is None
        userinfo = photos.url("/p/missing.png").replace("http://", "http://alice:hunter2@")
        assert await download_image(emu.state, userinfo) is None
    assert (await described(emu, gen_id))["fallback_images"] == [0]
    lines = [r.getMessage() for r in caplog.records if r.name.startswith(LOGGER)]
    assert any(f"input image {missing.split('?')[0]} unusable (HTTP 404)" in line for line in lines), lines
    assert any(f"input image {photos.url('/loop')} unusable" in line for line in lines), lines
    assert any(f"input image {photos.url('/p/missing.png')} unusable" in line for line in lines), lines
    for secret in (signature, "s3cr3t", "hunter2", "X-Amz-Credential="):
        assert secret not in caplog.text


# ---------------------------------------------------------------------------------------------
# Admin endpoint, thread runner, configuration and command line
# ---------------------------------------------------------------------------------------------


async def test_generation_endpoint_answers_404_for_unknown_ids(emu: Emu) -> None:
    resp = await emu.client.get("/_emulator/generation", params={"generation_id": "nope"})
    assert resp.status == 404
    assert (await resp.json())["message"] == "Generation not found"


def test_running_emulator_describes_a_generation() -> None:
    config = EmulatorConfig(api_key=API_KEY, queued_seconds=0, generating_seconds=0, render="off")
    body = {"model": STANDARD, "effect_scene": "squish", "image_url": "https://cdn.example/a.png?sig=x"}
    with run_emulator_in_thread(config) as running:
        request = urllib.request.Request(
            running.url + CREATE_PATH,
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            gen_id = json.loads(resp.read())["id"]
        about = running.generation(gen_id)
        assert about is not None
        assert about["status"] == "completed"
        assert about["image_urls"] == ["https://cdn.example/a.png"]
        assert running.generation("nope") is None


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_max_image_bytes_is_validated(bad: Any) -> None:
    with pytest.raises(ValueError, match="max_image_bytes"):
        EmulatorConfig(max_image_bytes=bad)


def test_cli_flags_for_photos() -> None:
    config = config_from_args(build_parser().parse_args([]))
    assert (config.check_images, config.accept_data_uris) == (True, False)
    config = config_from_args(build_parser().parse_args(["--no-check-images", "--accept-data-uris"]))
    assert (config.check_images, config.accept_data_uris) == (False, True)


def test_cli_help_documents_the_photo_flags(capsys: pytest.CaptureFixture[str]) -> None:
    text = cli_help_text(capsys)
    assert "--no-check-images" in text
    assert "--accept-data-uris" in text
    assert "300 px" in text and "2.5:1" in text and "422" in text
