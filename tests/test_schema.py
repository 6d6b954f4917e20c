"""Schema revisions: our own database is recognised, an older one is refused until
``openexec db upgrade`` migrates it, and anything else is refused at startup."""

from __future__ import annotations

import json
import shutil
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text
from sqlmodel import SQLModel

from openexec.ledger.audit import audit, receipt_keys_of
from openexec.ledger.note import parse_vkey
from openexec.settings import ConfigError, Settings
from openexec.store import SCHEMA_VERSION, Store, Upgrade, upgrade_schema
from openexec.store.migrations import SCRIPTS, alembic_config
from tests.support.ledger import ClientSource

FIXTURE_V1 = Path(__file__).parent / "fixtures" / "store-v1"


@pytest.fixture
def new_db_url(backend, tmp_path, request):
    """Factory for empty databases on the parametrised backend."""
    count = 0

    def create() -> str:
        nonlocal count
        count += 1
        if backend == "sqlite":
            return f"sqlite:///{tmp_path / f'schema-{count}.db'}"
        return request.getfixturevalue("postgres_database")()

    return create


@pytest.fixture
def db_url(new_db_url) -> str:
    return new_db_url()


def prepared(url: str) -> Store:
    store = Store(Settings(db_url=url))
    store.prepare()
    return store


def sql(url: str, statement: str) -> list:
    engine = create_engine(Settings(db_url=url).db_url)
    with engine.begin() as connection:
        result = connection.execute(text(statement))
        rows = result.all() if result.returns_rows else []
    engine.dispose()
    return rows


def insert_executions(url: str, rows: list[dict]) -> None:
    """Rows into the executions table, whichever columns its revision has."""
    columns = ", ".join(rows[0])
    values = ", ".join(f":{name}" for name in rows[0])
    engine = create_engine(Settings(db_url=url).db_url)
    with engine.begin() as connection:
        connection.execute(text(f"INSERT INTO executions ({columns}) VALUES ({values})"), rows)
    engine.dispose()


def tables(url: str) -> set[str]:
    engine = create_engine(Settings(db_url=url).db_url)
    names = set(inspect(engine).get_table_names())
    engine.dispose()
    return names


def migrated_store(url: str, revision: str, *, legacy: bool) -> None:
    """A store as the revisions leave it at ``revision``: as OpenExec 0.1.0 (v1) or the last
    version before Alembic (v2) wrote it when ``legacy``, with no ``alembic_version``."""
    engine = create_engine(Settings(db_url=url).db_url)
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), revision)
        if legacy:
            connection.execute(text("DROP TABLE alembic_version"))
    engine.dispose()


def v1_fixture(url: str, tmp_path: Path) -> Path:
    """The store OpenExec 0.1.0 wrote (tests/fixtures/store-v1), at ``url``: the file itself
    copied on SQLite; on PostgreSQL its rows, copied into a version 1 store made by the
    revisions. Returns the copy of the fixture's directory, with its keys."""
    directory = tmp_path / "store-v1"
    shutil.copytree(FIXTURE_V1, directory)
    if url.startswith("sqlite"):
        shutil.copy(directory / "openexec.db", Settings(db_url=url).sqlite_path)
        return directory
    migrated_store(url, "v1", legacy=True)
    with sqlite3.connect(directory / "openexec.db") as fixture:
        fixture.row_factory = sqlite3.Row
        insert_executions(url, [dict(row) for row in fixture.execute("SELECT * FROM executions")])
    return directory


def fixture_executions() -> list[tuple[str, str]]:
    """The (started_at, id) of every execution in the fixture, read from the file itself."""
    with sqlite3.connect(FIXTURE_V1 / "openexec.db") as fixture:
        return fixture.execute("SELECT started_at, id FROM executions").fetchall()


def test_the_head_revision_is_the_scripts_only_head():
    assert ScriptDirectory(str(SCRIPTS)).get_heads() == [SCHEMA_VERSION]


def test_a_new_database_is_created_at_the_head_revision_and_recognised(db_url):
    prepared(db_url).dispose()
    assert sql(db_url, "SELECT version_num FROM alembic_version") == [(SCHEMA_VERSION,)]
    assert "openexec_schema" not in tables(db_url)
    prepared(db_url).dispose()  # a second start accepts it


def test_a_revision_this_code_does_not_know_is_refused_by_startup_and_upgrade(db_url):
    prepared(db_url).dispose()
    sql(db_url, "UPDATE alembic_version SET version_num = 'v999'")
    with pytest.raises(ConfigError, match=r"revision v999.*does not know.*refusing") as error:
        prepared(db_url)
    assert error.value.variable == "OPENEXEC_DB_URL"
    with pytest.raises(ConfigError, match=r"revision v999.*does not know.*refusing"):
        upgrade_schema(Settings(db_url=db_url))
    assert sql(db_url, "SELECT version_num FROM alembic_version") == [("v999",)]


