"""Configuration: read once, validated, and a clear one-line error naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import generate_private_key
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from uvicorn.config import STARTUP_FAILURE

from openexec.settings import ConfigError, Settings

ROOT = Path(__file__).resolve().parents[1]


def pem(key) -> str:
    return key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()


def test_no_variables_means_demo_on_sqlite():
    settings = Settings.from_env({})
    assert settings.mode == "demo" and settings.database_kind == "sqlite"
    assert settings.db_url == "sqlite:///openexec.db"
    assert settings.allowed_actions is None and settings.plugins is None
    assert (settings.action_timeout_s, settings.clock_skew_s) == (30.0, 60.0)
    assert settings.max_request_bytes == 1_048_576
    assert settings.ledger_integrator == "process"  # a server integrates in a child process
    assert settings.metrics is True and settings.log_format == "text"
    assert settings.pack_environment == {}


def test_the_host_knows_no_pack_and_keeps_their_variables_for_them():
    """A pack's variables are not host settings: they are kept, untouched, for the packs."""
    settings = Settings.from_env(
        {"OPENEXEC_FILES_ROOT": "/srv/files", "OPENEXEC_MODE": "demo", "HOME": "/root"}
    )
    assert settings.pack_environment == {"OPENEXEC_FILES_ROOT": "/srv/files"}
    assert not any("files" in field for field in vars(settings))


def test_variables_are_parsed():
    keys = pem(Ed25519PrivateKey.generate()) + pem(Ed25519PrivateKey.generate())
    settings = Settings.from_env(
        {
            "OPENEXEC_MODE": "clawshield",
            "CLAWSHIELD_PUBLIC_KEY": keys,
            "CLAWSHIELD_TENANT_ID": "acme",
            "OPENEXEC_ALLOWED_ACTIONS": " echo , files.* ,",
            "OPENEXEC_PLUGINS": "openexec-echo",
            "OPENEXEC_DB_URL": "postgres://u:pw@db/openexec",
            "OPENEXEC_SERVICE_ID": "svc",
            "OPENEXEC_ACTION_TIMEOUT_S": "2.5",
            "OPENEXEC_MAX_REQUEST_BYTES": "2048",
            "OPENEXEC_METRICS": "OFF",
            "OPENEXEC_LOG_FORMAT": " JSON ",
        }
    )
    assert settings.metrics is False and settings.log_format == "json"
    assert len(settings.clawshield_public_keys) == 2 and settings.tenant_id == "acme"
    assert settings.allowed_actions == ("echo", "files.*") and settings.plugins == (
        "openexec-echo",
    )
    assert settings.db_url == "postgresql+psycopg://u:pw@db/openexec"
    assert settings.database_kind == "postgresql" and settings.safe_db_url.count("pw") == 0
    assert settings.action_timeout_s == 2.5 and settings.max_request_bytes == 2048


def test_empty_plugin_list_is_none_selected():
    assert Settings.from_env({"OPENEXEC_PLUGINS": ""}).plugins == ()


def test_settings_are_immutable():
    settings = Settings.from_env({})
    with pytest.raises(AttributeError):
        settings.mode = "clawshield"


