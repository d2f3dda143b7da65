"""The real servers of the prod profile are there, and the helpers of tests/services.py clean up after themselves."""

from __future__ import annotations

import pytest
from services import (
    CLAIM_KEY,
    DB_PREFIX,
    database_exists,
    pg_connect,
    redis_client,
    redis_db,
    require_postgres,
    require_redis,
    temp_database,
)

pytestmark = pytest.mark.integration


# ---- the servers themselves ------------------------------------------------------------------------


def test_postgresql_is_reachable_and_test_databases_come_and_go():
    require_postgres()
    with temp_database("probe") as url:
        name = url.rsplit("/", 1)[1]
        assert name.startswith(DB_PREFIX) and database_exists(name)
        with pg_connect(dbname=name) as conn:
            conn.execute("create table t (x int)")
            conn.execute("insert into t values (1)")
            # an open session does not keep the database from being dropped
            held = pg_connect(dbname=name)
    assert not database_exists(name)
    held.close()


def test_redis_is_reachable_and_a_claimed_db_is_emptied():
    require_redis()
    with redis_db() as db:
        client = redis_client(db)
        assert db >= 1 and client.get(CLAIM_KEY) is not None
        client.mset({f"k{i}": i for i in range(20)})
        with redis_db() as other:  # a second claim gets a different database
            assert other != db
        assert client.dbsize() == 21
    assert client.dbsize() == 0