@pytest.mark.parametrize("version", [0, 3])
def test_a_version_table_with_another_version_is_refused_by_startup_and_upgrade(db_url, version):
    migrated_store(db_url, "v2", legacy=True)
    sql(db_url, f"UPDATE openexec_schema SET version = {version}")
    with pytest.raises(ConfigError, match=f"schema is version {version}.*refusing") as error:
        prepared(db_url)
    assert error.value.variable == "OPENEXEC_DB_URL"
    with pytest.raises(ConfigError, match=f"schema is version {version}.*refusing"):
        upgrade_schema(Settings(db_url=db_url))


def test_an_executions_table_we_did_not_create_stops_startup(db_url):
    sql(db_url, "CREATE TABLE executions (id TEXT PRIMARY KEY)")
    with pytest.raises(ConfigError, match="not created by OpenExec"):
        prepared(db_url)


def test_schema_creation_survives_concurrent_starts(db_url):
    """Workers and instances start together; each must come up on the one schema."""
    with ThreadPoolExecutor(6) as pool:
        stores = list(pool.map(lambda _: prepared(db_url), range(6)))
    for store in stores:
        store.dispose()
    assert sql(db_url, "SELECT version_num FROM alembic_version") == [(SCHEMA_VERSION,)]


@pytest.mark.parametrize(
    ("revision", "legacy"),
    [("v1", True), ("v2", True), ("v2", False)],
    ids=["version-1", "version-2", "revision-v2"],
)
def test_an_older_store_is_refused_with_the_command_that_upgrades_it(db_url, revision, legacy):
    migrated_store(db_url, revision, legacy=legacy)
    with pytest.raises(ConfigError, match=rf"revision {revision}.*run `openexec db upgrade`") as e:
        prepared(db_url)
    assert e.value.variable == "OPENEXEC_DB_URL"
    assert upgrade_schema(Settings(db_url=db_url)) == Upgrade(revision, SCHEMA_VERSION, 0)
    prepared(db_url).dispose()
    assert "openexec_schema" not in tables(db_url)
    assert upgrade_schema(Settings(db_url=db_url)) == Upgrade(SCHEMA_VERSION, SCHEMA_VERSION, 0)


def test_upgrades_run_at_once_upgrade_once(db_url):
    migrated_store(db_url, "v1", legacy=True)
    with ThreadPoolExecutor(4) as pool:
        found = sorted(pool.map(lambda _: upgrade_schema(Settings(db_url=db_url)).found, range(4)))
    assert found == ["v1", SCHEMA_VERSION, SCHEMA_VERSION, SCHEMA_VERSION]
    prepared(db_url).dispose()


def test_upgrade_of_an_empty_database_creates_the_schema(db_url):
    assert upgrade_schema(Settings(db_url=db_url)) == Upgrade(None, SCHEMA_VERSION, 0)
    prepared(db_url).dispose()


def autogenerate_differences(url: str) -> list:
    """What Alembic's autogenerate would change to make the database match the tables'
    declarations."""
    engine = create_engine(Settings(db_url=url).db_url)
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), SQLModel.metadata)
    engine.dispose()
    return differences


def physical_layout(url: str) -> list[tuple]:
    """What autogenerate does not compare: the indexes as the database defines them (a partial
    index's predicate), and on PostgreSQL the executions table's storage parameters."""
    if url.startswith("sqlite"):
        return sorted(sql(url, "SELECT name, sql FROM sqlite_master WHERE type = 'index'"))
    indexes = sql(url, "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'")
    options = sql(url, "SELECT relname, reloptions FROM pg_class WHERE relname = 'executions'")
    return sorted(indexes) + options


def test_a_migrated_store_has_the_schema_a_new_one_is_created_with(db_url, new_db_url, tmp_path):
    """New databases are created from the tables' declarations, not by the revisions: the two
    must not differ. Checked on the store OpenExec 0.1.0 wrote (on PostgreSQL, revision v1's)."""
    v1_fixture(db_url, tmp_path)
    upgrade_schema(Settings(db_url=db_url))
    created = new_db_url()
    prepared(created).dispose()
    assert autogenerate_differences(db_url) == []
    assert autogenerate_differences(created) == []
    assert physical_layout(db_url) == physical_layout(created)


def pending_in_index_order(url: str) -> list[str]:
    """The integrator's queue, read through its index (the planner may not pick another)."""
    query = (
        "SELECT id FROM executions {} WHERE ledger_index IS NULL AND status != 'running' "
        "ORDER BY started_at, id"
    )
    engine = create_engine(Settings(db_url=url).db_url)
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("SET LOCAL enable_seqscan = off"))
            plan = connection.execute(text("EXPLAIN " + query.format(""))).scalars().all()
            assert "ix_executions_ledger_pending" in "\n".join(plan)
            ids = connection.execute(text(query.format(""))).scalars().all()
        else:
            by = "INDEXED BY ix_executions_ledger_pending"  # an error if it cannot be used
            ids = connection.execute(text(query.format(by))).scalars().all()
    engine.dispose()
    return ids


