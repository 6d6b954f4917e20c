"""The plugin host: entry points, selection before import, fail-closed startup, frozen registry."""

from __future__ import annotations

import re
import sys
import textwrap

import openexec_echo
import pytest

from openexec import ActionError
from openexec.plugins import InProcessPlugin, PluginError, load_registry
from openexec.settings import ConfigError, Settings
from tests.conftest import PROBE
from tests.support.distributions import FakeDistributions

GOOD_PACK = textwrap.dedent("""
    from pydantic import BaseModel
    from openexec import Action, hookimpl
    from pathlib import Path

    Path(__file__).with_suffix(".imported").write_text("imported")

    class Empty(BaseModel):
        pass

    def run(payload, ctx):
        return {"ok": True}

    @hookimpl
    def register_actions():
        return [Action("{name}", run, Empty, "A pack installed for a test.")]
""")


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Packs loaded with default settings (the files pack's root) create things in the cwd."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def dists(tmp_path, monkeypatch) -> FakeDistributions:
    return FakeDistributions(tmp_path / "site", monkeypatch)


def test_installed_packs_load_through_entry_points():
    registry = load_registry(Settings(plugins=("openexec-echo",)))
    assert {p.name: p.version for p in registry.plugins} == {"openexec-echo": "0.1.0"}
    assert registry.actions["add"].plugin_name == "openexec-echo"
    assert registry.allowed == {"echo", "add"}


def test_plugin_selection_happens_before_import(dists, tmp_path):
    dists.add("unwanted-pack", "unwanted_pack", GOOD_PACK.replace("{name}", "unwanted.run"))
    registry = load_registry(Settings(plugins=("openexec-echo",)))
    assert "unwanted.run" not in registry.actions
    assert "unwanted_pack" not in sys.modules
    assert not (tmp_path / "site" / "unwanted_pack.imported").exists()

    everything = load_registry(Settings())  # unset: every installed pack
    assert everything.actions["unwanted.run"].plugin_version == "1.2.3"
    assert (tmp_path / "site" / "unwanted_pack.imported").exists()


def test_every_entry_point_of_a_distribution_is_loaded(dists):
    dists.add(
        "two-ep-pack",
        "two_first",
        GOOD_PACK.replace("{name}", "two.a"),
        two_second=GOOD_PACK.replace("{name}", "two.b"),
    )
    registry = load_registry(Settings(plugins=("two-ep-pack",), allowed_actions=("two.b",)))
    assert set(registry.actions) == {"two.a", "two.b"} and registry.allowed == {"two.b"}
    assert {a.plugin_name for a in registry.actions.values()} == {"two-ep-pack"}
    assert [(p.name, p.actions) for p in registry.plugins] == [("two-ep-pack", ("two.a", "two.b"))]


def test_plugin_names_are_matched_normalised(dists):
    dists.add("Mixed_Case.Pack", "mixed_pack", GOOD_PACK.replace("{name}", "mixed.run"))
    registry = load_registry(Settings(plugins=("mixed-case-pack",)))
    assert list(registry.actions) == ["mixed.run"]


def test_empty_plugin_list_loads_nothing():
    registry = load_registry(Settings(plugins=()))
    assert registry.actions == {} and registry.plugins == ()


def test_a_plugin_that_fails_to_import_stops_startup_naming_it(dists):
    dists.add("broken-pack", "broken_pack", "raise RuntimeError('boom at import')\n")
    with pytest.raises(
        PluginError, match=r"plugin 'broken-pack' failed to import: RuntimeError: boom"
    ):
        load_registry(Settings())
    load_registry(Settings(plugins=("openexec-echo",)))  # not selected: not imported, no error


def test_a_missing_plugin_stops_startup():
    with pytest.raises(ConfigError, match=r"OPENEXEC_PLUGINS: plugin.* not installed: no-such"):
        load_registry(Settings(plugins=("openexec-echo", "no-such-pack")))


def test_two_actions_with_one_name_stop_startup_naming_both(dists):
    dists.add("echo-clone", "echo_clone", GOOD_PACK.replace("{name}", "echo"))
    with pytest.raises(
        PluginError, match=r"'echo' is registered twice: by plugin '.*' and by plugin '.*'"
    ) as error:
        load_registry(Settings(plugins=("openexec-echo", "echo-clone")))
    assert "openexec-echo" in str(error.value) and "echo-clone" in str(error.value)


def test_a_hookimpl_matching_no_hookspec_stops_startup(dists):
    source = GOOD_PACK.replace("{name}", "typo.run") + textwrap.dedent(
        """
        @hookimpl
        def register_actionz():
            return []
        """
    )
    dists.add("typo-pack", "typo_pack", source)
    with pytest.raises(
        PluginError, match=r"plugin 'typo-pack' implements a hook that does not exist"
    ):
        load_registry(Settings(plugins=("typo-pack",)))


def test_a_hookimpl_with_unknown_arguments_stops_startup(dists):
    source = GOOD_PACK.replace("{name}", "args.run").replace(
        "def register_actions():", "def register_actions(settings, database):"
    )
    dists.add("args-pack", "args_pack", source)
    with pytest.raises(PluginError, match="args-pack"):
        load_registry(Settings(plugins=("args-pack",)))


def test_register_actions_must_return_actions(dists):
    dists.add(
        "wrong-pack",
        "wrong_pack",
        GOOD_PACK.replace("return [Action(", "return [dict(name=").replace(
            '"{name}", run, Empty, "A pack installed for a test.")', '"x")'
        ),
    )
    with pytest.raises(PluginError, match=r"wrong-pack.*must return a list of Action"):
        load_registry(Settings(plugins=("wrong-pack",)))


ECHO = InProcessPlugin(openexec_echo, "openexec-echo")


def test_allow_list_filters_by_exact_name():
    registry = load_registry(Settings(allowed_actions=("echo",)), [ECHO, PROBE])
    assert registry.allowed == {"echo"}
    assert [a.name for a in registry.allowed_actions()] == ["echo"]
    assert registry.restricted is True and registry.allow_list == ("echo",)


def test_allow_list_filters_by_namespace():
    registry = load_registry(Settings(allowed_actions=("probe.*", "add")), [ECHO, PROBE])
    probes = {name for name in registry.actions if name.startswith("probe.")}
    assert len(probes) > 3
    assert registry.allowed == probes | {"add"}


def test_no_allow_list_allows_everything():
    registry = load_registry(Settings(), [ECHO, PROBE])
    assert registry.allowed == set(registry.actions) and registry.restricted is False


@pytest.mark.parametrize("entry", ["ehco", "files.*", "ech*", "echo.*"])
def test_allow_list_entry_matching_nothing_stops_startup(entry):
    with pytest.raises(
        ConfigError, match=rf"OPENEXEC_ALLOWED_ACTIONS: entry {re.escape(repr(entry))} matches no"
    ):
        load_registry(Settings(allowed_actions=("echo", entry)), [ECHO])


def test_action_names_and_records_are_validated():
    from pydantic import BaseModel

    from openexec import Action

    class Empty(BaseModel):
        pass

    def run(payload, ctx):
        return {}

    for bad in ["Echo", "files..read", "1files", "files.", "x" * 65, "files/read", ""]:
        with pytest.raises(ValueError, match="action name"):
            Action(bad, run, Empty, "described")
    with pytest.raises(ValueError, match="description"):
        Action("ok", run, Empty, "  ")
    with pytest.raises(ValueError, match="pydantic model"):
        Action("ok", run, dict, "described")
    assert Action("files.read_all", run, Empty, "described").name == "files.read_all"


def test_registry_is_frozen():
    registry = load_registry(Settings(plugins=("openexec-echo",)))
    with pytest.raises(TypeError):
        registry.actions["evil"] = registry.actions["echo"]
    with pytest.raises(AttributeError):
        registry.allowed.add("evil")


def test_a_pack_installed_after_startup_changes_nothing(dists, tmp_path):
    from fastapi.testclient import TestClient

    from openexec.app import create_app

    settings = Settings(
        db_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
        pack_environment={"OPENEXEC_FILES_ROOT": str(tmp_path / "files")},
    )
    with TestClient(create_app(settings)) as client:
        before = client.get("/actions").json()
        dists.add("late-pack", "late_pack", GOOD_PACK.replace("{name}", "late.run"))
        assert "late.run" in load_registry(Settings()).actions  # a new startup would see it
        assert client.get("/actions").json() == before
        response = client.post(
            "/execute", json={"action": "late.run", "payload": {}, "nonce": "late"}
        )
        assert response.status_code == 404 and response.json()["code"] == "unknown_action"
        assert "late.run" not in [p["actions"] for p in client.get("/health").json()["plugins"]]


def test_filtered_action_is_403_and_hidden(make_client):
    client = make_client(allowed_actions=("echo",))
    response = client.post(
        "/execute", json={"action": "add", "payload": {"a": 1, "b": 2}, "nonce": "n"}
    )
    assert response.status_code == 403
    assert response.json()["code"] == "action_not_allowed"
    assert "not in the execution allow-list" in response.json()["detail"]
    assert [a["name"] for a in client.get("/actions").json()] == ["echo"]


def test_each_app_has_its_own_plugin_set(openexec_client):
    only_echo = openexec_client(openexec_echo)
    both = openexec_client(openexec_echo, PROBE)
    assert {a["name"] for a in only_echo.get("/actions").json()} == {"echo", "add"}
    assert "probe.bump" in {a["name"] for a in both.get("/actions").json()}


@pytest.mark.parametrize("message", [1e16, None, {"why": "x"}])
def test_an_action_error_message_must_be_text(message):
    """It is signed into the receipt, whose statement is written as text (no numbers)."""
    with pytest.raises(TypeError, match="message must be a string"):
        ActionError("refused", message)
    assert ActionError("refused", "a sentence").message == "a sentence"
