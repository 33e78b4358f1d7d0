"""Rendering for the emulator: small but real, playable MP4s and the sample photos it serves.

Everything here is synchronous and CPU-bound: the app calls it in a thread executor so the event
loop keeps answering polls while a video renders (:mod:`klingfx_emulator.videos` schedules it).
PyAV and Pillow are imported inside the functions, so importing the emulator package (e.g. to build
a config) stays cheap.

The animations are deliberately simple stand-ins for Kling's effects, just enough to see in a
player that the right photos were used in the right places:

* ``squish``: the photo is squashed vertically and springs back, again and again;
* ``expansion``: the photo grows and inflates (wider than tall) over the clip;
* two images: the photos side by side slide towards each other, the first on the left; two-person
  scenes (hug, kiss, heart gesture) end with a heart between them;
* anything else: a slow zoom and pan over the photo (a "Ken Burns" effect).
"""

from __future__ import annotations

import io
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import cache
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from av.video.stream import VideoStream
    from PIL import Image as PILImage
    from PIL import ImageFont as PILImageFont

#: Side of the square output video, in pixels (even, as yuv420p requires).
VIDEO_SIZE = 320
#: Frames per second of the output video.
FPS = 24
#: Background of the placeholder frame used when an input photo cannot be used. Dark on purpose,
#: so a test (or a person) can tell a placeholder from the bright sample photos at a glance.
PLACEHOLDER_BACKGROUND = (38, 42, 52)

#: The sample photos the emulator serves under ``/samples/``: name -> (background, skin, hair).
_PERSONS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int], tuple[int, int, int]]] = {
    "person-1.png": ((64, 112, 214), (246, 208, 170), (60, 40, 25)),
    "person-2.png": ((240, 140, 40), (205, 150, 110), (20, 20, 20)),
    "person-3.png": ((60, 170, 90), (150, 100, 70), (200, 160, 60)),
}
SAMPLE_NAMES: tuple[str, ...] = (*_PERSONS, "landscape-noface.png")


@dataclass(frozen=True)
class RenderedVideo:
    """The result of :func:`render_video`.

    :param data: the MP4 file's bytes.
    :param fallback_images: 0-based positions of the inputs that were replaced by a placeholder
        frame because they were missing or could not be decoded as an image.
    :param codec: the video codec used (``libx264`` or ``mpeg4``).
    """

    data: bytes
    fallback_images: tuple[int, ...]
    codec: str


@cache
def pick_codec() -> str:
    """Return ``libx264`` if this PyAV build can encode H.264, else ``mpeg4`` (always built in)."""
    import av

    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def _font(size: int) -> PILImageFont.ImageFont | PILImageFont.FreeTypeFont:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed-size bitmap font
        return ImageFont.load_default()


