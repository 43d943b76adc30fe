"""Find the ```python blocks of the Markdown pages, and run one as a script.

Every ```python block in README.md and docs/*.md is a complete program. A
block whose first line is ``# NAME.py`` is also a module: it is saved as
``NAME.py`` next to the page's other blocks, so a later block on the same page
may import it (the page says so, as a reader would save the file). Shell
sessions are ```console or ```bash blocks and are not run.

A block that mentions ``HEPHAESTUS_POSTGRES_DSN`` needs a PostgreSQL server:
its test asks for the ``postgres_dsn`` fixture and passes the DSN in that
environment variable.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import attrs

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
POSTGRES_VARIABLE = "HEPHAESTUS_POSTGRES_DSN"
TIMEOUT = 120.0
"""Real seconds one block may run (the slowest sleep on real time for a few seconds)."""

_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+|~~~+)(?P<info>[^\n`]*)$")
_MODULE = re.compile(r"^# (?P<name>[A-Za-z_][A-Za-z0-9_]*\.py)\s*$")


@attrs.frozen
class Snippet:
    """One ```python block."""

    page: Path
    line: int
    """Line of the opening fence, from 1."""
    code: str

    @property
    def label(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def module(self) -> str | None:
        """``NAME.py`` when the block's first line names the file it is."""
        first = self.code.split("\n", 1)[0]
        match = _MODULE.match(first)
        return match["name"] if match else None

    @property
    def needs_postgres(self) -> bool:
        return POSTGRES_VARIABLE in self.code


def blocks(text: str) -> list[tuple[int, str, str]]:
    """``(line, info, code)`` of every fenced block of a Markdown text."""
    found = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        body = []
        j = i + 1
        while j < len(lines) and not re.match(rf"^ *{re.escape(fence)}\s*$", lines[j]):
            body.append(lines[j][indent:] if lines[j][:indent].strip() == "" else lines[j])
            j += 1
        found.append((i + 1, opening["info"].strip(), "\n".join(body) + "\n"))
        i = j + 1
    return found


def page_snippets(page: Path) -> list[Snippet]:
    return [
        Snippet(page=page, line=line, code=code)
        for line, info, code in blocks(page.read_text(encoding="utf-8"))
        if info.split(" ")[0] in ("python", "py", "python3")
    ]


def all_snippets() -> list[Snippet]:
    return [snippet for page in PAGES for snippet in page_snippets(page)]


def run_snippet(
    snippet: Snippet, workdir: Path, *, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``snippet`` as a script in ``workdir``, the page's module blocks saved beside it."""
    for other in page_snippets(snippet.page):
        if other.module is not None:
            (workdir / other.module).write_text(other.code, encoding="utf-8")
    script = workdir / "snippet.py"
    script.write_text(snippet.code, encoding="utf-8")
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(workdir)]),
        "PYTHONDONTWRITEBYTECODE": "1",
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        cwd=workdir,
        env=environment,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
