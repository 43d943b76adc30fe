"""Every ```python block of README.md and docs/ runs, as a complete script (see ``_snippets``)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from ._snippets import POSTGRES_VARIABLE, ROOT, Snippet, all_snippets, blocks, run_snippet

SNIPPETS = all_snippets()

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[s.label for s in SNIPPETS])
def test_snippet_runs(snippet: Snippet, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    env = {}
    if snippet.needs_postgres:
        # A PostgreSQL block: the suite's PostgreSQL fixture provides the server.
        env[POSTGRES_VARIABLE] = request.getfixturevalue("postgres_dsn")
    done = run_snippet(snippet, tmp_path, env=env)
    assert done.returncode == 0, (
        f"{snippet.label} failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"
    )


def test_there_are_snippets_on_every_page_that_has_python() -> None:
    pages = {s.page.name for s in SNIPPETS}
    assert {"README.md", "getting-started.md", "testing.md", "web-app.md", "routes.md"} <= pages


def test_the_collector_reads_fences_and_info_strings() -> None:
    text = textwrap.dedent(
        """\
        intro
        ```python
        print("a")
        ```
        ```console
        $ hephaestus-trio demo
        ```
        - item

          ```python
          x = 1
          ```
        ````python
        s = "```"
        ````
        """
    )
    found = blocks(text)
    assert [(line, info) for line, info, _ in found] == [
        (2, "python"),
        (5, "console"),
        (10, "python"),
        (13, "python"),
    ]
    assert found[2][2] == "x = 1\n"
    assert found[3][2] == 's = "```"\n'


def test_module_blocks_and_postgres_blocks_are_recognized() -> None:
    page = ROOT / "docs" / "x.md"
    module = Snippet(page=page, line=1, code="# orders.py\nX = 1\n")
    assert module.module == "orders.py"
    assert Snippet(page=page, line=1, code="# a comment\n").module is None
    postgres = Snippet(page=page, line=1, code=f"os.environ['{POSTGRES_VARIABLE}']\n")
    assert postgres.needs_postgres
    assert not module.needs_postgres


def test_a_failing_snippet_fails(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("```python\nraise SystemExit(3)\n```\n")
    snippet = Snippet(page=page, line=1, code="raise SystemExit(3)\n")
    done = run_snippet(snippet, tmp_path)
    assert done.returncode == 3
