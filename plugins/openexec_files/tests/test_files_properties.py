"""Property: for any path, an action is refused (422 or ActionError) or acts inside the root."""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from openexec import ActionError

if TYPE_CHECKING:
    from conftest import Files, Outside

EXPECTED_CODES = {
    "not_found",
    "exists",
    "is_a_directory",
    "not_a_directory",
    "not_empty",
    "symlink_refused",
    "not_regular_file",
    "hard_link_refused",
    "too_large",
    "not_utf8",
    "precondition_failed",
    "invalid_move",
}

ACTIONS = [
    *("files.write", "files.read", "files.mkdir", "files.delete"),
    *("files.stat", "files.list", "files.move"),
]
NAMES = ["a", "b", "d", "link", "flink", "hard", "fifo", "%2e%2e", "%2f", "...", "é", "文件", " "]
TRAPS = ["..", ".", "", "\x00", "\\", "..\\..", "\ud800", "x" * 256, "outside", "secret.txt"]
NAMED_PATHS = st.lists(st.sampled_from(NAMES), min_size=1, max_size=5).map("/".join)
PATHS = st.one_of(
    NAMED_PATHS,  # valid: reaching the links, the hard link, the FIFO, or plain new names
    NAMED_PATHS,
    st.lists(st.sampled_from(NAMES + TRAPS), min_size=1, max_size=6).map("/".join),
    st.tuples(st.sampled_from(["/", "../", "./", "//"]), NAMED_PATHS).map("".join),
    st.text(max_size=30),
    st.tuples(st.sampled_from(["a/", "é", "x", "../"]), st.integers(500, 1100)).map(
        lambda unit: (unit[0] * unit[1])[: unit[1]]  # around the 1024-byte limit
    ),
)


def plant(root: Path, outside: Path) -> None:
    """(Re)create the traps in the root: links out, a hard link out, a FIFO, a directory."""
    traps: dict[str, Callable[[Path], None]] = {
        "link": lambda p: p.symlink_to(outside),
        "flink": lambda p: p.symlink_to(outside / "secret.txt"),
        "hard": lambda p: os.link(outside / "secret.txt", p),
        "fifo": lambda p: os.mkfifo(p),
        "d": lambda p: p.mkdir(),
    }
    for name, make in traps.items():
        if not os.path.lexists(root / name):
            make(root / name)


def payload_for(action: str, path: str, other: str, flag: bool, data: bytes) -> dict[str, Any]:
    content = base64.b64encode(data).decode()
    return {
        "files.write": {
            "path": path,
            "content": content,
            "encoding": "base64",
            "mode": "overwrite" if flag else "create",
            "parents": flag,
        },
        "files.read": {"path": path, "encoding": "base64"},
        "files.mkdir": {"path": path, "parents": flag, "exist_ok": flag},
        "files.delete": {"path": path, "recursive": flag},
        "files.stat": {"path": path},
        "files.list": {"path": path, "recursive": flag},
        "files.move": {"src": path, "dst": other, "overwrite": flag},
    }[action]


def reachable_without_links(root: Path, path: str) -> os.stat_result:
    """lstat ``path`` component by component, asserting no component is a link."""
    current = root
    for part in path.split("/"):
        current = current / part
        st = current.lstat()
        assert not stat.S_ISLNK(st.st_mode), f"{path}: effect behind a link"
    return st


@settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    action=st.sampled_from(ACTIONS),
    path=PATHS,
    other=PATHS,
    flag=st.booleans(),
    data=st.binary(max_size=32),
)
def test_any_path_is_refused_or_acts_inside_the_root(
    files: Files,
    outside: Outside,
    tree_snapshot: Callable[[Path], dict[str, tuple[Any, ...]]],
    action: str,
    path: str,
    other: str,
    flag: bool,
    data: bytes,
) -> None:
    plant(files.root, outside.path)
    payload = payload_for(action, path, other, flag, data)
    note(repr(payload))
    before = tree_snapshot(files.root)
    try:
        files.run(action, **payload)
    except ValidationError:
        event(f"{action}: payload_invalid")
        assert tree_snapshot(files.root) == before, "a refused payload changed the root"
    except ActionError as err:
        event(f"{action}: {err.code}")
        assert err.code in EXPECTED_CODES, (err.code, err.message)
    else:
        event(f"{action}: ok")
        if action == "files.write":
            assert stat.S_ISREG(reachable_without_links(files.root, path).st_mode)
            assert (files.root / path).read_bytes() == data
        elif action == "files.mkdir":
            assert stat.S_ISDIR(reachable_without_links(files.root, path).st_mode)
        elif action == "files.move":
            reachable_without_links(files.root, other)
    outside.assert_untouched()
