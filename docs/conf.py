"""Sphinx configuration: the Markdown pages (MyST) and the API reference (autodoc).

Built in the test suite with warnings as errors (``tests/docs/test_sphinx.py``)::

    python -m sphinx -W -b html docs docs/_build/html
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from docutils.statemachine import StringList  # noqa: E402
from pygments.lexers.special import TextLexer  # noqa: E402
from sphinx.highlighting import lexers  # noqa: E402
from sphinx.pycode import ModuleAnalyzer  # noqa: E402
from sphinx.util import logging  # noqa: E402
from sphinx.util.docutils import SphinxDirective  # noqa: E402

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
# Attribute names such as ``running`` exist on several public classes; an
# ambiguous implicit cross-reference is not an error in the text.
suppress_warnings = ["ref.python"]


# -- public constants -----------------------------------------------------------------
#
# autodoc documents the classes and functions a package re-exports, but not the
# constants and type aliases (they carry no ``__module__`` to trace them back).
# ``public-data`` lists every other name of a module's ``__all__``, with the
# docstring written under its assignment where it is defined; ``NAME: text``
# lines in the directive's content replace it (or stand in where there is
# none). A public constant with no text at all is a warning, so the build
# (``-W``) fails.

_logger = logging.getLogger(__name__)


def _defined_doc(package: str, name: str, value: Any) -> str | None:
    for module_name, module in sorted(sys.modules.items()):
        if not module_name.startswith(package.split(".")[0]) or module is None:
            continue
        if getattr(module, name, _MISSING) is not value:
            continue
        try:
            docs = ModuleAnalyzer.for_module(module_name).find_attr_docs()
        except Exception:
            continue
        found = docs.get(("", name))
        if found:
            return "\n".join(found).strip()
    return None


_MISSING = object()


class PublicData(SphinxDirective):
    """``.. public-data:: module``: a ``py:data`` entry for each constant of ``__all__``."""

    required_arguments = 1
    has_content = True

    def run(self) -> list[Any]:
        module = importlib.import_module(self.arguments[0])
        given = {}
        for line in self.content:
            if ":" in line:
                key, text = line.split(":", 1)
                given[key.strip()] = text.strip()
        lines: list[str] = []
        for name in module.__all__:
            value = getattr(module, name)
            if inspect.ismodule(value) or inspect.isclass(value) or inspect.isroutine(value):
                continue
            doc = given.get(name) or _defined_doc(module.__name__, name, value)
            if not doc:
                _logger.warning(
                    "public name %s.%s has no docstring: write one under its assignment",
                    module.__name__,
                    name,
                    location=self.get_location(),
                )
                doc = ""
            lines += [f".. py:data:: {name}", f"   :module: {module.__name__}", ""]
            lines += [f"   {text}" for text in doc.splitlines()] + [""]
        node_list: list[Any] = []
        container = StringList(lines, source=self.get_source_info()[0])
        from docutils import nodes

        section = nodes.container()
        self.state.nested_parse(container, self.content_offset, section)
        node_list.extend(section.children)
        return node_list


def setup(app: Any) -> dict[str, Any]:
    app.add_directive("public-data", PublicData)
    return {"parallel_read_safe": True}
