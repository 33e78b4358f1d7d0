"""Previews of a generated video, like the vendor's gallery: a looping animated GIF and a poster frame.

A GIF plays inline where an MP4 does not (chat messages, e-mails, a README, the Airflow UI's
markdown), and a poster frame is what a page shows before a video loads. Both are written to any
Airflow object-storage path, like the video itself (see :mod:`airflow_provider_klingfx.media`).

PyAV and Pillow (the ``preview`` extra) are imported inside the functions: the DAG processor imports
operator modules constantly and must not pay for FFmpeg or Pillow, nor need them installed.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import math
from dataclasses import asdict, dataclass
from typing import IO, TYPE_CHECKING, Any

from airflow_provider_klingfx._compat import AirflowFailException
from airflow_provider_klingfx.domain import KlingFxError, KlingFxInvalidInputError
from airflow_provider_klingfx.media import as_storage_path

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath
    from av.container import InputContainer
    from av.video.frame import VideoFrame
    from av.video.stream import VideoStream
    from PIL import Image as PILImage

#: Suffix of the default GIF path: ``clip.mp4`` -> ``clip.preview.gif``, next to the video.
GIF_SUFFIX = ".preview.gif"
#: Suffix of the default poster path: ``clip.mp4`` -> ``clip.poster.jpg``, next to the video.
POSTER_SUFFIX = ".poster.jpg"
#: Highest GIF frame rate accepted. GIF delays are whole centiseconds, and browsers play any delay
#: under 2 cs as 10 cs, so a faster GIF would play five times slower than asked.
MAX_GIF_FPS = 50.0
#: Poster formats, by the poster path's extension.
POSTER_FORMATS: dict[str, str] = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}

#: FFmpeg demuxers that "succeed" on things that are not videos: ``tty`` reads any text file as ANSI
#: art, ``bin``/``xbin``/``adf``/``idf`` are other text-art formats, and ``image2`` (plus every
#: ``*_pipe`` demuxer, e.g. ``png_pipe``) reads a still picture as a one-frame stream.
_NOT_VIDEO_DEMUXERS = frozenset({"tty", "bin", "xbin", "adf", "idf", "image2"})
#: Slack when comparing frame times, in seconds: timestamps in coarse time bases (e.g. 1/1000 s for
#: 30000/1001 fps) are rounded, and a frame exactly on a boundary must not flip sides.
_EPSILON = 5e-4
#: Frame rate assumed when a stream declares none (FFmpeg's own default).
_DEFAULT_RATE = 25.0


class KlingFxPreviewError(KlingFxError, AirflowFailException):
    """The file is missing or is not a video that can be decoded (corrupt, truncated, a text file...).

    The same bytes would fail again, so it fails the task without retries. Errors of the storage
    itself (a dropped connection while reading) are not wrapped: Airflow's retries apply to them.

    :param path: the video's URL.
    :param reason: what is wrong with it.
    """

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"cannot make a preview of {path}: {reason}")


@dataclass(frozen=True)
class PreviewResult:
    """What :func:`make_preview` wrote.

    :param gif_path: URL of the animated GIF (``str(ObjectStoragePath)``, as ``save_video`` returns).
    :param poster_path: URL of the poster frame.
    :param frames: frames in the GIF (Pillow merges identical consecutive frames, so a still video
        gives one frame).
    :param width: width of the GIF in pixels.
    :param height: height of the GIF in pixels (the video's aspect ratio kept).
    :param duration_seconds: duration of the source video.
    :param gif_bytes: size of the GIF file.
    :param poster_bytes: size of the poster file (the poster has the video's own size).
    """

    gif_path: str
    poster_path: str
    frames: int
    width: int
    height: int
    duration_seconds: float
    gif_bytes: int
    poster_bytes: int

    def to_dict(self) -> dict[str, Any]:
        """The result as a JSON-able dict (what the operator returns to XCom)."""
        return asdict(self)


@dataclass
class _Decoded:
    """Frames sampled from a video: GIF frames already downscaled and in palette mode."""

    frames: list[PILImage.Image]
    delays_ms: list[int]
    size: tuple[int, int]
    duration: float
    poster: PILImage.Image


def check_preview_options(
    *, width: int, fps: float, max_seconds: float | None = None, poster_at: float = 0.5
) -> None:
    """Validate :func:`make_preview`'s options; cheap, so operators call it when a DAG is parsed.

    :param width: GIF width in pixels.
    :param fps: GIF frames per second.
    :param max_seconds: length of the GIF from the start of the video, or ``None`` for all of it.
    :param poster_at: when the poster is taken, as a fraction of the video's duration.
    :raises KlingFxInvalidInputError: when an option is out of range.
    """
    # GIF stores sizes in 16 bits.
    if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= 65535:
        raise KlingFxInvalidInputError(
            f"width must be a whole number of pixels from 1 to 65535, got {width!r}"
        )
    if not (isinstance(fps, (int, float)) and math.isfinite(fps) and 0 < fps <= MAX_GIF_FPS):
        raise KlingFxInvalidInputError(
            f"fps must be above 0 and at most {MAX_GIF_FPS:g} (browsers slow down faster GIFs), got {fps!r}"
        )
    if max_seconds is not None and not (
        isinstance(max_seconds, (int, float)) and math.isfinite(max_seconds) and max_seconds > 0
    ):
        raise KlingFxInvalidInputError(f"max_seconds must be positive or None, got {max_seconds!r}")
    if not (isinstance(poster_at, (int, float)) and 0 <= poster_at <= 1):
        raise KlingFxInvalidInputError(
            f"poster_at is a fraction of the video's duration, from 0 to 1, got {poster_at!r}"
        )


def default_preview_paths(video: str | ObjectStoragePath) -> tuple[ObjectStoragePath, ObjectStoragePath]:
    """The default (GIF, poster) paths: next to the video, ``clip.mp4`` -> ``clip.preview.gif``, ...

    :param video: the video's path or URL.
    """
    source = as_storage_path(video)
    # with_name(stem + ...) rather than with_suffix: some pathlib versions reject a two-dot suffix.
    return source.with_name(source.stem + GIF_SUFFIX), source.with_name(source.stem + POSTER_SUFFIX)


def make_preview(
    video: str | ObjectStoragePath,
    *,
    gif_path: str | ObjectStoragePath | None = None,
    poster_path: str | ObjectStoragePath | None = None,
    width: int = 320,
    fps: float = 10.0,
    max_seconds: float | None = None,
    poster_at: float = 0.5,
) -> PreviewResult:
    """Write a looping animated GIF and a poster frame of ``video``.

    The video is read through Airflow's object storage and decoded as a stream: each frame kept for
    the GIF is downscaled at once, and the others are dropped, so memory holds the small GIF frames
    and one full-size frame, whatever the video's length. Both files are encoded in memory and only
    then written, so a video that fails to decode leaves no half-written preview behind.

    :param video: the MP4 (any format FFmpeg reads): a local path, a ``file://``, ``s3://``... URL or
        an ``ObjectStoragePath``.
    :param gif_path: where to write the GIF; default next to the video, ``<name>.preview.gif``.
    :param poster_path: where to write the poster, JPEG (``.jpg``, ``.jpeg``) or PNG (``.png``) by
        its extension; default next to the video, ``<name>.poster.jpg``. It has the video's size.
    :param width: GIF width in pixels; the height follows the video's aspect ratio.
    :param fps: GIF frames per second (at most 50), sampled from the video's frames.
    :param max_seconds: make the GIF from only the first ``max_seconds`` of the video (the poster
        may still come from later); ``None`` for the whole video. Bound it for long videos: the GIF
        holds every sampled frame.
    :param poster_at: when the poster frame is taken, as a fraction of the video's duration
        (0 the first frame, 0.5 the middle, 1 the last).
    :returns: the paths written and the sizes.
    :raises KlingFxPreviewError: the video is missing or cannot be decoded as a video.
    :raises KlingFxInvalidInputError: an option is out of range, the poster's extension is not
        supported, or an output path would overwrite the video or the other output.
    """
    check_preview_options(width=width, fps=fps, max_seconds=max_seconds, poster_at=poster_at)
    source = as_storage_path(video)
    default_gif, default_poster = default_preview_paths(source)
    gif_dest = default_gif if gif_path is None else as_storage_path(gif_path)
    poster_dest = default_poster if poster_path is None else as_storage_path(poster_path)
    poster_format = POSTER_FORMATS.get(poster_dest.suffix.lower())
    if poster_format is None:
        raise KlingFxInvalidInputError(
            f"poster_path must end with one of {', '.join(POSTER_FORMATS)} (the format follows the "
            f"extension), got {poster_dest}"
        )
    names = {"video": str(source), "gif_path": str(gif_dest), "poster_path": str(poster_dest)}
    if len(set(names.values())) < len(names):
        raise KlingFxInvalidInputError(f"the video, gif_path and poster_path must all differ, got {names}")

    try:
        fh = source.open("rb")
    except FileNotFoundError:
        raise KlingFxPreviewError(str(source), "no such file") from None
    with fh:
        # FFmpeg's probe seeks from the end of the file, which an empty local file refuses with a
        # bare EINVAL; say what is wrong instead.
        if not fh.read(1):
            raise KlingFxPreviewError(str(source), "the file is empty")
        fh.seek(0)
        decoded = _decode(fh, str(source), width=width, fps=fps, max_seconds=max_seconds, poster_at=poster_at)
    gif_data, gif_frames = _encode_gif(decoded)
    poster_data = _encode_poster(decoded.poster, poster_format)
    return PreviewResult(
        gif_path=_write(gif_dest, gif_data),
        poster_path=_write(poster_dest, poster_data),
        frames=gif_frames,
        width=decoded.size[0],
        height=decoded.size[1],
        duration_seconds=round(decoded.duration, 3),
        gif_bytes=len(gif_data),
        poster_bytes=len(poster_data),
    )


def _open_video(fh: IO[bytes], name: str) -> InputContainer:
    import av
    from av.error import FFmpegError

    try:
        container = av.open(fh, mode="r")
    except FFmpegError as exc:
        raise KlingFxPreviewError(
            name, f"not a video FFmpeg can read, or a truncated one ({exc.strerror or exc})"
        ) from None
    demuxer = container.format.name
    if demuxer in _NOT_VIDEO_DEMUXERS or demuxer.endswith("_pipe"):
        container.close()
        raise KlingFxPreviewError(name, f"FFmpeg reads it as {demuxer!r}: a picture or text, not a video")
    if not container.streams.video:
        container.close()
        raise KlingFxPreviewError(name, "the file has no video stream")
    return container


def _frame_rate(stream: VideoStream) -> float:
    """Frames per second, to time frames that carry no timestamp (raw H.264, for instance)."""
    # The codec's rate first: for raw streams the demuxer's average_rate is a 25 fps guess.
    for rate in (stream.codec_context.framerate, stream.guessed_rate, stream.average_rate):
        if rate:
            return float(rate)
    return _DEFAULT_RATE


def _declared_duration(container: InputContainer, stream: VideoStream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # AV_TIME_BASE
    return None


def _scanned_duration(container: InputContainer, stream: VideoStream) -> float:
    """Duration found by reading the packets without decoding them, for files that declare none."""
    interval = 1 / _frame_rate(stream)
    time_base = float(stream.time_base) if stream.time_base else 0.0
    # The earliest start and the latest end, in seconds: packets come in decoding order, which
    # B-frames make differ from presentation order.
    first: float | None = None
    last = 0.0
    count = 0
    for packet in container.demux(stream):
        if packet.size == 0:  # the demuxer's final flush packet
            continue
        count += 1
        if packet.pts is not None and time_base:
            start = packet.pts * time_base
            first = start if first is None else min(first, start)
            last = max(last, start + (packet.duration * time_base if packet.duration else interval))
    # Without timestamps the frames are timed by their index, so the duration must be too.
    return last - first if first is not None else count * interval


def _decode(
    fh: IO[bytes], name: str, *, width: int, fps: float, max_seconds: float | None, poster_at: float
) -> _Decoded:
    from av.error import FFmpegError

    container = _open_video(fh, name)
    try:
        duration = _declared_duration(container, container.streams.video[0])
        if duration is None:
            duration = _scanned_duration(container, container.streams.video[0])
            container.close()
            fh.seek(0)  # demuxing consumed the file; reopening is the one portable way back
            container = _open_video(fh, name)
        return _sample(container, name, width, fps, max_seconds, poster_at, duration)
    except FFmpegError as exc:
        raise KlingFxPreviewError(
            name, f"decoding failed, the file is corrupt or truncated ({exc.strerror or exc})"
        ) from None
    finally:
        container.close()


def _sample(
    container: InputContainer,
    name: str,
    width: int,
    fps: float,
    max_seconds: float | None,
    poster_at: float,
    duration: float,
) -> _Decoded:
    from av.error import FFmpegError
    from PIL import Image

    stream = container.streams.video[0]
    stream.thread_type = "AUTO"  # decode on several cores; frames still come out in order
    rate = _frame_rate(stream)
    window = duration if max_seconds is None else min(duration, max_seconds)
    poster_time = poster_at * duration
    frames: list[PILImage.Image] = []
    times: list[float] = []
    size = (0, 0)
    poster: VideoFrame | None = None
    origin: float | None = None
    last_slot = -1
    timed = True  # every frame so far had a timestamp, so seeking to the poster is possible
    seek = False
    decoded = 0
    t = 0.0
    for index, frame in enumerate(container.decode(stream)):
        decoded = index + 1
        if frame.time is None:
            timed = False
        absolute = frame.time if frame.time is not None else index / rate
        if origin is None:
            origin = absolute  # times count from the first frame, whatever the stream's start time
            height = max(1, round(frame.height * width / frame.width))
            size = (width, height)
        t = absolute - origin
        in_window = t < window - _EPSILON
        if in_window or not frames:
            # Keep the first frame of each 1/fps slot: even sampling, whatever the video's rate.
            slot = math.floor(t * fps + _EPSILON)
            if slot > last_slot:
                last_slot = slot
                small = frame.reformat(width=size[0], height=size[1], format="rgb24", interpolation="AREA")
                # Palette mode now, as the GIF encoder would anyway: a third of the memory per frame.
                frames.append(small.to_image().convert("P", palette=Image.Palette.ADAPTIVE))
                times.append(t)
        poster_passed = t > poster_time + _EPSILON
        if not poster_passed or poster is None:
            poster = frame  # the frame on screen at poster_time: the last one starting at or before it
        if not in_window and (poster_passed or timed):
            # Past the GIF: stop, and if the poster is still ahead, seek to it rather than decode
            # (possibly minutes of) video in between.
            seek = not poster_passed
            break
    else:
        # Decoded to the end. An MP4 cut off after its index (written first with faststart) opens
        # and decodes without an error, just fewer frames: compare with the index, so that a
        # truncated download is not taken for a short video.
        expected = stream.frames  # 0 when the container does not say
        if expected and decoded < expected and t + 2 / rate < duration:
            raise KlingFxPreviewError(
                name,
                f"the file is truncated: it holds {decoded} of its {expected} frames, up to "
                f"{t:.2f}s of {duration:.2f}s",
            )
    if poster is None or origin is None:
        raise KlingFxPreviewError(name, "the video stream has no decodable frames")
    if seek and stream.time_base is not None:
        target = int((origin + poster_time) / float(stream.time_base))
        # Backward, to the keyframe before, then decode forward. A format that cannot seek refuses:
        # then decode on from where the GIF stopped.
        with contextlib.suppress(FFmpegError):
            container.seek(target, stream=stream)
        for frame in container.decode(stream):
            if frame.time is not None and frame.time - origin > poster_time + _EPSILON:
                break
            poster = frame
    end = window if window > times[-1] + _EPSILON else times[-1] + 1 / fps
    return _Decoded(
        frames=frames,
        delays_ms=_delays_ms([*times, end]),
        size=size,
        duration=duration,
        poster=poster.to_image(),  # while the decoder is open: the frame's buffer belongs to it
    )


def _delays_ms(times: list[float]) -> list[int]:
    """Each frame's display time from consecutive start times, in whole centiseconds (as GIF stores).

    Rounding the start times rather than each delay keeps the GIF's total length true instead of
    letting the rounding errors add up; and no delay is under 2 cs, which browsers would slow down.
    """
    ticks = [round(t * 100) for t in times]
    return [max(2, b - a) * 10 for a, b in itertools.pairwise(ticks)]


def _encode_gif(decoded: _Decoded) -> tuple[bytes, int]:
    from PIL import Image

    buffer = io.BytesIO()
    first, *rest = decoded.frames
    first.save(
        buffer,
        format="GIF",
        save_all=True,
        append_images=rest,
        duration=decoded.delays_ms,
        loop=0,
        optimize=True,
    )
    # Count what was written: Pillow merges identical consecutive frames (a still scene) into one.
    buffer.seek(0)
    with Image.open(buffer) as gif:
        count = int(getattr(gif, "n_frames", 1))
    return buffer.getvalue(), count


def _encode_poster(image: PILImage.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    if image_format == "JPEG":
        image.convert("RGB").save(buffer, format="JPEG", quality=90, optimize=True)
    else:
        image.save(buffer, format=image_format)
    return buffer.getvalue()


def _write(dest: ObjectStoragePath, data: bytes) -> str:
    if dest.protocol in ("file", "local", ""):
        dest.parent.mkdir(parents=True, exist_ok=True)
    with dest.open("wb") as fh:
        fh.write(data)
    return str(dest)
