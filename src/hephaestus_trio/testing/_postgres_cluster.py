"""``PostgresCluster``: a throwaway PostgreSQL server for tests and benchmarks.

Why a helper of our own: the PostgreSQL backend is only believable when it is
tested against a real server, and a test run (ours, or a user's testing their
own workflows) must not depend on a server someone configured by hand. So the
helper runs ``initdb`` and ``pg_ctl`` itself, in a fresh temporary directory,
on a free loopback port, and removes everything when the ``with`` block ends.

Choices, each for a reason:

- **Loopback only, trust authentication.** The cluster lives for one test run
  and listens on ``127.0.0.1`` (plus a unix socket in its own directory), so
  no password is needed and nothing is reachable from another machine.
- **``fsync`` on by default.** Benchmarks need real durability to mean
  anything; a test suite may pass ``fsync=False`` for speed (a crash of the
  machine loses a throwaway cluster, nothing else).
- **Never as root.** PostgreSQL refuses to run as root; when the current
  process is root, every server binary runs as the ``postgres`` system user
  (``runuser``, else ``setpriv``) and the temporary directory is given to it.
- **Fail loudly.** No PostgreSQL installed, or a server that does not start,
  raises ``StorageError`` with the log tail and what to install; a test that
  needs PostgreSQL must never skip silently.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from .._errors import StorageError

__all__ = ["PostgresCluster", "find_postgres_bindir"]

_INSTALL_HINT = (
    "install PostgreSQL's server binaries (Debian/Ubuntu: 'apt-get install postgresql'; "
    "macOS: 'brew install postgresql'), or pass bindir= naming the folder holding initdb"
)
_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_SERVER_USER = "postgres"


def _version_key(path: str) -> tuple[int, ...]:
    parts = Path(path).parent.name.split(".")
    return tuple(int(part) for part in parts if part.isdigit())


def find_postgres_bindir() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``, or ``None`` if PostgreSQL is not installed.

    Looked up on ``PATH`` first (what the user chose), then through
    ``pg_config --bindir`` (a client package may put only ``pg_config`` on the
    PATH), then in Debian's ``/usr/lib/postgresql/<version>/bin`` (newest
    version first), because Debian does not put the server binaries on the PATH.
    """
    on_path = shutil.which("initdb")
    if on_path is not None and shutil.which("pg_ctl") is not None:
        return Path(os.path.realpath(on_path)).parent
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=30, check=True
            ).stdout.strip()
            if out and (Path(out) / "initdb").exists() and (Path(out) / "pg_ctl").exists():
                return Path(out)
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key, reverse=True
    )
    for candidate in candidates:
        folder = Path(candidate).parent
        if (folder / "pg_ctl").exists():
            return folder
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PostgresCluster:
    """A PostgreSQL server of its own, started by ``with`` and removed afterwards.

    Synopsis::

        with PostgresCluster(fsync=False) as cluster:
            dsn = cluster.create_database("orders_test")
            async with PostgresStorage(dsn) as storage:
                ...

    Args:
        fsync: keep PostgreSQL's ``fsync`` on (the default, real durability,
            what benchmarks need) or turn it off (faster tests; a machine
            crash then corrupts the throwaway cluster, nothing else).
        settings: extra ``postgresql.conf`` settings, e.g.
            ``{"max_connections": "300"}``.
        bindir: the folder holding ``initdb``/``pg_ctl``; found with
            ``find_postgres_bindir`` when not given.
        base_dir: where to create the temporary directory (the system's
            temporary folder by default; benchmarks pass a folder on the real
            disk, since ``/tmp`` may be in memory).

    Raises:
        StorageError: no PostgreSQL is installed, the process is root and no
            ``postgres`` user exists, or the server does not start (the
            message carries the server log's tail).
    """

    def __init__(
        self,
        *,
        fsync: bool = True,
        settings: Mapping[str, str] | None = None,
        bindir: str | os.PathLike[str] | None = None,
        base_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.fsync = fsync
        self._settings = dict(settings or {})
        self._bindir_arg = Path(bindir) if bindir is not None else None
        self._base_dir = base_dir
        self._root: Path | None = None
        self._port: int | None = None
        self._running = False

    # -- public surface ---------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port on 127.0.0.1 (fixed for the cluster's life, across ``restart``)."""
        if self._port is None:
            raise StorageError("the PostgresCluster is not started; use it in a 'with' block")
        return self._port

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory (inside the temporary directory)."""
        return self._require_root() / "data"

    @property
    def socket_dir(self) -> Path:
        """The folder holding the server's unix socket."""
        return self._require_root() / "socket"

    @property
    def log_file(self) -> Path:
        """The server log (its tail is part of every start failure's message)."""
        return self._require_root() / "server.log"

    @property
    def running(self) -> bool:
        """Whether the server is started (``stop`` and ``start`` change it)."""
        return self._running

    @property
    def dsn(self) -> str:
        """The DSN of the ``postgres`` maintenance database, as the superuser."""
        return self.dsn_for("postgres")

    def dsn_for(self, database: str) -> str:
        """The DSN of ``database`` on this cluster, as the superuser ``postgres``."""
        return f"postgresql://{_SERVER_USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create an empty database and return its DSN (one per test keeps tests apart).

        Raises:
            StorageError: ``name`` is not a plain lower-case identifier, or the
                server refused (e.g. the database exists).
        """
        self._check_name(name)
        # FILE_COPY (PostgreSQL 15+; older servers always copy files) is the
        # faster way to clone the small template of a throwaway cluster.
        version = int(self.execute("SHOW server_version_num")[0][0])
        strategy = " STRATEGY = FILE_COPY" if version >= 150000 else ""
        self.execute(f'CREATE DATABASE "{name}"{strategy}')
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, disconnecting its sessions first (``WITH (FORCE)``)."""
        self._check_name(name)
        self.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def terminate_backends(
        self, *, database: str | None = None, application_name: str | None = None
    ) -> int:
        """Kill server sessions (``pg_terminate_backend``), as a network failure would.

        Only client sessions are killed, never this call's own. ``database``
        and ``application_name`` narrow the choice; with neither, every client
        session goes. Returns how many sessions were terminated.
        """
        query = (
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE pid <> pg_backend_pid() AND backend_type = 'client backend'"
        )
        params: list[str] = []
        if database is not None:
            query += " AND datname = %s"
            params.append(database)
        if application_name is not None:
            query += " AND application_name = %s"
            params.append(application_name)
        rows = self.execute(query, params)
        return int(rows[0][0]) if rows else 0

    def execute(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run one statement on the maintenance database (autocommit) and return its rows."""
        psycopg = _import_psycopg()
        with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as conn:
            cursor = conn.execute(query, params if params else None)
            return list(cursor.fetchall()) if cursor.description is not None else []

    def start(self) -> None:
        """Start the server on the existing data directory (``initdb`` runs on first start)."""
        if self._running:
            return
        root = self._require_root()
        if not (root / "data" / "PG_VERSION").exists():
            self._initdb()
        result = self._run_server_binary(
            [
                "pg_ctl",
                "start",
                "-w",
                "-t",
                "60",
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_file),
            ],
            timeout=90,
        )
        if result.returncode != 0:
            raise StorageError(
                f"PostgreSQL did not start on 127.0.0.1:{self.port} (pg_ctl exit code "
                f"{result.returncode}): {result.stderr.strip() or result.stdout.strip()}\n"
                f"server log tail:\n{self._log_tail()}"
            )
        self._running = True

    def stop(self, *, mode: str = "fast") -> None:
        """Stop the server (``pg_ctl stop -m fast`` by default; ``immediate`` is a crash)."""
        if not self._running:
            return
        if mode not in ("smart", "fast", "immediate"):
            raise StorageError(f"pg_ctl stop mode {mode!r} is not one of smart, fast, immediate")
        result = self._run_server_binary(
            ["pg_ctl", "stop", "-w", "-t", "60", "-m", mode, "-D", str(self.data_dir)],
            timeout=90,
        )
        if result.returncode != 0:
            raise StorageError(
                f"PostgreSQL did not stop (pg_ctl exit code {result.returncode}): "
                f"{result.stderr.strip()}\nserver log tail:\n{self._log_tail()}"
            )
        self._running = False

    def restart(self, *, mode: str = "fast") -> None:
        """Stop and start the server on the same data directory and port.

        Clients see their connections dropped, as in a real database restart.
        """
        self.stop(mode=mode)
        self.start()

    def __enter__(self) -> PostgresCluster:
        self._bindir = self._resolve_bindir()
        self._server_user = self._resolve_server_user()
        self._root = Path(tempfile.mkdtemp(prefix="hephaestus-pg-", dir=self._base_dir))
        try:
            (self._root / "socket").mkdir()
            if self._server_user is not None:
                uid, gid = self._server_user
                for path in (self._root, self._root / "socket"):
                    os.chown(path, uid, gid)
            self._port = _free_port()
            self.start()
        except BaseException:
            self._cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._cleanup()

    def __repr__(self) -> str:
        where = f"127.0.0.1:{self._port}" if self._port is not None else "not started"
        return f"PostgresCluster({where}, fsync={self.fsync})"

    # -- internals --------------------------------------------------------

    def _cleanup(self) -> None:
        try:
            if self._running:
                with contextlib.suppress(StorageError, OSError, subprocess.SubprocessError):
                    self.stop(mode="immediate")
        finally:
            if self._root is not None:
                shutil.rmtree(self._root, ignore_errors=True)
            self._root = None
            self._running = False

    def _require_root(self) -> Path:
        if self._root is None:
            raise StorageError("the PostgresCluster is not started; use it in a 'with' block")
        return self._root

    @staticmethod
    def _check_name(name: str) -> None:
        if not _NAME.match(name):
            raise StorageError(
                f"database name {name!r} is not a plain identifier; use lower-case letters, "
                "digits and '_' (at most 63 characters, not starting with a digit)"
            )

    def _resolve_bindir(self) -> Path:
        bindir = self._bindir_arg or find_postgres_bindir()
        if bindir is None or not (bindir / "initdb").exists():
            where = f"in {bindir}" if bindir is not None else "on PATH, via pg_config, or in "
            raise StorageError(
                "PostgreSQL server binaries (initdb, pg_ctl) not found "
                f"{where}{'' if bindir is not None else '/usr/lib/postgresql/*/bin'}; "
                + _INSTALL_HINT
            )
        return bindir

    @staticmethod
    def _resolve_server_user() -> tuple[int, int] | None:
        if os.geteuid() != 0:
            return None
        try:
            entry = pwd.getpwnam(_SERVER_USER)
        except KeyError:
            raise StorageError(
                "running as root, and PostgreSQL refuses to run as root, but there is no "
                f"{_SERVER_USER!r} system user to run it as; install Debian's 'postgresql' "
                "package (it creates the user) or run the tests as a non-root user"
            ) from None
        if shutil.which("runuser") is None and shutil.which("setpriv") is None:
            raise StorageError(
                "running as root: need 'runuser' or 'setpriv' (util-linux) to run PostgreSQL "
                f"as the {_SERVER_USER!r} user; install util-linux or run as a non-root user"
            )
        return entry.pw_uid, entry.pw_gid

    def _command(self, argv: list[str]) -> list[str]:
        command = [str(self._bindir / argv[0]), *argv[1:]]
        if self._server_user is None:
            return command
        runuser = shutil.which("runuser")
        if runuser is not None:
            return [runuser, "-u", _SERVER_USER, "--", *command]
        return [
            str(shutil.which("setpriv")),
            f"--reuid={self._server_user[0]}",
            f"--regid={self._server_user[1]}",
            "--init-groups",
            *command,
        ]

    def _run_server_binary(
        self, argv: list[str], *, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ)
        env.pop("PGDATA", None)
        env["LC_ALL"] = "C"
        try:
            return subprocess.run(
                self._command(argv),
                capture_output=True,
                text=True,
                timeout=timeout,
                env=env,
                cwd=self._require_root(),
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise StorageError(
                f"could not run PostgreSQL's {argv[0]} ({exc}); {_INSTALL_HINT}"
            ) from exc

    def _initdb(self) -> None:
        result = self._run_server_binary(
            [
                "initdb",
                "-D",
                str(self.data_dir),
                "-U",
                _SERVER_USER,
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                *(() if self.fsync else ("--no-sync",)),
            ],
            timeout=180,
        )
        if result.returncode != 0:
            raise StorageError(
                f"initdb failed (exit code {result.returncode}):\n"
                f"{(result.stderr or result.stdout).strip()[-2000:]}\n{_INSTALL_HINT}"
            )
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            "fsync": "on" if self.fsync else "off",
            "max_connections": "200",
            **self._settings,
        }
        if not self.fsync:
            settings.setdefault("synchronous_commit", "off")
            settings.setdefault("full_page_writes", "off")
        lines = "".join(f"{key} = {value}\n" for key, value in settings.items())
        with open(self.data_dir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.write("\n# hephaestus_trio.testing.PostgresCluster\n" + lines)

    def _log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no server log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty server log)"


def _import_psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise StorageError(
            "PostgresCluster needs psycopg to create databases; install the 'postgres' "
            "extra: pip install 'hephaestus-trio[postgres]'"
        ) from None
    return psycopg
