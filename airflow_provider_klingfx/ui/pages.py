"""The views' pages: Jinja2 templates (autoescaped) fed with what the Python side gathered.

The pages live in an iframe of Airflow's UI. Each is sent with a Content-Security-Policy that allows
only what it needs: its own stylesheet and script, pictures and videos from the api-server, and the
vendor's copies of the videos (and the photos at public URLs) on this page, by origin. Any value an
XCom holds is escaped by the templates, never trusted as markup.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from airflow_provider_klingfx.domain import redact_url
from airflow_provider_klingfx.ui import access

if TYPE_CHECKING:
    from datetime import datetime

    import jinja2

    from airflow_provider_klingfx.domain import Usage
    from airflow_provider_klingfx.ui.data import GenerationView


@dataclass(frozen=True)
class Page:
    """A rendered page and the Content-Security-Policy it needs."""

    html: str
    csp: str


@cache
def _env() -> jinja2.Environment:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )


def _origin(url: str | None) -> str | None:
    """``scheme://host[:port]`` of an http(s) URL, for a CSP source list; None for anything else."""
    if not url:
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname or ""
    # Only characters a host can hold: the origin goes into a header, so nothing may end the directive.
    if parts.scheme not in ("http", "https") or not host or not all(c.isalnum() or c in ".-:" for c in host):
        return None
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}" + (f":{port}" if port else "")


def csp(media: set[str], images: set[str]) -> str:
    """The Content-Security-Policy of a page that plays videos from ``media`` and shows ``images``."""
    extra_media = "".join(f" {o}" for o in sorted(media))
    extra_images = "".join(f" {o}" for o in sorted(images))
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; "
        f"img-src 'self'{extra_images}; media-src 'self'{extra_media}; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'self'"
    )


def ti_path(root: str, view: GenerationView, tail: str = "") -> str:
    """``{root}/…/{dag}/{run}/{task}/{map_index}{tail}`` with each id a quoted path segment."""
    parts = (view.dag_id, view.run_id, view.task_id, str(view.map_index))
    return f"{root}/" + "/".join(quote(p, safe="") for p in parts) + tail


def media_url(root: str, view: GenerationView, kind: str) -> str:
    return ti_path(f"{root}/media", view, f"/{kind}")


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S %Z").strip() if value else "—"


def cost(usage: Usage | None) -> str:
    if usage is None or (usage.credits_used is None and usage.usd_spent is None):
        return "not reported"
    parts = [] if usage.credits_used is None else [f"{usage.credits_used:g} credits"]
    if usage.usd_spent is not None:
        parts.append(f"${usage.usd_spent:g}")
    return ", ".join(parts)


def _sources(root: str, view: GenerationView, stored: bool) -> list[str]:
    """Where a ``<video>`` finds the video: the api-server's copy if it may serve it, then the vendor's."""
    sources = [media_url(root, view, "video")] if stored else []
    if _origin(view.video_url):
        sources.append(str(view.video_url))
    return sources


def _player(root: str, view: GenerationView) -> dict[str, Any]:
    """The tab's video: which copy plays, and a note saying where it was saved and why it is not
    played from there when it is not (the api-server may not read it, or it is on another machine)."""
    why_not = access.may_read(view.output_path) if view.output_path else None
    if view.output_path and why_not is None:
        try:
            access.open_media(view.output_path, "video").close()
        except access.NotServed as exc:
            why_not = str(exc)
    stored = bool(view.output_path) and why_not is None
    sources = _sources(root, view, stored)
    note = None
    if view.output_path and not stored:
        note = f"Saved to {redact_url(view.output_path)}; not shown from there: {why_not}."
        if sources:
            note += " Playing the vendor's copy, which may have expired."
    elif not view.output_path and sources:
        note = "Not saved (no output_path): playing the vendor's copy, which may have expired."
    poster = (
        media_url(root, view, "poster")
        if view.poster_path and not access.may_read(view.poster_path)
        else None
    )
    return {"sources": sources, "poster": poster, "note": note}


