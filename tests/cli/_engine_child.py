"""An application's engine in a child process: ``python _engine_child.py DB READY``.

It runs the ``Approval``, ``Broken`` and ``Lingering`` workflows of
``flows.py`` (imported from this folder), creates the file ``READY`` once its
engine is open, and runs until killed (or for ``LIFETIME`` seconds, so a child
whose test died never lingers).
"""

from __future__ import annotations

import sys
from pathlib import Path

import trio
from flows import Approval, Broken, Lingering

from hephaestus_trio import SQLiteStorage, open_engine

LIFETIME = 60.0


async def main(db: Path, ready: Path) -> None:
    storage = SQLiteStorage(db)
    async with open_engine(storage, workflows=[Approval, Broken, Lingering], lease_renewal=0.5):
        ready.write_text("ready")
        await trio.sleep(LIFETIME)


if __name__ == "__main__":
    trio.run(main, Path(sys.argv[1]), Path(sys.argv[2]))
