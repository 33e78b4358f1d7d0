"""The operator that makes a preview of a saved video: a looping animated GIF and a poster frame.

Kept light at import time: the DAG processor imports DAG files constantly, so the preview module's
heavy dependencies (PyAV, Pillow) are imported only when a task runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_provider_klingfx.domain import KlingFxInvalidInputError

if TYPE_CHECKING:
    from airflow.sdk import Context, ObjectStoragePath

#: XCom key of ``{"video_path", "gif_path", "poster_path"}``: how the views find a video's preview.
XCOM_PREVIEW = "preview"


def _rendered_path(value: str | ObjectStoragePath | None) -> str | ObjectStoragePath | None:
    """``None`` for an empty template result: a pulled XCom that does not exist renders ``"None"``."""
    if isinstance(value, str) and value.strip() in ("", "None"):
        return None
    return value


class KlingFxPreviewOperator(BaseOperator):
    """Make a looping animated GIF and a poster frame of a saved video, like the vendor's gallery.

    Reads the video from Airflow object storage (typically where ``KlingFxEffectOperator`` saved it
    with ``output_path``), writes the GIF and the poster (JPEG or PNG, at the video's size) to object
    storage, and returns the paths and sizes (XCom ``return_value``, see
    :class:`~airflow_provider_klingfx.preview.PreviewResult`).

    A file that is missing or not a decodable video fails the task without retries
    (:class:`~airflow_provider_klingfx.preview.KlingFxPreviewError`). Needs the ``preview`` extra.

    :param video_path: the video (``str`` or ``ObjectStoragePath``; a local path or any URL Airflow's
        object storage supports). Templated, typically
        ``"{{ ti.xcom_pull(task_ids='generate', key='output_path') }}"``.
    :param gif_path: where to write the GIF. Templated. Default: next to the video,
        ``<name>.preview.gif``.
    :param poster_path: where to write the poster, ``.jpg``/``.jpeg`` or ``.png``. Templated.
        Default: next to the video, ``<name>.poster.jpg``.
    :param width: GIF width in pixels; the height follows the video's aspect ratio.
    :param fps: GIF frames per second, at most 50.
    :param max_seconds: make the GIF from only the first seconds of the video; ``None`` for all of it.
    :param poster_at: when the poster is taken, as a fraction of the video's duration (0.5: middle).
    """

    template_fields: Sequence[str] = ("video_path", "gif_path", "poster_path")
    ui_color = "#d1e8ff"

    def __init__(
        self,
        *,
        video_path: str | ObjectStoragePath,
        gif_path: str | ObjectStoragePath | None = None,
        poster_path: str | ObjectStoragePath | None = None,
        width: int = 320,
        fps: float = 10.0,
        max_seconds: float | None = None,
        poster_at: float = 0.5,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # The preview module is light (its PyAV and Pillow imports are deferred): validating here
        # shows a bad option as a DAG import error, not as a failed run hours later.
        from airflow_provider_klingfx.preview import check_preview_options

        check_preview_options(width=width, fps=fps, max_seconds=max_seconds, poster_at=poster_at)
        self.video_path = video_path
        self.gif_path = gif_path
        self.poster_path = poster_path
        self.width = width
        self.fps = fps
        self.max_seconds = max_seconds
        self.poster_at = poster_at

    def execute(self, context: Context) -> dict[str, Any]:
        """Make the preview; return :meth:`~airflow_provider_klingfx.preview.PreviewResult.to_dict`, and
        push XCom ``preview`` (which video, its GIF and poster) for the Kling gallery to find."""
        from airflow_provider_klingfx.preview import make_preview

        video = _rendered_path(self.video_path)
        if video is None:
            raise KlingFxInvalidInputError(
                f"video_path is empty (rendered as {self.video_path!r}); if it pulls an XCom, did the "
                "upstream task save the video (KlingFxEffectOperator's output_path)?"
            )
        result = make_preview(
            video,
            gif_path=_rendered_path(self.gif_path),
            poster_path=_rendered_path(self.poster_path),
            width=self.width,
            fps=self.fps,
            max_seconds=self.max_seconds,
            poster_at=self.poster_at,
        )
        self.log.info(
            "Preview of %s (%.1fs): GIF %s (%dx%d, %d frames, %.1f KB), poster %s (%.1f KB)",
            video,
            result.duration_seconds,
            result.gif_path,
            result.width,
            result.height,
            result.frames,
            result.gif_bytes / 1e3,
            result.poster_path,
            result.poster_bytes / 1e3,
        )
        context["ti"].xcom_push(
            key=XCOM_PREVIEW,
            value={"video_path": str(video), "gif_path": result.gif_path, "poster_path": result.poster_path},
        )
        return result.to_dict()