def _photos(root: str, view: GenerationView) -> tuple[list[dict[str, Any]], set[str]]:
    photos: list[dict[str, Any]] = []
    origins: set[str] = set()
    for i, photo in enumerate(view.photos):
        thumbnail = photo["thumbnail"]
        src = note = None
        if thumbnail and _origin(thumbnail):
            src = thumbnail  # a public URL without a query: the browser shows it from there
            origins.add(str(_origin(thumbnail)))
        elif thumbnail:
            why_not = access.may_read(thumbnail)
            src = media_url(root, view, f"photo/{i}") if why_not is None else None
            note = None if why_not is None else f"not shown: {why_not}"
        photos.append({"shown": photo["shown"], "src": src, "note": note})
    return photos, origins


def ti_page(root: str, view: GenerationView | None, task_id: str) -> Page:
    """The task-instance tab: the video playing, with what made it and what it cost.

    :param root: the app's URL prefix (``[api] base_url``'s path + ``/klingfx``).
    :param view: the generation, or None when the task instance is not one.
    :param task_id: the task, for the page that says there is no generation.
    """
    if view is None:
        html = (
            _env().get_template("ti.html").render(root=root, title="Kling video", view=None, task_id=task_id)
        )
        return Page(html, csp(set(), set()))
    player = _player(root, view)
    photos, photo_origins = _photos(root, view)
    facts = [
        ("Scene", view.scene or None),
        ("Model", view.model),
        ("Duration", f"{view.seconds} s" if view.seconds else None),
        ("Generation id", view.generation_id),
        ("Cost", cost(view.usage)),
        ("Status", view.state or "none"),
        ("Started", _when(view.start_date)),
        ("Ended", _when(view.end_date)),
        ("Took", f"{view.duration:.1f} s" if isinstance(view.duration, int | float) else None),
        ("Saved to", redact_url(view.output_path) if view.output_path else None),
    ]
    html = (
        _env()
        .get_template("ti.html")
        .render(
            root=root,
            title=f"Kling video · {view.task_id}",
            view=view,
            task_id=task_id,
            player=player,
            facts=facts,
            photos=photos,
        )
    )
    media = {o for o in map(_origin, player["sources"]) if o}
    return Page(html, csp(media, photo_origins))


def gallery_page(
    root: str,
    views: list[GenerationView],
    shown: list[GenerationView],
    filters: dict[str, str | None],
    dag_ids: list[str],
) -> Page:
    """The gallery: ``shown`` as tiles, with filters built from ``views`` (before filtering).

    Decides per tile without reading any file: the GIF preview when the api-server may read it, else
    the video (the api-server's copy when a prefix allows it, the vendor's after it).
    """
    tiles: list[dict[str, Any]] = []
    media: set[str] = set()
    for view in shown:
        gif = media_url(root, view, "gif") if view.gif_path and not access.may_read(view.gif_path) else None
        stored = bool(view.output_path) and not access.may_read(view.output_path)
        sources = _sources(root, view, stored) if view.has_video else []
        media.update(o for o in map(_origin, sources) if o)
        tiles.append(
            {
                "view": view,
                "gif": gif,
                "sources": sources,
                "href": ti_path(f"{root}/ti", view),
                "cost": cost(view.usage),
            }
        )
    chosen_dag = filters.get("dag_id")
    runs = list(dict.fromkeys(v.run_id for v in views if not chosen_dag or v.dag_id == chosen_dag))
    selects = [
        {"name": "dag_id", "label": "DAG", "options": dag_ids, "chosen": chosen_dag},
        {"name": "run_id", "label": "Run", "options": runs, "chosen": filters.get("run_id")},
        {
            "name": "scene",
            "label": "Scene",
            "options": sorted({v.scene for v in views if v.scene}),
            "chosen": filters.get("scene"),
        },
        {
            "name": "state",
            "label": "State",
            "options": sorted({v.state for v in views if v.state}),
            "chosen": filters.get("state"),
        },
    ]
    title = f"Kling videos · {chosen_dag}" if chosen_dag else "Kling videos"
    html = (
        _env()
        .get_template("gallery.html")
        .render(root=root, title=title, tiles=tiles, selects=selects, empty="No generations.")
    )
    return Page(html, csp(media, set()))