def placeholder_frame(effect_scene: str, size: int = VIDEO_SIZE, position: int = 0) -> PILImage.Image:
    """Draw the frame used in place of a photo that could not be downloaded or decoded.

    :param effect_scene: the scene name, written on the frame.
    :param size: side of the square frame in pixels.
    :param position: 0-based position of the missing input, written on the frame.
    """
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), PLACEHOLDER_BACKGROUND)
    draw = ImageDraw.Draw(img)
    margin = size // 10
    draw.rectangle(
        (margin, margin, size - margin, size - margin), outline=(120, 126, 140), width=max(2, size // 80)
    )
    font = _font(max(10, size // 14))
    small = _font(max(8, size // 20))
    draw.text((size / 2, size * 0.42), effect_scene, fill=(235, 235, 240), font=font, anchor="mm")
    draw.text(
        (size / 2, size * 0.58),
        f"image {position + 1} unavailable",
        fill=(170, 175, 190),
        font=small,
        anchor="mm",
    )
    return img


def _load_photo(
    data: bytes | None, effect_scene: str, size: int, position: int
) -> tuple[PILImage.Image, bool]:
    """Decode ``data`` into a square RGB image of ``size``; (placeholder, True) if that fails."""
    from PIL import Image, ImageOps

    if data:
        try:
            with Image.open(io.BytesIO(data)) as raw:
                # Refuse absurd dimensions before decoding: a small file can claim huge ones.
                if raw.width * raw.height > 40_000_000:
                    raise ValueError("image too large")
                raw.draft("RGB", (size * 2, size * 2))  # JPEG: decode at a reduced scale, much faster
                img = ImageOps.exif_transpose(raw).convert("RGB")
            return ImageOps.fit(img, (size, size), Image.Resampling.BILINEAR), False
        except Exception:  # noqa: S110 - any undecodable input gets the placeholder, by design
            pass
    return placeholder_frame(effect_scene, size, position), True


def _smoothstep(x: float) -> float:
    x = min(1.0, max(0.0, x))
    return x * x * (3 - 2 * x)


def _background(size: int, top: tuple[int, int, int], bottom: tuple[int, int, int]) -> PILImage.Image:
    from PIL import Image

    # A vertical gradient built as a 1-pixel-wide strip and stretched: cheap and looks less flat.
    strip = Image.new("RGB", (1, size))
    for y in range(size):
        f = y / max(1, size - 1)
        strip.putpixel((0, y), tuple(round(a + (b - a) * f) for a, b in zip(top, bottom, strict=True)))
    return strip.resize((size, size))


def _draw_heart(img: PILImage.Image, cx: float, cy: float, r: float) -> None:
    from PIL import ImageDraw

    draw = ImageDraw.Draw(img)
    red = (226, 40, 70)
    draw.ellipse((cx - r, cy - r, cx, cy), fill=red)
    draw.ellipse((cx, cy - r, cx + r, cy), fill=red)
    draw.polygon([(cx - r, cy - r / 2), (cx + r, cy - r / 2), (cx, cy + r)], fill=red)


def _frame_at(
    photos: Sequence[PILImage.Image],
    effect_scene: str,
    index: int,
    n_frames: int,
    fps: int,
    size: int,
    background: PILImage.Image,
) -> PILImage.Image:
    """Draw frame ``index`` of the animation for ``effect_scene``."""
    from PIL import Image

    t = index / fps
    progress = index / max(1, n_frames - 1)
    frame = background.copy()
    if len(photos) >= 2:
        # Two photos slide in from the edges and meet in the middle, the first on the left.
        side = round(size * 0.47)
        top = (size - side) // 2
        approach = _smoothstep(progress / 0.7)
        start_left, end_left = -side // 2, size // 2 - side + size // 40
        start_right, end_right = size - side // 2, size // 2 - size // 40
        bob = round(math.sin(t * 2 * math.pi * 0.8) * size * 0.01)
        left_x = round(start_left + (end_left - start_left) * approach)
        right_x = round(start_right + (end_right - start_right) * approach)
        frame.paste(photos[0].resize((side, side), Image.Resampling.BILINEAR), (left_x, top + bob))
        frame.paste(photos[1].resize((side, side), Image.Resampling.BILINEAR), (right_x, top - bob))
        if effect_scene in ("hug", "kiss", "heart_gesture") and progress > 0.7:
            pulse = 1 + 0.15 * math.sin(t * 2 * math.pi * 1.5)
            _draw_heart(frame, size / 2, top - size * 0.02, size * 0.07 * pulse)
        return frame
    photo = photos[0]
    if effect_scene == "squish":
        # Squash towards the floor and spring back, keeping roughly the photo's area.
        squash = (1 - math.cos(2 * math.pi * t / 1.25)) / 2
        w = round(size * (1 + 0.25 * squash))
        h = max(2, round(size * (1 - 0.45 * squash)))
        frame.paste(photo.resize((w, h), Image.Resampling.BILINEAR), ((size - w) // 2, size - h))
        return frame
    if effect_scene == "expansion":
        # Grow from small to bigger than the frame, widening faster than it heightens: inflating.
        grow = _smoothstep(progress)
        wobble = 0.03 * math.sin(t * 2 * math.pi * 1.2)
        w = max(2, round(size * (0.55 + 0.85 * grow + wobble)))
        h = max(2, round(size * (0.55 + 0.55 * grow - wobble)))
        frame.paste(photo.resize((w, h), Image.Resampling.BILINEAR), ((size - w) // 2, (size - h) // 2))
        return frame
    # Slow zoom (1x -> 1.3x) drifting towards the upper right: a Ken Burns pan.
    zoom = 1 + 0.3 * _smoothstep(progress)
    crop = size / zoom
    cx = size / 2 + (size - crop) / 2 * 0.6 * progress
    cy = size / 2 - (size - crop) / 2 * 0.6 * progress
    box = (cx - crop / 2, cy - crop / 2, cx + crop / 2, cy + crop / 2)
    return photo.resize((size, size), Image.Resampling.BILINEAR, box=box)


def encode_mp4(
    draw_frame: Callable[[int], PILImage.Image], n_frames: int, *, fps: int = FPS, size: int = VIDEO_SIZE
) -> tuple[bytes, str]:
    """Encode ``n_frames`` frames drawn by ``draw_frame(index)`` into an MP4; return (bytes, codec).

    The file is written to a temporary path rather than memory because ``movflags=+faststart``
    (index at the front, so players can start before the download ends) needs a real file.

    :param draw_frame: callable taking a frame index and returning a ``size`` x ``size`` RGB image.
    :param n_frames: number of frames; the clip lasts ``n_frames / fps`` seconds.
    :param fps: frames per second.
    :param size: side of the square video (must be even for yuv420p).
    """
    import av

    if size % 2:
        raise ValueError(f"video size must be even for yuv420p, got {size}")
    codec = pick_codec()
    fd, path = tempfile.mkstemp(prefix="klingfx-emulator-", suffix=".mp4")
    os.close(fd)
    try:
        with av.open(path, mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
            stream = cast("VideoStream", container.add_stream(codec, rate=fps))
            stream.width = size
            stream.height = size
            stream.pix_fmt = "yuv420p"
            if codec == "libx264":
                stream.options = {"preset": "ultrafast", "crf": "26"}
            else:
                stream.bit_rate = 600_000
            time_base = Fraction(1, fps)
            for index in range(n_frames):
                frame = av.VideoFrame.from_image(draw_frame(index))
                frame.pts = index
                frame.time_base = time_base
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():  # flush the encoder's delayed frames
                container.mux(packet)
        with open(path, "rb") as fh:
            return fh.read(), codec
    finally:
        os.unlink(path)


def render_video(
    images: Sequence[bytes | None],
    effect_scene: str,
    duration: int,
    *,
    fps: int = FPS,
    size: int = VIDEO_SIZE,
) -> RenderedVideo:
    """Render the effect video for a generation.

    :param images: the downloaded input photos in request order; ``None`` (or bytes that are not
        an image) is replaced by a placeholder frame naming the scene.
    :param effect_scene: the scene, which picks the animation.
    :param duration: length in seconds; the clip has exactly ``duration * fps`` frames.
    :param fps: frames per second.
    :param size: side of the square video in pixels (even).
    """
    loaded = [_load_photo(data, effect_scene, size, i) for i, data in enumerate(images or [None])]
    photos = [img for img, _ in loaded]
    fallback = tuple(i for i, (_, used_placeholder) in enumerate(loaded) if used_placeholder)
    background = _background(size, (250, 244, 236), (214, 222, 240))
    n_frames = duration * fps

    def draw(index: int) -> PILImage.Image:
        return _frame_at(photos, effect_scene, index, n_frames, fps, size, background)

    data, codec = encode_mp4(draw, n_frames, fps=fps, size=size)
    return RenderedVideo(data=data, fallback_images=fallback, codec=codec)


def render_tiny_video(seconds: int = 1, *, fps: int = FPS, size: int = 64) -> bytes:
    """Render the small fixed clip served by ``render="off"`` (load tests): valid, a few KB.

    :param seconds: length of the clip.
    :param fps: frames per second.
    :param size: side of the square video (even).
    """
    background = _background(size, (64, 112, 214), (240, 140, 40))
    data, _ = encode_mp4(lambda _index: background, seconds * fps, fps=fps, size=size)
    return data


def _draw_person(
    background: tuple[int, int, int], skin: tuple[int, int, int], hair: tuple[int, int, int]
) -> PILImage.Image:
    from PIL import Image, ImageDraw

    size = 512
    img = Image.new("RGB", (size, size), background)
    d = ImageDraw.Draw(img)
    # Shoulders, neck, hair behind the head, head, then the face on top.
    d.ellipse((96, 380, 416, 640), fill=tuple(max(0, c - 60) for c in background))
    d.rectangle((226, 330, 286, 400), fill=skin)
    d.ellipse((136, 88, 376, 330), fill=hair)
    d.ellipse((156, 120, 356, 370), fill=skin)
    d.chord((150, 96, 362, 250), start=180, end=360, fill=hair)
    for ex in (212, 300):
        d.ellipse((ex - 18, 214, ex + 18, 246), fill=(255, 255, 255))
        d.ellipse((ex - 8, 222, ex + 8, 240), fill=(30, 30, 40))
    d.line((256, 246, 244, 290, 262, 292), fill=tuple(max(0, c - 50) for c in skin), width=5)
    d.arc((206, 270, 306, 336), start=20, end=160, fill=(170, 40, 50), width=7)
    d.ellipse((180, 268, 210, 290), fill=tuple(min(255, c + 20) if i == 0 else c for i, c in enumerate(skin)))
    d.ellipse((302, 268, 332, 290), fill=tuple(min(255, c + 20) if i == 0 else c for i, c in enumerate(skin)))
    return img


def _draw_landscape() -> PILImage.Image:
    from PIL import ImageDraw

    size = 512
    img = _background(size, (120, 180, 240), (200, 230, 250))
    d = ImageDraw.Draw(img)
    d.ellipse((360, 60, 440, 140), fill=(255, 220, 90))
    d.polygon([(0, 360), (140, 180), (280, 360)], fill=(110, 120, 140))
    d.polygon([(180, 360), (350, 150), (512, 360)], fill=(90, 100, 125))
    d.polygon([(310, 205), (350, 150), (388, 205)], fill=(245, 245, 250))
    d.rectangle((0, 350, size, size), fill=(80, 160, 70))
    return img


def sample_image_png(name: str) -> bytes:
    """Draw one of the sample photos (512x512 PNG) served under ``/samples/``.

    ``person-1..3.png`` are cartoon faces on blue, orange and green backgrounds;
    ``landscape-noface.png`` has no face (its name contains ``noface``, which the emulator's
    face rule looks for).

    :param name: one of :data:`SAMPLE_NAMES`.
    :raises KeyError: for any other name.
    """
    if name in _PERSONS:
        img = _draw_person(*_PERSONS[name])
    elif name == "landscape-noface.png":
        img = _draw_landscape()
    else:
        raise KeyError(name)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()