@pytest.mark.parametrize(
    "env, variable, fragment",
    [
        ({"OPENEXEC_MODE": "yolo"}, "OPENEXEC_MODE", "'demo' or 'clawshield'"),
        (
            {"OPENEXEC_MODE": "clawshield"},
            "CLAWSHIELD_PUBLIC_KEY",
            "CLAWSHIELD_PUBLIC_KEY not configured",
        ),
        (
            {"OPENEXEC_MODE": "clawshield", "CLAWSHIELD_PUBLIC_KEY": "garbage"},
            "CLAWSHIELD_PUBLIC_KEY",
            "no PEM",
        ),
        (
            {"CLAWSHIELD_PUBLIC_KEY": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"},
            "CLAWSHIELD_PUBLIC_KEY",
            "not a valid public key",
        ),
        ({"OPENEXEC_ACTION_TIMEOUT_S": "soon"}, "OPENEXEC_ACTION_TIMEOUT_S", "must be a number"),
        ({"OPENEXEC_ACTION_TIMEOUT_S": "-1"}, "OPENEXEC_ACTION_TIMEOUT_S", "positive"),
        ({"OPENEXEC_ACTION_TIMEOUT_S": "nan"}, "OPENEXEC_ACTION_TIMEOUT_S", "positive"),
        ({"OPENEXEC_MAX_REQUEST_BYTES": "1.5"}, "OPENEXEC_MAX_REQUEST_BYTES", "must be a number"),
        ({"OPENEXEC_DB_URL": "mysql://u:hunter2@h/db"}, "OPENEXEC_DB_URL", "unsupported database"),
        ({"OPENEXEC_DB_URL": "::nonsense::"}, "OPENEXEC_DB_URL", "not a valid database URL"),
        ({"OPENEXEC_DB_URL": "sqlite://"}, "OPENEXEC_DB_URL", "in-memory SQLite"),
        ({"OPENEXEC_DB_URL": "sqlite:///:memory:"}, "OPENEXEC_DB_URL", "in-memory SQLite"),
        ({"OPENEXEC_METRICS": "yes"}, "OPENEXEC_METRICS", "'on' or 'off'"),
        ({"OPENEXEC_LOG_FORMAT": "logfmt"}, "OPENEXEC_LOG_FORMAT", "'text' or 'json'"),
        ({"OPENEXEC_LEDGER_INTEGRATOR": "fork"}, "OPENEXEC_LEDGER_INTEGRATOR", "'process' or"),
    ],
)
def test_invalid_configuration_names_the_variable(env, variable, fragment):
    with pytest.raises(ConfigError) as error:
        Settings.from_env(env)
    assert error.value.variable == variable
    assert str(error.value).startswith(f"{variable}: ") and fragment in str(error.value)
    assert "hunter2" not in str(error.value)


def test_rsa_key_is_refused():
    rsa = pem(generate_private_key(public_exponent=65537, key_size=2048))
    with pytest.raises(ConfigError, match="not an Ed25519 key"):
        Settings.from_env({"OPENEXEC_MODE": "clawshield", "CLAWSHIELD_PUBLIC_KEY": rsa})


def test_escaped_newlines_in_a_key_are_accepted():
    key = pem(Ed25519PrivateKey.generate()).replace("\n", "\\n")
    settings = Settings.from_env({"OPENEXEC_MODE": "clawshield", "CLAWSHIELD_PUBLIC_KEY": key})
    assert len(settings.clawshield_public_keys) == 1


def start_main(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """Import main.py the way uvicorn does, in a clean environment."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPENEXEC_", "CLAWSHIELD_"))}
    return subprocess.run(
        [sys.executable, "-c", "import main"],
        cwd=ROOT,
        env={
            **clean,
            "OPENEXEC_DB_URL": f"sqlite:///{tmp_path / 'db.sqlite'}",
            "OPENEXEC_FILES_ROOT": str(tmp_path / "files"),
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "env, message",
    [
        ({"OPENEXEC_MODE": "clawshield"}, "CLAWSHIELD_PUBLIC_KEY not configured"),
        ({"OPENEXEC_ALLOWED_ACTIONS": "ehco"}, "OPENEXEC_ALLOWED_ACTIONS: entry 'ehco' matches no"),
        ({"OPENEXEC_PLUGINS": "openexec-nothing"}, "OPENEXEC_PLUGINS: plugin(s) not installed"),
        ({"OPENEXEC_RECEIPT_KEY": "/nonexistent/key.pem"}, "OPENEXEC_RECEIPT_KEY: cannot read"),
        (
            {"OPENEXEC_DB_URL": "postgresql://u:hunter2@127.0.0.1:1/x"},
            "OPENEXEC_DB_URL: cannot open",
        ),
    ],
)
def test_startup_failure_is_one_clear_line(tmp_path, env, message):
    finished = start_main(tmp_path, **env)
    assert finished.returncode == STARTUP_FAILURE
    lines = finished.stderr.strip().splitlines()
    assert lines[-1].startswith("openexec: startup failed: ") and message in lines[-1]
    assert "Traceback" not in finished.stderr and "hunter2" not in finished.stderr


def test_wrong_database_password_is_a_clear_error_without_the_password(tmp_path):
    from sqlalchemy.engine import make_url

    from tests.conftest import postgres_admin_url

    url = make_url(postgres_admin_url()).set(password="hunter2-wrong")
    finished = start_main(tmp_path, OPENEXEC_DB_URL=url.render_as_string(hide_password=False))
    assert finished.returncode == STARTUP_FAILURE
    assert (
        "OPENEXEC_DB_URL: cannot open the database at postgresql+psycopg://postgres:***@"
        in finished.stderr
    )
    assert "password authentication failed" in finished.stderr
    assert "hunter2" not in finished.stderr


def test_bad_configuration_stops_a_multi_worker_server(tmp_path):
    """uvicorn respawns dying workers, except on its startup-failure exit code."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OPENEXEC_", "CLAWSHIELD_"))}
    finished = subprocess.run(
        [sys.executable, "-m", "uvicorn", "main:app", "--workers", "2", "--port", "0"],
        cwd=ROOT,
        env={
            **clean,
            "OPENEXEC_MODE": "bogus",
            "OPENEXEC_DB_URL": f"sqlite:///{tmp_path / 'x.db'}",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        "openexec: startup failed: OPENEXEC_MODE: must be 'demo' or 'clawshield'" in finished.stderr
    )
    assert "stopping the parent process" in finished.stderr


def test_the_pytest_plugin_loads_without_test_dependencies():
    """openexec.testing is registered for every pytest run where openexec is installed: it must
    not need the test client's HTTP library until a test asks for a client."""
    code = "import sys, openexec.testing; assert 'fastapi.testclient' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_main_starts_with_zero_configuration(tmp_path):
    finished = start_main(tmp_path)
    assert finished.returncode == 0, finished.stderr
    assert "demo mode" in finished.stderr
    assert (tmp_path / "db.sqlite").stat().st_mode & 0o777 == 0o600  # it holds every payload


def test_every_variable_the_host_reads_is_listed_as_the_hosts():
    """HOST_VARIABLES is written out beside from_env; a variable read there but missing from
    the list would be handed to the packs as theirs."""
    from openexec.settings import HOST_VARIABLES

    class Recording(dict):
        def __init__(self) -> None:
            super().__init__()
            self.asked: set[str] = set()

        def get(self, key, default=None):
            self.asked.add(key)
            return super().get(key, default)

        def __contains__(self, key) -> bool:
            self.asked.add(key)
            return super().__contains__(key)

        def __getitem__(self, key):
            self.asked.add(key)
            return super().__getitem__(key)

    environment = Recording()
    Settings.from_env(environment)
    assert environment.asked == HOST_VARIABLES
