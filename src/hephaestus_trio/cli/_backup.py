"""The command ``backup``: a safe copy of a live SQLite database, with progress on stderr.

It copies through SQLite's online backup API (``storage/_sqlite_backup.py``),
so commits still in the ``-wal`` file are included, running engines are not
blocked, and the copy needs no ``-wal`` of its own. In a module of its own, as
it shares nothing with the run commands but ``open_storage``.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..storage import SQLiteStorage
from ..storage._sqlite_backup import backup_sqlite
from ._commands import CLIError, open_storage

__all__ = ["cmd_backup"]


def cmd_backup(args: argparse.Namespace) -> int:
    """Copy the ``--storage`` SQLite database to ``DEST``; progress lines go to stderr."""
    storage = open_storage(args.storage)
    if not isinstance(storage, SQLiteStorage):
        raise CLIError(
            f"backup copies an SQLite database; {args.storage!r} is not one "
            "(back up PostgreSQL with its own tools: pg_dump, or a base backup)"
        )

    def report(copied: int, total: int) -> None:
        percent = 100 * copied // total if total else 100
        print(f"backup: {copied}/{total} pages ({percent}%)", file=sys.stderr, flush=True)

    backup_sqlite(
        storage.path,
        args.dest,
        progress=report,
        pages_per_step=args.pages_per_step,
        overwrite=args.force,
    )
    size = os.path.getsize(args.dest)
    print(
        f"backed up {storage.path} to {args.dest} ({size} bytes): a consistent copy of "
        "every commit before the backup started; it needs no -wal file"
    )
    return 0
