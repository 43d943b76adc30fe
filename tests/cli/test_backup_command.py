"""``hephaestus-trio backup``: a safe copy of a live database, with progress on stderr."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
import trio

from hephaestus_trio import SQLiteStorage
from hephaestus_trio.cli import main


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A hephaestus-trio database (schema from ``open``) with some bulk in a side table.

    The rows are plain sqlite3: the backup copies pages, whatever they hold.
    """
    path = tmp_path / "app.db"

    async def create() -> None:
        async with SQLiteStorage(path):
            pass

    trio.run(create)
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("CREATE TABLE bulk (n INTEGER, text TEXT)")
        conn.executemany("INSERT INTO bulk VALUES (?, ?)", [(n, "x" * 400) for n in range(300)])
    return path


def bulk_count(path: Path) -> int:
    with closing(sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)) as conn:
        return int(conn.execute("SELECT count(*) FROM bulk").fetchone()[0])


def test_backup_copies_and_prints_progress(
    capsys: pytest.CaptureFixture[str], db: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "backup.db"
    code, out, err = run_cli(
        capsys, "backup", "--storage", f"sqlite:///{db}", str(dest), "--pages-per-step", "10"
    )
    assert code == 0, err
    lines = err.strip().splitlines()
    assert len(lines) > 3  # one per 10 pages
    assert all(line.startswith("backup: ") and " pages (" in line for line in lines)
    total = lines[-1].split("/")[1].split()[0]
    assert lines[-1] == f"backup: {total}/{total} pages (100%)"
    assert f"backed up {db} to {dest}" in out
    assert "needs no -wal" in out
    assert bulk_count(dest) == 300
    assert not Path(f"{dest}-wal").exists()
    # The copy is a hephaestus-trio database the other commands read.
    code, out, _ = run_cli(capsys, "list", "--storage", f"sqlite:///{dest}")
    assert (code, out.strip()) == (0, "no runs match")


def test_backup_includes_commits_still_in_the_wal(
    capsys: pytest.CaptureFixture[str], db: Path, tmp_path: Path
) -> None:
    writer = sqlite3.connect(db, isolation_level=None)
    try:
        writer.execute("PRAGMA wal_autocheckpoint=0")
        writer.executemany("INSERT INTO bulk VALUES (?, ?)", [(n, "z") for n in range(300, 320)])
        assert Path(f"{db}-wal").stat().st_size > 0
        naive = tmp_path / "naive.db"
        naive.write_bytes(db.read_bytes())
        assert bulk_count(naive) == 300  # the 20 newest rows were only in the -wal
        dest = tmp_path / "backup.db"
        code, _, err = run_cli(capsys, "backup", "--storage", f"sqlite:///{db}", str(dest))
        assert code == 0, err
    finally:
        writer.close()
    assert bulk_count(dest) == 320


def test_an_existing_destination_needs_force(
    capsys: pytest.CaptureFixture[str], db: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "backup.db"
    dest.write_bytes(b"an older backup")
    code, _, err = run_cli(capsys, "backup", "--storage", f"sqlite:///{db}", str(dest))
    assert_one_line_error(code, err, str(dest), "refusing to overwrite", "--force")
    assert dest.read_bytes() == b"an older backup"
    code, _, err = run_cli(capsys, "backup", "--storage", f"sqlite:///{db}", str(dest), "--force")
    assert code == 0, err
    assert bulk_count(dest) == 300


@pytest.mark.parametrize(
    ("storage", "fragment"),
    [
        ("memory://", "is not one"),
        ("sqlite:///{tmp}/missing.db", "no SQLite database"),
    ],
)
def test_backup_needs_an_existing_sqlite_database(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, storage: str, fragment: str
) -> None:
    dest = tmp_path / "backup.db"
    code, _, err = run_cli(capsys, "backup", "--storage", storage.format(tmp=tmp_path), str(dest))
    assert_one_line_error(code, err, fragment)
    assert not dest.exists()
    assert not (tmp_path / "missing.db").exists()


def test_backup_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["backup"]) == 2  # DEST is required
    assert main(["backup", "x.db", "--pages-per-step", "0"]) == 2
    capsys.readouterr()
    assert main(["backup", "--help"]) == 0
    assert "-wal" in capsys.readouterr().out
