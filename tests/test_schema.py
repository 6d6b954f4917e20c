"""Schema versioning: our own database is recognised; anything else is refused at startup."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text

from openexec.settings import ConfigError, Settings
from openexec.store import SCHEMA_VERSION, Store


@pytest.fixture
def db_url(backend, tmp_path, request) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'schema.db'}"
    return request.getfixturevalue("postgres_database")()


def prepared(url: str) -> Store:
    store = Store(Settings(db_url=url))
    store.prepare()
    return store


def sql(url: str, statement: str) -> None:
    engine = create_engine(Settings(db_url=url).db_url)
    with engine.begin() as connection:
        connection.execute(text(statement))
    engine.dispose()


def test_a_new_database_gets_the_current_version_and_is_recognised(db_url):
    first = prepared(db_url)
    with first.engine.connect() as connection:
        versions = connection.execute(text("SELECT version FROM openexec_schema")).scalars().all()
    assert versions == [SCHEMA_VERSION]
    first.dispose()
    prepared(db_url).dispose()  # a second start accepts it


@pytest.mark.parametrize("version", [0, SCHEMA_VERSION + 1])
def test_another_schema_version_stops_startup(db_url, version):
    prepared(db_url).dispose()
    sql(db_url, f"UPDATE openexec_schema SET version = {version}")
    with pytest.raises(ConfigError, match=f"schema is version {version}.*refusing") as error:
        prepared(db_url)
    assert error.value.variable == "OPENEXEC_DB_URL"


def test_an_executions_table_we_did_not_create_stops_startup(db_url):
    sql(db_url, "CREATE TABLE executions (id TEXT PRIMARY KEY)")
    with pytest.raises(ConfigError, match="not created by OpenExec"):
        prepared(db_url)


def test_schema_creation_survives_concurrent_starts(db_url):
    """Workers and instances start together; each must come up on the one schema."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(6) as pool:
        stores = list(pool.map(lambda _: prepared(db_url), range(6)))
    for store in stores:
        store.dispose()
    with create_engine(Settings(db_url=db_url).db_url).connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM openexec_schema")).scalar() == 1
