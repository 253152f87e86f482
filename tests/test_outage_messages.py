"""Warning lines about storage failures say what really happened.

Optuna wraps a commit that failed because the connection dropped in ``StorageInternalError``,
whose message blames "invalid data in the commit, e.g. exceeding max length". The issue that
asked for this saw that line after a database outage; these tests build the same chain from a
real driver error (a connection refused by a port nobody listens on), and from a COMMIT in flight
through PgBouncer when PostgreSQL behind it stops.
"""

from __future__ import annotations

import socket

import optuna
import pytest
import sqlalchemy
from pg import OwnPostgres, pgbouncer_server

from hpo.study.storage import error_text, open_storage, outage_reason


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _optuna_commit_error(url: str) -> BaseException:
    """What Optuna raises when a commit meets a lost connection: the driver error, wrapped."""
    engine = sqlalchemy.create_engine(url)
    try:
        try:
            with engine.connect():
                pass
        except sqlalchemy.exc.OperationalError as driver_error:
            try:
                raise optuna.exceptions.StorageInternalError(
                    "An exception is raised during the commit. This typically happens due to "
                    "invalid data in the commit, e.g. exceeding max length. "
                ) from driver_error
            except optuna.exceptions.StorageInternalError as wrapped:
                return wrapped
    finally:
        engine.dispose()
    raise AssertionError("the connection did not fail")


@pytest.mark.postgres
def test_a_lost_database_is_named_as_such_not_as_invalid_data() -> None:
    url = f"postgresql+psycopg://hpo:s3cret-pw@127.0.0.1:{_closed_port()}/hpo?connect_timeout=3"
    text = error_text(_optuna_commit_error(url))
    assert text.startswith("database unreachable: "), text
    assert "max length" not in text and "invalid data" not in text
    assert "refused" in text.lower(), text
    assert "s3cret-pw" not in text


def test_other_errors_keep_their_type_and_text_with_urls_masked() -> None:
    error = ValueError("cannot write to postgresql://u:hunter2@db/hpo: disk full")
    assert error_text(error) == "ValueError: cannot write to postgresql://u:***@db/hpo: disk full"


@pytest.mark.own_postgres
def test_a_commit_cut_off_behind_pgbouncer_is_an_outage(own_postgres: OwnPostgres) -> None:
    """PostgreSQL stops (of this test's own) while a transaction through PgBouncer is open: its
    COMMIT gets the server's error and PgBouncer's, which psycopg reports as an InternalError
    ("received 2 results"), not an OperationalError. The connection is gone all the same, so it
    is an outage to ride through; before, a worker's heartbeat logged it with a traceback."""
    with pgbouncer_server(host=own_postgres.host, port=own_postgres.port, pool_size=1) as bouncer:
        storage = open_storage(bouncer.url_for(own_postgres.DATABASE))
        try:
            with storage.engine.connect() as conn:
                conn.execute(sqlalchemy.text("SELECT 1"))  # a transaction, holding PgBouncer's
                own_postgres.stop()
                with pytest.raises(sqlalchemy.exc.DBAPIError) as caught:
                    conn.commit()
        finally:
            storage.engine.dispose()
    if isinstance(caught.value, sqlalchemy.exc.OperationalError):
        pytest.skip("this psycopg/PgBouncer reports the cut-off COMMIT as an OperationalError")
    assert outage_reason(caught.value) is not None, repr(caught.value)
    assert error_text(caught.value).startswith("database unreachable: connection lost"), error_text(
        caught.value
    )
