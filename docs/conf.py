"""Sphinx configuration: the Markdown pages (MyST) and the API reference (autodoc).

Built in the test suite with warnings as errors (``tests/docs/test_sphinx.py``)::

    python -m sphinx -W -b html docs docs/_build/html
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from pygments.lexers.special import TextLexer  # noqa: E402
from sphinx.highlighting import lexers  # noqa: E402

from hephaestus_trio import __version__  # noqa: E402

# Mermaid diagrams are shown as their source (GitHub renders them).
lexers["mermaid"] = TextLexer()

project = "hephaestus-trio"
author = "the hephaestus-trio authors"
copyright = "the hephaestus-trio authors"
release = __version__
version = __version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# Markdown pages link to each other's sections as page.md#section.
myst_heading_anchors = 4
myst_enable_extensions = ["colon_fence"]

html_theme = "furo"
html_title = f"hephaestus-trio {release}"

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "undoc-members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
