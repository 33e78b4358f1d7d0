"""The Airflow plugin that adds the provider's views to Airflow's UI (Airflow 3.1+).

* **Kling video**, a tab on every task instance: the video playing, its scene, model, duration,
  photos, generation id, cost, status and timings (a task that is not a generation says so);
* **Kling gallery**, a page per DAG and one across DAGs (under *Browse*): every generation of
  recent runs as tiles (the GIF preview when there is one, else the MP4), filterable by DAG, run,
  scene and state, failed generations with their reason.

Registered through the ``airflow.plugins`` entry point of this package, so installing the provider
installs the views; ``[klingfx] views_enabled = False`` leaves them out without uninstalling anything,
and ``[klingfx] views_read_prefixes`` lists where the api-server may read saved videos, previews and
photos (nowhere by default: see :mod:`airflow_provider_klingfx.ui.access`).

Every Airflow process loads plugins, workers included, so this module stays light: the web app
(FastAPI, SQLAlchemy queries) is imported only when the api-server first serves a request under
``/klingfx``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from airflow.plugins_manager import AirflowPlugin

#: Where the api-server mounts the views' app.
URL_PREFIX = "/klingfx"

_Scope = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
_Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class _LazyApp:
    """An ASGI app that imports the real one on its first request (see the module docstring)."""

    def __init__(self) -> None:
        self._app: Any = None

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if self._app is None:
            from airflow_provider_klingfx.ui.app import app

            self._app = app
        await self._app(scope, receive, send)


def _base_path() -> str:
    """The path part of ``[api] base_url`` (``""`` at the root), which every view URL starts with."""
    from urllib.parse import urlsplit

    from airflow.configuration import conf

    return urlsplit(conf.get("api", "base_url", fallback="") or "").path.rstrip("/")


_PREFIX = _base_path() + URL_PREFIX


def _enabled() -> bool:
    from airflow_provider_klingfx.ui.access import views_enabled

    return views_enabled()


_ENABLED = _enabled()


class KlingFxViewsPlugin(AirflowPlugin):
    """The task-instance tab and the galleries of generated videos (none when ``views_enabled`` is off)."""

    name = "klingfx_views"
    fastapi_apps = [{"name": "Kling videos", "app": _LazyApp(), "url_prefix": URL_PREFIX}] if _ENABLED else []
    external_views = [
        {
            "name": "Kling video",
            # Ids as path segments: Airflow 3.1 puts them in unencoded, and a "+" of a run id
            # would turn into a space in a query string.
            "href": _PREFIX + "/ti/{DAG_ID}/{RUN_ID}/{TASK_ID}/{MAP_INDEX}",
            "destination": "task_instance",
            "url_route": "klingfx-video",
        },
        {
            "name": "Kling gallery",
            "href": _PREFIX + "/gallery?dag_id={DAG_ID}",
            "destination": "dag",
            "url_route": "klingfx-gallery",
        },
        {
            "name": "Kling gallery",
            "href": _PREFIX + "/gallery",
            "destination": "nav",
            "category": "browse",
            "url_route": "klingfx-gallery-all",
        },
    ]
    if not _ENABLED:
        external_views = []
