"""Schema versioning: our own database is recognised; anything else is refused at startup."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from openexec.settings import ConfigError, Settings
from openexec.store import SCHEMA_VERSION, Store, upgrade_schema


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


FIXTURE_V1 = Path(__file__).parent / "fixtures" / "store-v1"


def v1_store(db_url: str) -> None:
    """Make a current store look as version 1 left it: no approval_signed_sha256, no
    receipt_keys."""
    prepared(db_url).dispose()
    sql(db_url, "DROP TABLE receipt_keys")
    sql(db_url, "DROP INDEX ix_executions_approval_signed_sha256")
    sql(db_url, "ALTER TABLE executions DROP COLUMN approval_signed_sha256")
    sql(db_url, "UPDATE openexec_schema SET version = 1")


def test_a_version_1_store_is_refused_with_the_command_that_upgrades_it(db_url):
    v1_store(db_url)
    with pytest.raises(ConfigError, match=r"version 1.*run `openexec db upgrade`") as error:
        prepared(db_url)
    assert error.value.variable == "OPENEXEC_DB_URL"
    assert upgrade_schema(Settings(db_url=db_url)) == (1, SCHEMA_VERSION)
    prepared(db_url).dispose()
    assert upgrade_schema(Settings(db_url=db_url)) == (SCHEMA_VERSION, SCHEMA_VERSION)


def test_upgrades_run_at_once_upgrade_once(db_url):
    from concurrent.futures import ThreadPoolExecutor

    v1_store(db_url)
    with ThreadPoolExecutor(4) as pool:
        found = sorted(pool.map(lambda _: upgrade_schema(Settings(db_url=db_url))[0], range(4)))
    assert found == [1, 2, 2, 2]
    prepared(db_url).dispose()


def test_upgrade_refuses_a_schema_it_does_not_know(db_url):
    prepared(db_url).dispose()
    sql(db_url, f"UPDATE openexec_schema SET version = {SCHEMA_VERSION + 1}")
    with pytest.raises(ConfigError, match="refusing"):
        upgrade_schema(Settings(db_url=db_url))


def test_upgrade_of_an_empty_database_creates_the_schema(db_url):
    assert upgrade_schema(Settings(db_url=db_url)) == (None, SCHEMA_VERSION)
    prepared(db_url).dispose()


def upgraded_fixture(tmp_path: Path, openexec_client):
    """A copy of the store OpenExec 0.1.0 wrote, upgraded, served by today's code."""
    import openexec_echo
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    directory = tmp_path / "store-v1"
    shutil.copytree(FIXTURE_V1, directory)
    db_url = f"sqlite:///{directory / 'openexec.db'}"
    with pytest.raises(ConfigError, match="openexec db upgrade"):
        prepared(db_url)
    assert upgrade_schema(Settings(db_url=db_url)) == (1, SCHEMA_VERSION)
    approver = load_pem_public_key((directory / "approver.pub").read_bytes())
    client = openexec_client(
        openexec_echo,
        db_url=db_url,
        receipt_key_path=directory / "receipt-key.pem",
        mode="clawshield",
        clawshield_public_keys=(approver,),
    )
    recorded = json.loads((directory / "executions.json").read_text())
    return client, recorded


def test_a_store_written_by_0_1_0_upgrades_and_keeps_every_guarantee(tmp_path, openexec_client):
    client, recorded = upgraded_fixture(tmp_path, openexec_client)
    assert len(recorded) == 5
    signed_by = {old["response"]["receipt_envelope"]["signatures"][0]["keyid"] for old in recorded}
    assert client.app.state.engine.store.receipt_key_ids() == signed_by  # read from the receipts
    for number, old in enumerate(recorded):
        request, response = old["request"], old["response"]
        replay = client.post("/execute", json=request)
        assert replay.status_code == 200, replay.text
        assert replay.json() == {**response, "replayed": True}  # stored answers unchanged
        verdict = client.post("/receipts/verify", json={"envelope": response["receipt_envelope"]})
        assert verdict.json()["valid"] is True
        again = client.post("/execute", json={**request, "nonce": f"after-upgrade-{number}"})
        assert again.status_code == 403 and again.json()["code"] == "approval_already_used"


def test_an_upgraded_store_without_its_receipt_key_is_refused(tmp_path):
    """The keys found in a version 1 store's receipts are required from the upgrade on."""
    directory = tmp_path / "store-v1"
    shutil.copytree(FIXTURE_V1, directory)
    settings = Settings(db_url=f"sqlite:///{directory / 'openexec.db'}")  # no key configured
    upgrade_schema(settings)
    from openexec.app import create_app

    with pytest.raises(ConfigError, match=r"holds receipts signed by key.*missing: restore it"):
        create_app(settings, [])
    assert not (directory / "openexec-receipt-key.pem").exists()  # none was made in its place
