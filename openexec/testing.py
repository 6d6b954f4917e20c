"""Pytest plugin for plugin authors: test a pack in-process, without installing it.

    def test_my_action(openexec_client):
        client = openexec_client(my_pack, allowed_actions=("my.action",))
        assert client.post("/execute", json={...}).status_code == 200

Each call builds a fresh app with its own plugin manager, SQLite file and receipt key, so
nothing leaks between tests. ``approver`` mints valid approvals for clawshield-mode apps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from importlib.metadata import PackageNotFoundError, packages_distributions, version
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI

from openexec.app import create_app
from openexec.approvals import mint_v1, mint_v2
from openexec.plugins import InProcessPlugin, load_registry
from openexec.receipts import private_key_pem, public_key_pem
from openexec.settings import HOST_VARIABLES, Settings

if TYPE_CHECKING:  # imported when used: it needs httpx2, which only test installs have
    from fastapi.testclient import TestClient


def in_process(plugin: ModuleType | InProcessPlugin) -> InProcessPlugin:
    """Name a plugin module after the distribution that ships it, when it is installed."""
    if isinstance(plugin, InProcessPlugin):
        return plugin
    top_level = plugin.__name__.partition(".")[0]
    for distribution in packages_distributions().get(top_level, []):
        try:
            return InProcessPlugin(plugin, distribution, version(distribution))
        except PackageNotFoundError:
            continue
    return InProcessPlugin(plugin, top_level.replace("_", "-"))


def make_app(
    *plugins: ModuleType | InProcessPlugin,
    directory: Path,
    settings: Mapping[str, str] | None = None,
    **overrides: Any,
) -> FastAPI:
    """An app with only ``plugins`` registered, its state (and receipt key) under ``directory``.

    ``settings`` are environment variables by name, the host's (``OPENEXEC_MODE``) and the
    packs' (``OPENEXEC_FILES_ROOT``), read with the service's own rules; ``overrides`` are
    ``Settings`` fields by name (``mode="clawshield"``) and win over both. A name that is
    neither is a ``TypeError`` listing the accepted ones.

    Unless told otherwise, the app integrates its ledger in a thread: a child process would
    cost every test a Python start, and race with the tests that integrate by hand.
    """
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(Settings)})
    if unknown:
        raise TypeError(
            f"openexec_client: unknown setting {', '.join(map(repr, unknown))}; the host's "
            f"settings are {', '.join(f.name for f in dataclasses.fields(Settings))}, and a "
            "pack's are passed by variable name: settings={'OPENEXEC_FILES_ROOT': ...}"
        )
    receipt_key = directory / "receipt-key.pem"
    if not receipt_key.exists():
        receipt_key.write_bytes(private_key_pem(Ed25519PrivateKey.generate()))
        receipt_key.chmod(0o600)
    environment = {
        "OPENEXEC_DB_URL": f"sqlite:///{directory / 'openexec.db'}",
        "OPENEXEC_RECEIPT_KEY": str(receipt_key),
        **(settings or {}),
    }
    if "OPENEXEC_LEDGER_INTEGRATOR" not in environment:
        overrides.setdefault("ledger_integrator", "thread")
    configured = dataclasses.replace(Settings.from_env(environment), **overrides)
    registered = [in_process(p) for p in plugins]
    accepted = HOST_VARIABLES | {
        variable
        for info in load_registry(configured, registered).plugins
        for variable in info.settings
    }
    strays = sorted(set(settings or {}) - accepted)
    if strays:
        raise TypeError(
            f"openexec_client: {', '.join(map(repr, strays))} is no setting of the host or of "
            f"a pack loaded here; accepted: {', '.join(sorted(accepted))}"
        )
    return create_app(configured, registered)


@pytest.fixture
def openexec_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., TestClient]]:
    """Factory: ``openexec_client(*plugin_modules, settings={VARIABLE: value}, **fields)`` → a
    started TestClient (its lifespan entered: the packs' startup hooks have run).

    The test runs in its ``tmp_path``, so that a pack's relative paths (its defaults, such as
    the files pack's ``openexec-files``) land there and not wherever pytest was started."""
    monkeypatch.chdir(tmp_path)
    with ExitStack() as stack:
        count = 0

        def build(
            *plugins: ModuleType | InProcessPlugin,
            settings: Mapping[str, str] | None = None,
            **overrides: Any,
        ) -> TestClient:
            from fastapi.testclient import TestClient

            nonlocal count
            count += 1
            directory = tmp_path / f"openexec-{count}"
            directory.mkdir()
            app = make_app(*plugins, directory=directory, settings=settings, **overrides)
            return stack.enter_context(TestClient(app, raise_server_exceptions=False))

        yield build


class Approver:
    """A governance signer for tests: holds a key pair and mints v1 or v2 approvals."""

    def __init__(self) -> None:
        self.private_key = Ed25519PrivateKey.generate()
        self.public_key = self.private_key.public_key()
        self.public_key_pem = public_key_pem(self.public_key)

    def settings(self, **overrides: Any) -> dict[str, Any]:
        """Settings overrides for a clawshield-mode app trusting this approver."""
        return {"mode": "clawshield", "clawshield_public_keys": (self.public_key,), **overrides}

    def v1(self, action: str, payload: dict[str, Any] | None = None, **options: Any) -> dict:
        return mint_v1(self.private_key, action, payload or {}, **options)

    def v2(self, action: str, payload: dict[str, Any] | None = None, **options: Any) -> dict:
        return mint_v2(self.private_key, action, payload or {}, **options)


@pytest.fixture
def approver() -> Approver:
    return Approver()
