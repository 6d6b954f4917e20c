"""Packs own their settings and their lifecycle: a typed model under a prefix of their own,
read once at startup by the host's rules, and startup/shutdown hooks for their side effects.

The third-party pack here is installed as a distribution with an entry point, as an operator
would install one, and loaded the way the service loads every pack.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from openexec.app import create_app
from openexec.plugins import PluginError, load_registry
from openexec.settings import ConfigError, Settings
from openexec.testing import make_app
from tests.conftest import PROBE
from tests.support.distributions import FakeDistributions
from tests.support.processes import ROOT, Uvicorn, clean_environment

SECRET = "s3cr3t-token-value"
CLI = [sys.executable, "-c", "from openexec.cli import main; raise SystemExit(main())"]

WEATHER_PACK = textwrap.dedent("""
    import os
    from pathlib import Path

    from pydantic import BaseModel, PositiveInt, SecretStr

    from openexec import Action, PackSettings, hookimpl


    class WeatherSettings(PackSettings):
        env_prefix = "OPENEXEC_WEATHER_"
        cache: Path = Path("weather-cache")
        retries: PositiveInt = 3
        token: SecretStr | None = None


    class Empty(BaseModel):
        pass


    @hookimpl
    def register_settings():
        return WeatherSettings


    @hookimpl
    def register_actions(pack_settings):
        def forecast(payload, ctx):
            return {"retries": pack_settings.retries, "cache": str(pack_settings.cache)}

        return [Action("weather.forecast", forecast, Empty, "Tell the forecast.")]


    @hookimpl
    def startup(pack_settings):
        pack_settings.cache.mkdir(exist_ok=True)
        with (pack_settings.cache / "lifecycle.txt").open("a") as log:
            log.write(f"startup {os.getpid()}\\n")


    @hookimpl
    def shutdown(pack_settings):
        with (pack_settings.cache / "lifecycle.txt").open("a") as log:
            log.write(f"shutdown {os.getpid()}\\n")
