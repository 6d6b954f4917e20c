"""Fixtures: the pack on a real root in tmp_path, called as the host calls it, and a sentinel
tree beside the root to prove confinement.

Test modules get these helpers through fixtures only (importing this conftest by name would
depend on how pytest names modules); they import the classes for annotations alone.
"""

from __future__ import annotations

import logging
import os
import stat
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import openexec_files
import pytest

from openexec import Action, ActionError, Context

SECRET = b"outside secret\n"
MAX_BYTES = 4096


@dataclass
class Files:
    """The pack's actions on ``root``, called as the host would: validate, then run."""

    root: Path
    actions: dict[str, Action]
    max_bytes: int

    def run(self, name: str, **payload: Any) -> dict[str, Any]:
        action = self.actions[name]
        ctx = Context(
            exec_id="exec-test",
            nonce="nonce-test",
            tenant_id=None,
            action=name,
            mode="demo",
            started_at=datetime.now(UTC),
            logger=logging.getLogger("openexec_files.tests"),
        )
        return action.handler(action.input.model_validate(payload), ctx)

    def fails(self, name: str, code: str, **payload: Any) -> ActionError:
        """Run and assert the action fails with ``code``."""
        with pytest.raises(ActionError) as caught:
            self.run(name, **payload)
        assert caught.value.code == code, caught.value.message
        return caught.value


def make_files(root: Path, max_bytes: int = MAX_BYTES) -> Files:
    state = root.parent / f"{root.name}-state"
    pack_settings = openexec_files.FilesSettings(root=root, max_bytes=max_bytes, state=state)
    openexec_files.startup(pack_settings)
    actions = openexec_files.register_actions(pack_settings)
    return Files(root, {action.name: action for action in actions}, max_bytes)


def snapshot(top: Path) -> dict[str, tuple[Any, ...]]:
    """Everything observable about a tree without following links: types, modes, content, mtimes."""
    seen: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(top):  # os.walk does not follow links by default
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = path.lstat()
            if stat.S_ISREG(st.st_mode):
                detail: Any = path.read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                detail = os.readlink(path)
            else:
                detail = None
            key = str(path.relative_to(top))
            seen[key] = (stat.S_IFMT(st.st_mode), st.st_mode, st.st_size, st.st_mtime_ns, detail)
    return seen


@dataclass
class Outside:
    """A sentinel directory next to the root; attacks must leave it and tmp_path untouched."""

    base: Path
    path: Path
    before: dict[str, tuple[Any, ...]]
    siblings: set[str]

    @property
    def secret(self) -> Path:
        return self.path / "secret.txt"

    def assert_untouched(self) -> None:
        assert snapshot(self.path) == self.before
        assert {p.name for p in self.base.iterdir()} == self.siblings, "something appeared"


@pytest.fixture(autouse=True)
def _deep_trees_removed(tmp_path: Path) -> Iterator[None]:
    """Remove what a test built, deep trees included, once it is done. pytest deletes old
    temporary directories with Python 3.11's recursive shutil.rmtree, which fails on a tree
    deeper than the recursion limit (these tests build 1,024 levels and more); coreutils' rm
    walks any depth."""
    yield
    subprocess.run(["rm", "-rf", "--", str(tmp_path)], check=True)


@pytest.fixture
def files(tmp_path: Path) -> Files:
    return make_files(tmp_path / "root")


@pytest.fixture
def files_at() -> Callable[..., Files]:
    """Factory: ``files_at(root, max_bytes=...)`` registers the pack on another root."""
    return make_files


@pytest.fixture
def tree_snapshot() -> Callable[[Path], dict[str, tuple[Any, ...]]]:
    return snapshot


@pytest.fixture
def outside(tmp_path: Path, files: Files) -> Outside:
    path = tmp_path / "outside"
    (path / "dir").mkdir(parents=True)
    (path / "secret.txt").write_bytes(SECRET)
    (path / "dir" / "inner.txt").write_bytes(SECRET)
    (path / "x.txt").write_bytes(SECRET)
    return Outside(tmp_path, path, snapshot(path), {"root", "root-state", "outside"})
