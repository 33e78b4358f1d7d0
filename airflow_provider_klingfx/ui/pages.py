"""HTML of the views: plain server-rendered pages, every value escaped, no script from elsewhere.

The pages live in an iframe of Airflow's UI (sandboxed: scripts and same-origin allowed, no
popups, no top navigation), so links stay inside the frame.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from airflow_provider_klingfx.domain import redact_url

if TYPE_CHECKING:
    from airflow_provider_klingfx.ui.data import GenerationView

_STYLE = """
:root { color-scheme: light dark; --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --card: #f6f8fa;
  --bad: #cf222e; --ok: #1a7f37; --run: #9a6700; }
@media (prefers-color-scheme: dark) { :root { --fg: #e6edf3; --muted: #9198a1; --line: #3d444d;
  --card: #151b23; --bad: #ff7b72; --ok: #3fb950; --run: #d29922; } }
body { font: 14px/1.45 system-ui, sans-serif; color: var(--fg); margin: 16px; }
h1 { font-size: 18px; margin: 0 0 12px; } .muted { color: var(--muted); }
.player video, .player img { max-width: 100%; max-height: 60vh; border-radius: 8px; background: #000; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; margin: 16px 0; }
dl.facts dt { color: var(--muted); } dl.facts dd { margin: 0; word-break: break-all; }
.photos { display: flex; gap: 12px; flex-wrap: wrap; }
.photos figure { margin: 0; max-width: 220px; } .photos img { max-width: 220px; max-height: 160px;
  border-radius: 6px; border: 1px solid var(--line); }
.photos figcaption { font-size: 12px; color: var(--muted); word-break: break-all; }
.error { color: var(--bad); white-space: pre-wrap; overflow-wrap: anywhere; }
.state { font-weight: 600; } .state-success { color: var(--ok); } .state-failed,
.state-upstream_failed { color: var(--bad); } .state-running, .state-deferred, .state-queued,
.state-up_for_retry { color: var(--run); }
form.filters { display: flex; gap: 12px; flex-wrap: wrap; align-items: end; margin-bottom: 16px; }
form.filters label { display: flex; flex-direction: column; font-size: 12px; color: var(--muted); }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); gap: 14px; }
.tile { border: 1px solid var(--line); border-radius: 8px; background: var(--card); overflow: hidden;
  display: flex; flex-direction: column; color: inherit; text-decoration: none; }
.tile .media { aspect-ratio: 1 / 1; background: #000; display: flex; align-items: center;
  justify-content: center; } .tile .media img, .tile .media video { width: 100%; height: 100%;
  object-fit: contain; } .tile .media .none { color: #aaa; padding: 12px; text-align: center; }
.tile .caption { padding: 8px 10px; font-size: 12px; } .tile .caption b { font-size: 13px; }
.empty { padding: 24px; color: var(--muted); }
"""


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def page(title: str, body: str) -> str:
    """A whole HTML document."""
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<meta name=viewport content='width=device-width, initial-scale=1'><title>{_e(title)}</title>"
        f"<style>{_STYLE}</style></head><body>{body}</body></html>"
    )


def ti_path(root: str, view: GenerationView, tail: str = "") -> str:
    """``{root}/…/{dag}/{run}/{task}/{map_index}{tail}`` with each id a quoted path segment."""
    parts = (view.dag_id, view.run_id, view.task_id, str(view.map_index))
    return f"{root}/" + "/".join(quote(p, safe="") for p in parts) + tail


def media_url(root: str, view: GenerationView, kind: str) -> str:
    return ti_path(f"{root}/media", view, f"/{kind}")


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S %Z").strip() if value else "—"


def _cost(usage: dict[str, Any]) -> str:
    credits, usd = usage.get("credits_used"), usage.get("usd_spent")
    if credits is None and usd is None:
        return "not reported"
    parts = [] if credits is None else [f"{credits:g} credits"]
    if usd is not None:
        parts.append(f"${usd:g}")
    return ", ".join(parts)


def _photo_figures(root: str, view: GenerationView) -> str:
    figures = []
    for i, photo in enumerate(view.request.get("photos") or []):
        if not isinstance(photo, dict):
            continue
        shown = _e(redact_url(str(photo.get("shown") or "")))
        thumb = media_url(root, view, f"photo/{i}") if photo.get("thumbnail") else None
        img = f"<img src='{_e(thumb)}' alt='photo {i + 1}' loading=lazy>" if thumb else ""
        figures.append(f"<figure>{img}<figcaption>{shown}</figcaption></figure>")
    return (
        f"<div class=photos>{''.join(figures)}</div>" if figures else "<p class=muted>no photos recorded</p>"
    )


def player(root: str, view: GenerationView) -> str:
    """The video, playing inline (its preview's poster shown first); or why there is none."""
    poster = media_url(root, view, "poster") if view.preview else None
    if view.has_video:
        poster_attr = f" poster='{_e(poster)}'" if poster else ""
        return (
            f"<div class=player><video id=klingfx-video src='{_e(media_url(root, view, 'video'))}'"
            f"{poster_attr} controls autoplay muted loop playsinline preload=auto></video></div>"
        )
    if view.error:
        return f"<p class=error id=klingfx-error>{_e(view.error)}</p>"
    return f"<p class=muted>No video yet: the task is {_e(view.state or 'not started')}.</p>"


def ti_page(root: str, view: GenerationView | None, task_id: str) -> str:
    """The task-instance tab."""
    if view is None:
        return page(
            "Kling video",
            f"<p class=empty>No Kling generation in task {_e(task_id)}: this tab shows the video of a "
            "KlingFxEffectOperator task.</p>",
        )
    request = view.request
    facts = [
        ("Scene", view.scene),
        ("Model", request.get("model")),
        ("Duration", f"{request.get('duration')} s" if request.get("duration") else None),
        ("Generation id", view.xcoms.get("generation_id")),
        ("Cost", _cost(view.usage)),
        ("Status", f"<span class='state state-{_e(view.state)}'>{_e(view.state)}</span>"),
        ("Started", _when(view.start_date)),
        ("Ended", _when(view.end_date)),
        ("Took", f"{view.duration:.1f} s" if view.duration is not None else "—"),
        ("Saved to", view.output_path),
    ]
    rows = "".join(
        f"<dt>{label}</dt><dd>{value if label == 'Status' else _e(value if value is not None else '—')}</dd>"
        for label, value in facts
    )
    error = f"<p class=error id=klingfx-error>{_e(view.error)}</p>" if view.error and view.has_video else ""
    body = (
        f"<h1>{_e(view.scene or 'Kling video')} <span class=muted>· {_e(view.task_id)}"
        f"{'' if view.map_index < 0 else f' [{view.map_index}]'}</span></h1>"
        f"{player(root, view)}{error}<dl class=facts>{rows}</dl><h2 class=muted style='font-size:14px'>"
        f"Photos</h2>{_photo_figures(root, view)}"
    )
    return page(f"Kling video · {view.task_id}", body)


def _tile(root: str, view: GenerationView) -> str:
    if view.preview and view.has_video:
        media = (
            f"<img src='{_e(media_url(root, view, 'gif'))}' alt='preview of {_e(view.task_id)}' loading=lazy>"
        )
    elif view.has_video:
        # No preview (or no `preview` extra): the MP4 itself, its first frame until hovered.
        media = (
            f"<video src='{_e(media_url(root, view, 'video'))}' muted loop playsinline preload=metadata "
            "onmouseenter='this.play()' onmouseleave='this.pause()'></video>"
        )
    elif view.error:
        media = f"<div class='none error'>{_e(view.error)}</div>"
    else:
        media = f"<div class=none>{_e(view.state or 'not started')}</div>"
    mapped = "" if view.map_index < 0 else f" [{view.map_index}]"
    # A failure without a video says why in the picture's place; one after the video (saving it
    # failed, say) says it under the caption.
    reason = f"<div class=error>{_e(view.error)}</div>" if view.error and view.has_video else ""
    return (
        f"<a class=tile data-state='{_e(view.state)}' href='{_e(ti_path(f'{root}/ti', view))}'>"
        f"<div class=media>{media}</div><div class=caption><b>{_e(view.scene)}</b> "
        f"<span class='state state-{_e(view.state)}'>{_e(view.state)}</span><br>"
        f"<span class=muted>{_e(view.dag_id)} · {_e(view.task_id)}{mapped}<br>{_e(view.run_id)}</span>"
        f"<br>{_e(_cost(view.usage))}{reason}</div></a>"
    )


def _select(name: str, label: str, options: Iterable[str], chosen: str | None) -> str:
    items = "".join(
        f"<option value='{_e(o)}'{' selected' if o == chosen else ''}>{_e(o)}</option>" for o in options
    )
    return (
        f"<label>{label}<select name={name} onchange='this.form.submit()'><option value=''>all</option>"
        f"{items}</select></label>"
    )


def gallery_page(
    root: str,
    views: list[GenerationView],
    shown: list[GenerationView],
    filters: dict[str, str | None],
    dag_ids: Iterable[str],
) -> str:
    """The gallery: ``shown`` as tiles, with filters built from ``views`` (before filtering)."""
    runs = dict.fromkeys(
        v.run_id for v in views if not filters.get("dag_id") or v.dag_id == filters["dag_id"]
    )
    form = (
        f"<form class=filters method=get action='{_e(root)}/gallery'>"
        + _select("dag_id", "DAG", sorted(dag_ids), filters.get("dag_id"))
        + _select("run_id", "Run", list(runs), filters.get("run_id"))
        + _select("scene", "Scene", sorted({v.scene for v in views if v.scene}), filters.get("scene"))
        + _select("state", "State", sorted({v.state for v in views if v.state}), filters.get("state"))
        + "<noscript><button>Filter</button></noscript></form>"
    )
    tiles = "".join(_tile(root, v) for v in shown)
    count = f"<p class=muted id=klingfx-count>{len(shown)} generation{'s' if len(shown) != 1 else ''}</p>"
    grid = (
        f"<div class=grid id=klingfx-gallery>{tiles}</div>" if shown else "<p class=empty>No generations.</p>"
    )
    title = f"Kling videos · {filters['dag_id']}" if filters.get("dag_id") else "Kling videos"
    return page(title, f"<h1>{_e(title)}</h1>{form}{count}{grid}")
