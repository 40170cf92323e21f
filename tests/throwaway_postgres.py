"""A throwaway PostgreSQL server for the tests and bench/load_test.py: initdb in a temporary
folder, started on 127.0.0.1 at a free port, stopped and deleted afterwards.

PostgreSQL refuses to run as root; as root the server runs as the `postgres` user that Debian's
package makes (or `nobody`), which owns the folder.
"""
import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Iterator


def binaries() -> Path | None:
    """The folder holding initdb and pg_ctl: on PATH, else Debian's /usr/lib/postgresql/VERSION/bin."""
    found = shutil.which("initdb")
    folders = ([Path(found).resolve().parent] if found else []) + [
        Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]),
                                reverse=True)]
    return next((f for f in folders if (f / "initdb").exists() and (f / "pg_ctl").exists()), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[str]:
    """Yield the URL of the server's `postgres` database (user vqc, trust authentication)."""
    folder = binaries()
    if folder is None:
        raise RuntimeError("no PostgreSQL binaries (initdb, pg_ctl): apt-get install postgresql")
    as_root = os.geteuid() == 0
    # as root, under /tmp: the server's user must be able to reach the folder (root's TMPDIR may be private)
    root = Path(tempfile.mkdtemp(prefix="vqc-postgres-", dir="/tmp" if as_root else None))
    run_as: list[str] = []
    if as_root:
        user = "postgres" if "postgres" in {u.pw_name for u in pwd.getpwall()} else "nobody"
        os.chown(root, pwd.getpwnam(user).pw_uid, -1)
        run_as = ["runuser", "-u", user, "--"]
    data, port = root / "data", _free_port()
    pg_ctl = [*run_as, str(folder / "pg_ctl"), "-D", str(data)]
    try:
        try:
            subprocess.run([*run_as, str(folder / "initdb"), "-D", str(data), "-U", "vqc", "--auth=trust",
                            "-E", "UTF8"], check=True, capture_output=True)
            subprocess.run([*pg_ctl, "-l", str(root / "server.log"), "-w", "-t", "60",
                            "-o", f"-h 127.0.0.1 -p {port} -k {root} -c max_connections=200", "start"],
                           check=True, capture_output=True)
        except subprocess.CalledProcessError as exc:
            log = (root / "server.log").read_text() if (root / "server.log").exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {exc.stderr.decode()[-2000:]}{log[-2000:]}") from None
        yield f"postgresql://vqc@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*pg_ctl, "-m", "immediate", "-w", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def fresh_database(server_url: str) -> str:
    """A new, empty database on the server; its URL."""
    import psycopg
    name = f"vqc_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return server_url.rsplit("/", 1)[0] + f"/{name}"
