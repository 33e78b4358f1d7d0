"""Sphinx configuration of the airflow-provider-klingfx docs (``make docs``).

Built with warnings as errors and nitpicky cross-references (``sphinx-build -W -n``), so a page that
names a class, a module or another page that does not exist fails the build. There is no internet
where the docs are built: no intersphinx. References to other projects' objects (Airflow, requests,
aiohttp, the standard library) cannot resolve without it, and are listed in ``nitpick_ignore_regex``
below by package; references to this package's own objects must resolve.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The package is installed editable by `make docs`; the path makes a plain sphinx-build work too.
sys.path.insert(0, str(ROOT))

from airflow_provider_klingfx import __version__  # noqa: E402

project = "airflow-provider-klingfx"
author = "airflow-provider-klingfx maintainers"
copyright = "the airflow-provider-klingfx maintainers; Apache License 2.0"
version = release = __version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
]

exclude_patterns = ["_build"]
# Pages are reStructuredText, as Airflow's provider docs are.
source_suffix = {".rst": "restructuredtext"}
root_doc = "index"
# `code` in a page is a literal, as in Markdown and Airflow's docs.
default_role = "literal"
# Literal blocks (`::`) are log lines and messages; code blocks name their language.
highlight_language = "none"

# -- API reference (autodoc) --------------------------------------------------------------------------
autodoc_default_options = {
    "members": True,
    "show-inheritance": True,
}
# Classes read in the order their module defines them: the operator before its helpers.
autodoc_member_order = "bysource"
# The class docstring carries the parameters (Airflow's :param: style); __init__ has none of its own.
autoclass_content = "class"
autodoc_typehints = "signature"
# Annotations stay as written (the modules use `from __future__ import annotations` and import
# Airflow's types only for type checking).
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True

# Objects of other projects (no intersphinx offline) and this package's private modules, which the
# reference does not document: a reference to them is a plain name, not an error. Everything else
# must resolve.
nitpick_ignore_regex = [
    (r"py:.*", r"(airflow|requests|aiohttp|urllib3|yarl|tenacity|pendulum|fsspec|upath|PIL|av)(\..*)?"),
    (r"py:.*", r"(datetime|collections\.abc|typing|logging|contextlib|pathlib|asyncio|enum)\..*"),
    (r"py:.*", r"airflow_provider_klingfx\._.*"),
    # Airflow's and the standard library's types, shown by their short names in signatures (the modules
    # import them under TYPE_CHECKING or by name).
    (r"py:class", r"(Context|ObjectStoragePath|TaskInstanceKey|PokeReturnValue|BaseOperator|timedelta)"),
]

# -- HTML -----------------------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"airflow-provider-klingfx {release}"
html_static_path: list[str] = []
html_show_sourcelink = False
html_theme_options = {
    "source_repository": "https://github.com/airflow-provider-klingfx/airflow-provider-klingfx/",
    "source_branch": "main",
    "source_directory": "docs/",
}

# -- Link check (`make docs` runs it offline) ------------------------------------------------------------
# The machines that build the docs reach no website, so external links are not checked; local ones
# (pages, files, images) are, and `scripts/check_links.py` checks every internal anchor of the built
# site and the README's links into it.
linkcheck_ignore = [r"https?://"]
