"""The real servers of the prod profile: PostgreSQL and Redis, as integration tests share them.

    require_postgres() / require_redis()   fail (never skip) with a clear message when a server is down
    temp_database(label)                   a fresh PostgreSQL database, dropped afterwards
    redis_db()                             an empty Redis database number claimed for the test, emptied afterwards
    free_port()                            a free loopback TCP port for a server the test starts
    TcpProxy(host, port)                   a loopback proxy to a server: `cut()` takes the server down for the
                                           clients behind the proxy only, `restore()` brings it back

Each test gets its own database and Redis db number, so runs in parallel checkouts or CI jobs on the
same servers do not see each other's state. Locations: VIDREC_TEST_PG (an admin SQLAlchemy/libpq URL,
default postgresql://postgres@127.0.0.1:5432/postgres) and VIDREC_TEST_REDIS (host:port, default
127.0.0.1:6379). `.ci/run` starts both servers when they are down.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
import uuid
from collections.abc import Iterator

import pytest

PG_ADMIN = os.environ.get("VIDREC_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


REDIS_ADDRESS = os.environ.get("VIDREC_TEST_REDIS", "127.0.0.1:6379")


DB_PREFIX = "vidrec_it_"


CLAIM_KEY = "vidrec:integration-test:claim"


HOW_TO_START = "CI starts it in .ci/run; on a workstation run .ci/run or start the server by hand"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _redact(url: str) -> str:
    return re.sub(r"://([^:@/]+):[^@/]*@", r"://\1:***@", url)


def pg_connect(dbname: str | None = None, autocommit: bool = True):
    import psycopg

    conninfo = PG_ADMIN.replace("postgresql+psycopg://", "postgresql://")
    kwargs = {"dbname": dbname} if dbname else {}
    return psycopg.connect(conninfo, autocommit=autocommit, connect_timeout=5, **kwargs)


def require_postgres() -> None:
    try:
        with pg_connect() as conn:
            conn.execute("select 1")
    except Exception as exc:  # noqa: BLE001 - any failure means the same thing here
        pytest.fail(f"PostgreSQL is not reachable at {_redact(PG_ADMIN)} ({exc}); {HOW_TO_START}.", pytrace=False)


def redis_host_port() -> tuple[str, int]:
    host, _, port = REDIS_ADDRESS.rpartition(":")
    return host or "127.0.0.1", int(port or 6379)


def redis_client(db: int = 0):
    import redis

    host, port = redis_host_port()
    return redis.Redis(host=host, port=port, db=db, socket_connect_timeout=5, socket_timeout=30)


def require_redis() -> None:
    try:
        redis_client().ping()
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"Redis is not reachable at {REDIS_ADDRESS} ({exc}); {HOW_TO_START}.", pytrace=False)


def database_url(name: str, driver: str = "postgresql+psycopg") -> str:
    """SQLAlchemy URL of database `name` on the test server (same user, host and port as the admin URL)."""
    rest = PG_ADMIN.split("://", 1)[1].rsplit("/", 1)[0]
    return f"{driver}://{rest}/{name}"


def drop_database(name: str) -> None:
    with pg_connect() as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def temp_database(label: str) -> Iterator[str]:
    """Create `vidrec_it_<label>_<random>`; yield its SQLAlchemy URL; drop it (and its sessions) after."""
    require_postgres()
    name = f"{DB_PREFIX}{label}_{uuid.uuid4().hex[:8]}"
    with pg_connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield database_url(name)
    finally:
        drop_database(name)


def database_exists(name: str) -> bool:
    with pg_connect() as conn:
        return conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone() is not None


@contextlib.contextmanager
def redis_db(first: int = 1) -> Iterator[int]:
    """Claim an empty Redis database (1..15; db 0 is left to the default prod profile), empty it after.

    The claim is a key set with NX in a database that held nothing: two runs never share one.
    """
    require_redis()
    token = uuid.uuid4().hex
    databases = int(redis_client().config_get("databases").get("databases", 16))
    for db in range(first, databases):
        client = redis_client(db)
        if client.dbsize() != 0 or not client.set(CLAIM_KEY, token, nx=True, ex=6 * 3600):
            continue
        if client.dbsize() != 1:  # someone wrote at the same moment: leave it to them
            if client.get(CLAIM_KEY) == token.encode():
                client.delete(CLAIM_KEY)
            continue
        try:
            yield db
        finally:
            delete_all_keys(client)
        return
    pytest.fail(f"no empty Redis database among {first}..{databases - 1} at {REDIS_ADDRESS}", pytrace=False)


def delete_all_keys(client) -> int:
    """Delete every key of the client's database (one the test claimed), in batches."""
    deleted = 0
    batch: list[bytes] = []
    for key in client.scan_iter(count=5000):
        batch.append(key)
        if len(batch) >= 5000:
            deleted += client.unlink(*batch)
            batch.clear()
    if batch:
        deleted += client.unlink(*batch)
    return deleted


class TcpProxy:
    """A loopback TCP proxy to a shared server, to take that server down for one client only.

    `cut()` does to the clients behind the proxy what a stopped server does: it closes every
    forwarded connection and stops listening, so new connections are refused. `restore()` listens
    again on the same port. The server itself, and every other client of it, is left alone.
    """

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.port = 0  # the first start() picks a free one; restore() reuses it
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listening: tuple[threading.Thread, threading.Event] | None = None

    def start(self) -> TcpProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.1)  # the accept loop checks for a cut this often
        self.port = listener.getsockname()[1]
        stop = threading.Event()
        thread = threading.Thread(target=self._accept, args=(listener, stop), name="tcp-proxy", daemon=True)
        thread.start()
        self._listening = (thread, stop)
        return self

    restore = start

    def cut(self) -> None:
        if self._listening is not None:
            thread, stop = self._listening
            stop.set()
            thread.join(5)  # the listener is closed when the loop ends: new connections are refused
            self._listening = None
        with self._lock:
            forwarded = list(self._open)
        for sock in forwarded:  # wakes both pumps of each connection, which then close it
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    close = cut

    def _accept(self, listener: socket.socket, stop: threading.Event) -> None:
        with listener:
            while not stop.is_set():
                try:
                    client, _ = listener.accept()
                except TimeoutError:
                    continue
                client.settimeout(None)
                try:
                    upstream = socket.create_connection(self.target, timeout=5)
                except OSError:
                    client.close()
                    continue
                upstream.settimeout(None)
                with self._lock:
                    self._open.update((client, upstream))
                threading.Thread(target=self._forward, args=(client, upstream), daemon=True).start()

    def _forward(self, client: socket.socket, upstream: socket.socket) -> None:
        pumps = [threading.Thread(target=self._pump, args=pair, daemon=True) for pair in
                 ((client, upstream), (upstream, client))]  # fmt: skip
        for pump in pumps:
            pump.start()
        for pump in pumps:
            pump.join()
        with self._lock:
            self._open.difference_update((client, upstream))
        client.close()
        upstream.close()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(1 << 16):
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):  # one side ended: end the other pump too
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
