"""Check the links of the built docs site and of the README, offline (``make docs`` runs it).

Nothing here can reach a website, so external links are not checked; everything that points inside
the project is:

* in the built site (``--site docs/_build/html``): every ``href`` and ``src`` that is not an external
  URL must name a file of the site, and its ``#anchor`` an ``id`` in that file. Sphinx's own
  ``linkcheck`` checks that local files exist, not anchors;
* in Markdown files (the README): links must be absolute, since PyPI shows the README without the
  repository beside it. Links into the repository (``github.com/<repo>/blob|tree/main/<path>``,
  ``raw.githubusercontent.com/<repo>/main/<path>``) must name a file or folder that exists, and links
  into the docs site (:data:`DOCS_URL`) a page of the built site and, with ``#anchor``, an ``id`` in it.

    python scripts/check_links.py --site docs/_build/html README.md

Exits 1 and prints one line per broken link.
"""

from __future__ import annotations

import argparse
import re
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parents[1]
REPO = "airflow-provider-klingfx/airflow-provider-klingfx"
#: Where the docs site is published; README links into it are checked against the built site.
DOCS_ROOT = "https://airflow-provider-klingfx.readthedocs.io"
DOCS_URL = f"{DOCS_ROOT}/en/latest/"
REPO_URLS = (
    re.compile(rf"^https://github\.com/{REPO}/(?:blob|tree)/main/(?P<path>[^#?]*)"),
    re.compile(rf"^https://raw\.githubusercontent\.com/{REPO}/main/(?P<path>[^#?]*)"),
)
# [text](url), ![alt](url) and [label]: url; a title after the URL ("...") is allowed.
MARKDOWN_LINK = re.compile(
    r"\]\((?P<a>[^)\s]+)(?:\s+\"[^\"]*\")?\)|^\s*\[[^\]]+\]:\s*(?P<b>\S+)", re.MULTILINE
)


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value is None:
                continue
            if name in ("id", "name") and (name == "id" or tag == "a"):
                self.ids.add(value)
            elif (name == "href" and tag in ("a", "link")) or (name == "src" and tag in ("img", "script")):
                self.links.append(value)


def _external(url: str) -> bool:
    return bool(urlsplit(url).scheme)


def parse_site(site: Path) -> dict[Path, _Page]:
    pages = {}
    for path in sorted(site.rglob("*.html")):
        page = _Page()
        page.feed(path.read_text(encoding="utf-8"))
        pages[path.resolve()] = page
    return pages


def check_site(site: Path, pages: dict[Path, _Page]) -> list[str]:
    broken = []
    for path, page in pages.items():
        for link in page.links:
            if _external(link):
                continue
            parts = urlsplit(link)
            target = (path.parent / unquote(parts.path)).resolve() if parts.path else path
            where = f"{path.relative_to(site.resolve())}: {link}"
            if not target.exists():
                broken.append(f"{where}: no such file")
            elif parts.fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else set()
                if unquote(parts.fragment) not in ids:
                    broken.append(f"{where}: no anchor #{parts.fragment} in {target.name}")
    return broken


def check_markdown(doc: Path, site: Path | None, pages: dict[Path, _Page]) -> list[str]:
    broken = []
    for match in MARKDOWN_LINK.finditer(doc.read_text(encoding="utf-8")):
        url = match.group("a") or match.group("b")
        where = f"{doc.name}: {url}"
        if url.startswith("mailto:"):
            continue
        if not _external(url):
            broken.append(f"{where}: not an absolute URL (PyPI shows the README without the repository)")
            continue
        for pattern in REPO_URLS:
            repo_path = pattern.match(url)
            if repo_path:
                if not (ROOT / unquote(repo_path["path"])).exists():
                    broken.append(f"{where}: {repo_path['path']} is not in the repository")
                break
        else:
            if url.startswith(DOCS_URL) and site is not None:
                parts = urlsplit(url[len(DOCS_URL) :])
                target = (site / (unquote(parts.path) or "index.html")).resolve()
                if target not in pages:
                    broken.append(f"{where}: no page {parts.path or 'index.html'} in the docs site")
                elif parts.fragment and parts.fragment not in pages[target].ids:
                    broken.append(f"{where}: no anchor #{parts.fragment} in {target.name}")
            elif url.startswith(DOCS_ROOT) and url.rstrip("/") != DOCS_ROOT:
                broken.append(f"{where}: links into the docs start with {DOCS_URL}")
    return broken


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--site", type=Path, help="the built HTML site (docs/_build/html)")
    parser.add_argument("markdown", nargs="*", type=Path, help="Markdown files whose links to check")
    args = parser.parse_args()
    pages = parse_site(args.site) if args.site else {}
    broken = check_site(args.site, pages) if args.site else []
    for doc in args.markdown:
        broken += check_markdown(doc, args.site, pages)
    for line in broken:
        print(f"broken link: {line}", file=sys.stderr)
    sources = [f"{len(pages)} pages of {args.site}"] if args.site else []
    checked = ", ".join([*sources, *map(str, args.markdown)])
    print(f"links checked offline ({checked}): {len(broken)} broken")
    sys.exit(1 if broken else 0)


if __name__ == "__main__":
    main()