def test_executions_of_an_upgraded_store_wait_for_the_ledger_in_start_order(db_url):
    migrated_store(db_url, "v1", legacy=True)
    started = ["2026-01-01T00:00:03Z", "2026-01-01T00:00:01Z", "2026-01-01T00:00:02Z"]
    rows = [
        {
            "id": f"exec-{number}",
            "tenant": "",
            "nonce": f"n-{number}",
            "action": "echo",
            "plugin_name": "openexec-echo",
            "plugin_version": "0.1.0",
            "mode": "demo",
            "request_sha256": "0" * 64,
            "payload": "{}",
            "status": "running" if number == 3 else "succeeded",
            "started_at": started[number % 3],
            "lease_expires_at": 0.0,
        }
        for number in range(4)
    ]
    insert_executions(db_url, rows)
    assert upgrade_schema(Settings(db_url=db_url)).unledgered == 4  # the running one too
    assert sql(db_url, "SELECT count(*) FROM executions WHERE ledger_index IS NOT NULL") == [(0,)]
    assert pending_in_index_order(db_url) == ["exec-1", "exec-2", "exec-0"]


def test_a_store_written_by_0_1_0_upgrades_and_waits_for_the_ledger(db_url, tmp_path):
    v1_fixture(db_url, tmp_path)
    with pytest.raises(ConfigError, match=r"revision v1.*run `openexec db upgrade`"):
        prepared(db_url)
    assert upgrade_schema(Settings(db_url=db_url)) == Upgrade("v1", SCHEMA_VERSION, 5)
    assert sql(db_url, "SELECT count(*) FROM executions WHERE ledger_index IS NULL") == [(5,)]
    in_start_order = [exec_id for _, exec_id in sorted(fixture_executions())]
    assert pending_in_index_order(db_url) == in_start_order
    prepared(db_url).dispose()


def test_a_store_written_by_0_1_0_upgrades_and_keeps_every_guarantee(
    db_url, tmp_path, openexec_client
):
    """A copy of the store OpenExec 0.1.0 wrote, upgraded, served by today's code."""
    import openexec_echo
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    directory = v1_fixture(db_url, tmp_path)
    with pytest.raises(ConfigError, match="openexec db upgrade"):
        prepared(db_url)
    assert upgrade_schema(Settings(db_url=db_url)).found == "v1"
    approver = load_pem_public_key((directory / "approver.pub").read_bytes())
    client = openexec_client(
        openexec_echo,
        db_url=db_url,
        receipt_key_path=directory / "receipt-key.pem",
        mode="clawshield",
        clawshield_public_keys=(approver,),
    )
    recorded = json.loads((directory / "executions.json").read_text())
    assert len(recorded) == 5
    signed_by = {old["response"]["receipt_envelope"]["signatures"][0]["keyid"] for old in recorded}
    assert client.app.state.engine.store.receipt_key_ids() == signed_by  # read from the receipts
    for number, old in enumerate(recorded):
        request, response = old["request"], old["response"]
        replay = client.post("/execute", json=request)
        assert replay.status_code == 200, replay.text
        answer = replay.json()
        # the stored answer, unchanged but for replayed and the ledger index, once appended
        # (in start order: the order the executions were made and recorded in)
        assert answer.pop("ledger_index") in (None, number)
        assert answer == {**response, "replayed": True}
        verdict = client.post("/receipts/verify", json={"envelope": response["receipt_envelope"]})
        assert verdict.json()["valid"] is True
        again = client.post("/execute", json={**request, "nonce": f"after-upgrade-{number}"})
        assert again.status_code == 403 and again.json()["code"] == "approval_already_used"
    # The upgraded store's executions enter the ledger in start order, and the log audits.
    client.app.state.ledger.integrator.integrate()
    logged = sorted(sql(db_url, "SELECT ledger_index, id FROM executions"))
    assert [exec_id for _, exec_id in logged] == [i for _, i in sorted(fixture_executions())]
    assert [index for index, _ in logged] == list(range(5))
    checkpoint = client.get("/ledger/checkpoint").text
    assert checkpoint.splitlines()[1] == "5"
    source = ClientSource(client)
    vkey = parse_vkey(client.get("/ledger/key").text.strip())
    assert audit(source, vkey, receipt_keys_of(source)).checkpoint.size == 5


def test_an_upgraded_store_without_its_receipt_key_is_refused(db_url, tmp_path, monkeypatch):
    """The keys found in a version 1 store's receipts are required from the upgrade on."""
    monkeypatch.chdir(v1_fixture(db_url, tmp_path))  # on PostgreSQL, where a key would be made
    settings = Settings(db_url=db_url)  # no key configured
    upgrade_schema(settings)
    from openexec.app import create_app

    with pytest.raises(ConfigError, match=r"holds receipts signed by key.*missing: restore it"):
        create_app(settings, [])
    assert not settings.receipt_key_file.exists()  # none was made in its place