""")


@pytest.fixture
def dists(tmp_path, monkeypatch) -> FakeDistributions:
    installed = FakeDistributions(tmp_path / "site", monkeypatch)
    installed.add("openexec-weather", "openexec_weather", WEATHER_PACK, version="2.0.0")
    return installed


def weather(tmp_path: Path, **environment: str) -> Settings:
    """Host settings that load only the weather pack, with ``environment`` for it."""
    return Settings.from_env(
        {
            "OPENEXEC_PLUGINS": "openexec-weather",
            "OPENEXEC_DB_URL": f"sqlite:///{tmp_path / 'openexec.db'}",
            "OPENEXEC_WEATHER_CACHE": str(tmp_path / "cache"),
            **environment,
        }
    )


def test_an_installed_pack_gets_its_settings_and_its_lifecycle(dists, tmp_path):
    settings = weather(tmp_path, OPENEXEC_WEATHER_RETRIES="5")
    registry = load_registry(settings)
    assert not (tmp_path / "cache").exists()  # loading changes nothing outside the process
    with TestClient(create_app(settings)) as client:
        answer = client.post(
            "/execute", json={"action": "weather.forecast", "payload": {}, "nonce": "w"}
        )
        assert answer.json()["result"] == {"retries": 5, "cache": str(tmp_path / "cache")}
        lines = (tmp_path / "cache" / "lifecycle.txt").read_text().splitlines()
        assert lines == [f"startup {os.getpid()}"]
    lines = (tmp_path / "cache" / "lifecycle.txt").read_text().splitlines()
    assert lines == [f"startup {os.getpid()}", f"shutdown {os.getpid()}"]
    [info] = registry.plugins
    assert info.settings == {
        "OPENEXEC_WEATHER_CACHE": str(tmp_path / "cache"),
        "OPENEXEC_WEATHER_RETRIES": 5,
        "OPENEXEC_WEATHER_TOKEN": None,
    }


def test_a_typo_in_a_packs_variable_stops_startup_naming_it(dists, tmp_path):
    with pytest.raises(ConfigError, match=r"^OPENEXEC_WEATHER_RETRY: is not a setting") as typo:
        load_registry(weather(tmp_path, OPENEXEC_WEATHER_RETRY="5"))
    assert "OPENEXEC_WEATHER_RETRIES" in str(typo.value)  # the accepted names are listed
    assert "\n" not in str(typo.value)


@pytest.mark.parametrize("value", ["0", "-1", "three", "1.5"])
def test_an_invalid_value_stops_startup_naming_the_variable(dists, tmp_path, value):
    with pytest.raises(ConfigError) as invalid:
        load_registry(weather(tmp_path, OPENEXEC_WEATHER_RETRIES=value))
    assert invalid.value.variable == "OPENEXEC_WEATHER_RETRIES"
    assert repr(value) in str(invalid.value) and "\n" not in str(invalid.value)


def test_an_empty_value_keeps_the_default(dists, tmp_path):
    [info] = load_registry(weather(tmp_path, OPENEXEC_WEATHER_RETRIES=" ")).plugins
    assert info.settings["OPENEXEC_WEATHER_RETRIES"] == 3


def test_secrets_are_redacted_in_health_and_in_plugins_json(dists, tmp_path):
    settings = weather(tmp_path, OPENEXEC_WEATHER_TOKEN=SECRET)
    with TestClient(create_app(settings)) as client:
        health = client.get("/health")
    assert SECRET not in health.text
    [shown] = health.json()["plugins"]
    assert shown["settings"]["OPENEXEC_WEATHER_TOKEN"] == "**********"
    assert shown["settings"]["OPENEXEC_WEATHER_RETRIES"] == 3

    work = tmp_path / "work"
    work.mkdir()
    listing = subprocess.run(
        [*CLI, "plugins", "--json"],
        env={
            **clean_environment(PYTHONPATH=f"{dists.root}:{ROOT}"),
            "OPENEXEC_PLUGINS": "openexec-weather",
            "OPENEXEC_WEATHER_TOKEN": SECRET,
        },
        cwd=work,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listing.returncode == 0, listing.stderr
    assert SECRET not in listing.stdout + listing.stderr
    [plugin] = json.loads(listing.stdout)
    assert plugin["settings"]["OPENEXEC_WEATHER_TOKEN"] == "**********"
    assert list(work.iterdir()) == []  # nothing created in the working directory


def test_a_secret_with_a_bad_value_is_named_but_not_shown(tmp_path, dists):
    dists.add(
        "openexec-vault",
        "openexec_vault",
        textwrap.dedent("""
            from pydantic import SecretStr, field_validator
            from openexec import PackSettings, hookimpl

            class VaultSettings(PackSettings):
                env_prefix = "OPENEXEC_VAULT_"
                password: SecretStr = SecretStr("")

                @field_validator("password")
                @classmethod
                def _long(cls, value):
                    if len(value.get_secret_value()) < 30:
                        raise ValueError("too short")
                    return value

            @hookimpl
            def register_settings():
                return VaultSettings
        """),
    )
    with pytest.raises(ConfigError, match=r"^OPENEXEC_VAULT_PASSWORD: ") as refused:
        load_registry(Settings.from_env({"OPENEXEC_VAULT_PASSWORD": SECRET}))
    assert SECRET not in str(refused.value)


def test_a_failing_startup_hook_stops_startup_naming_the_plugin(dists, tmp_path):
    (tmp_path / "cache").write_text("a file where the pack wants its directory")
    app = create_app(weather(tmp_path))
    with (
        pytest.raises(PluginError, match=r"plugin 'openexec-weather' failed in startup"),
        TestClient(app),
    ):
        pass


def test_a_failing_startup_hook_stops_a_two_worker_server(dists, tmp_path):
    (tmp_path / "cache").write_text("in the way")
    env = {
        "PYTHONPATH": f"{dists.root}:{ROOT}",
        "OPENEXEC_PLUGINS": "openexec-weather",
        "OPENEXEC_DB_URL": f"sqlite:///{tmp_path / 'openexec.db'}",
        "OPENEXEC_WEATHER_CACHE": str(tmp_path / "cache"),
    }
    server = subprocess.run(
        [sys.executable, "-m", "uvicorn", "main:app", "--workers", "2", "--port", "0"],
        cwd=ROOT,
        env=clean_environment(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )
    # uvicorn's supervisor stops (rather than respawning workers) on a worker's startup failure
    assert "failed to start, stopping the parent process" in server.stderr
    assert "startup failed: plugin 'openexec-weather' failed in startup" in server.stderr


def test_the_startup_hook_runs_once_per_worker(tmp_path):
    """Two workers, counted: each logs its pid at startup and again at shutdown."""
    probe_dir = tmp_path / "probe"
    env = {
        "OPENEXEC_DB_URL": f"sqlite:///{tmp_path / 'openexec.db'}",
        "OPENEXEC_PROBE_DIR": str(probe_dir),
    }
    server = Uvicorn("tests.support.server:app", env, workers=2, log=tmp_path / "uvicorn.log")
    lifecycle = probe_dir / "lifecycle.txt"
    try:
        deadline = time.monotonic() + 60  # until both workers have started, at most a minute
        while time.monotonic() < deadline:
            started = lifecycle.read_text().splitlines() if lifecycle.exists() else []
            if len(started) >= 2:
                break
            time.sleep(0.05)
    finally:
        server.stop()
    lines = lifecycle.read_text().splitlines()
    starts = [line.split()[1] for line in lines if line.startswith("startup")]
    stops = [line.split()[1] for line in lines if line.startswith("shutdown")]
    assert len(starts) == 2 and len(set(starts)) == 2, lines
    assert sorted(stops) == sorted(starts), lines


def test_actions_and_plugins_in_an_empty_directory_create_nothing(tmp_path):
    """The files pack creates its root in startup, not when it registers."""
    for command in (["actions"], ["plugins", "--json"]):
        listed = subprocess.run(
            [*CLI, *command],
            env=clean_environment(PYTHONPATH=str(ROOT)),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listed.returncode == 0, listed.stderr
        assert list(tmp_path.iterdir()) == []


def overlapping_pack(prefix: str) -> str:
    return textwrap.dedent(f"""
        from openexec import PackSettings, hookimpl

        class Overlapping(PackSettings):
            env_prefix = {prefix!r}
            flag: bool = False

        @hookimpl
        def register_settings():
            return Overlapping
    """)


@pytest.mark.parametrize("prefix", ["OPENEXEC_WEATHER_", "OPENEXEC_WEATHER_X_"])
def test_two_packs_with_overlapping_prefixes_are_refused(dists, tmp_path, prefix):
    dists.add("openexec-clash", "openexec_clash", overlapping_pack(prefix))
    with pytest.raises(
        PluginError,
        match=r"'openexec-clash' and 'openexec-weather'|'openexec-weather' and 'openexec-clash'",
    ):
        load_registry(Settings())


@pytest.mark.parametrize(
    ("prefix", "problem"),
    [
        ("OPENEXEC_DB_", "would claim the host's OPENEXEC_DB_POOL_SIZE"),
        ("files_", "must look like"),
    ],
)
def test_a_prefix_that_is_malformed_or_claims_a_host_variable_is_refused(dists, prefix, problem):
    dists.add("openexec-clash", "openexec_clash", overlapping_pack(prefix))
    with pytest.raises(PluginError, match=f"plugin 'openexec-clash': env_prefix .*{problem}"):
        load_registry(Settings(plugins=("openexec-clash",)))


def test_the_testing_fixture_takes_pack_settings_by_variable_name(tmp_path, openexec_client):
    client = openexec_client(
        PROBE, settings={"OPENEXEC_PROBE_DIR": str(tmp_path / "p"), "OPENEXEC_MODE": "demo"}
    )
    [probe] = client.get("/health").json()["plugins"]
    assert probe["settings"] == {"OPENEXEC_PROBE_DIR": str(tmp_path / "p")}
    assert (tmp_path / "p" / "lifecycle.txt").exists()  # the client started the app


def test_a_wrong_setting_name_in_the_testing_fixture_lists_the_accepted_ones(tmp_path):
    with pytest.raises(
        TypeError, match=r"unknown setting 'files_root'.*db_url.*OPENEXEC_FILES_ROOT"
    ):
        make_app(PROBE, directory=tmp_path, files_root=tmp_path)
    with pytest.raises(
        ConfigError, match=r"OPENEXEC_PROBE_DIRECTORY: is not a setting.*_PROBE_DIR"
    ):
        make_app(PROBE, directory=tmp_path, settings={"OPENEXEC_PROBE_DIRECTORY": "x"})
    with pytest.raises(TypeError, match=r"'PROBE_DIR' is no setting.*OPENEXEC_MODE"):
        make_app(PROBE, directory=tmp_path, settings={"PROBE_DIR": "x"})


def test_a_pack_without_settings_or_lifecycle_hooks_gets_none_and_costs_nothing():
    """The echo pack implements register_actions alone: no settings are read for it and no
    lifecycle call is planned, so an unimplemented hook is never called at all."""
    import openexec_echo

    from openexec.plugins import InProcessPlugin

    registry = load_registry(Settings(), [InProcessPlugin(openexec_echo, "openexec-echo")])
    assert registry.startup_hooks == () and registry.shutdown_hooks == ()
    [echo] = registry.plugins
    assert echo.settings == {}
