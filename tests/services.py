"""The real servers of the prod profile: PostgreSQL and Redis, as integration tests share them.

    require_postgres() / require_redis()   fail (never skip) with a clear message when a server is down
    temp_database(label)                   a fresh PostgreSQL database, dropped afterwards
    redis_db()                             an empty Redis database number claimed for the test, emptied afterwards

Each test gets its own database and Redis db number, so runs in parallel checkouts or CI jobs on the
same servers do not see each other's state. Locations: VIDREC_TEST_PG (an admin SQLAlchemy/libpq URL,
default postgresql://postgres@127.0.0.1:5432/postgres) and VIDREC_TEST_REDIS (host:port, default
127.0.0.1:6379). `.ci/run` starts both servers when they are down.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Iterator

import pytest

PG_ADMIN = os.environ.get("VIDREC_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


REDIS_ADDRESS = os.environ.get("VIDREC_TEST_REDIS", "127.0.0.1:6379")


DB_PREFIX = "vidrec_it_"


CLAIM_KEY = "vidrec:integration-test:claim"


HOW_TO_START = "CI starts it in .ci/run; on a workstation run .ci/run or start the server by hand"


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
