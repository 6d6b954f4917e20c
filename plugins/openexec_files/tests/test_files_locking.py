"""Structure changes take turns: moves exclusively, creations shared, across threads and processes.

Depth is judged from path strings (a path resolved from the root has as many levels as
components) and by walking the moved tree; both hold only while no other move runs between
resolving and renaming or creating. Races are driven with hooks and ``threading.Event``
handshakes, never by sleeping: a party is let go only once the other is known to be at the lock.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import pytest
from openexec_files import actions
from openexec_files.actions import FilesPack
from openexec_files.walk import MAX_DEPTH

from openexec import ActionError

if TYPE_CHECKING:
    from pathlib import Path

    from conftest import Files

# Seconds: only so that a broken lock fails a test instead of hanging it; nothing is ordered by it.
HANG_GUARD = 60


def chain(name: str, levels: int) -> str:
    return "/".join([name] * levels)


def outcome(files: Files, name: str, payload: dict[str, Any]) -> dict[str, Any] | str:
    """The action's result, or the code of the ActionError it failed with."""
    try:
        return files.run(name, **payload)
    except ActionError as err:
        return err.code


def deepest(files: Files) -> int:
    listed = files.run("files.list", recursive=True, max_entries=10_000)
    assert listed["truncated"] is False
    return max(e["path"].count("/") + 1 for e in listed["entries"])


@contextmanager
def root_locked(root: Path, operation: int) -> Iterator[None]:
    """Hold a flock on the root directory, as another action of the pack would."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, operation)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def root_lock_held(root: Path) -> str | None:
    """How the root is locked by someone else right now: None, "shared" or "exclusive"."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for operation, held in ((fcntl.LOCK_EX, None), (fcntl.LOCK_SH, "shared")):
            try:
                fcntl.flock(fd, operation | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            return held
        return "exclusive"
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def watch_locking(monkeypatch: pytest.MonkeyPatch, thread: Callable[[], object]) -> threading.Event:
    """An event set when ``thread()`` first asks for a flock (the real call follows)."""
    locking = threading.Event()
    real_flock = fcntl.flock

    def watched(fd: int, operation: int) -> None:
        if threading.current_thread() is thread() and operation != fcntl.LOCK_UN:
            locking.set()
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", watched)
    return locking


@pytest.fixture
def shallow(files: Files) -> Files:
    """The pack on the same root with a limit of 4 levels."""
    pack = FilesPack(files.root, files.max_bytes, max_depth=4)
    return dataclasses.replace(files, actions={a.name: a for a in pack.actions()})


# The red team's race: A + 500 levels, B + 400, C + 500, and two moves that each stay within the
# limit alone; run one after the other, the second must see what the first did.
INTO_B = {"src": "A", "dst": f"B/{chain('b', 400)}/A"}
INTO_A = {"src": "C", "dst": f"A/{chain('a', 400)}/C"}


@pytest.mark.parametrize(
    ("first", "second", "second_outcome"),
    [
        (INTO_B, INTO_A, "not_found"),  # A has moved: its old path names nothing any more
        (INTO_A, INTO_B, "too_deep"),  # A now holds C 401 levels down: 402 + 901 > 1024
    ],
)
def test_two_racing_moves_cannot_nest_a_tree_beyond_the_limit(
    files: Files,
    monkeypatch: pytest.MonkeyPatch,
    first: dict[str, str],
    second: dict[str, str],
    second_outcome: str,
) -> None:
    """The first move is held inside its depth walk, the second started, and the first let go
    once the second asks for a lock. Before the fix the second had resolved its paths by then,
    and nested the deepest directory 1303 levels down."""
    for top, name, levels in (("A", "a", 500), ("B", "b", 400), ("C", "c", 500)):
        files.run("files.mkdir", path=f"{top}/{chain(name, levels)}", parents=True)
    threads: dict[str, threading.Thread] = {}
    walking, go = threading.Event(), threading.Event()
    real_walk = actions.reaches_beyond

    def held_walk(*args: Any, **kwargs: Any) -> bool:
        if threading.current_thread() is threads["first"]:
            walking.set()
            go.wait(HANG_GUARD)
        return real_walk(*args, **kwargs)

    monkeypatch.setattr(actions, "reaches_beyond", held_walk)
    second_locking = watch_locking(monkeypatch, lambda: threads.get("second"))
    results: dict[str, object] = {}

    def run(key: str, move: dict[str, str]) -> None:
        results[key] = outcome(files, "files.move", move)

    for key, move in (("first", first), ("second", second)):
        threads[key] = threading.Thread(target=run, args=(key, move))
    threads["first"].start()
    assert walking.wait(HANG_GUARD)
    threads["second"].start()
    assert second_locking.wait(HANG_GUARD)
    go.set()
    for thread in threads.values():
        thread.join(HANG_GUARD)
    assert results == {"first": first, "second": second_outcome}
    assert deepest(files) <= MAX_DEPTH  # and list and delete can walk all of it
    for top in {"A", "B", "C"} & {p.name for p in files.root.iterdir()}:
        files.run("files.delete", path=top, recursive=True)


@pytest.mark.parametrize(
    ("name", "payload", "expected"),
    [
        ("files.mkdir", {"path": "d/x"}, "not_found"),
        ("files.write", {"path": "d/x", "content": "x"}, "not_found"),
        # Missing parents are made where the path now leads: d/e/x, 3 levels down.
        ("files.write", {"path": "d/e/x", "content": "x", "parents": True}, "created"),
    ],
)
def test_a_creation_resolves_its_path_only_once_no_move_runs(
    shallow: Files,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    payload: dict[str, Any],
    expected: str,
) -> None:
    """While the test holds the root exclusively (as a move would), it moves ``d`` 4 levels down;
    the creation, started before, must then resolve ``d`` afresh, not create 5 levels down in it."""
    shallow.run("files.mkdir", path="d")
    shallow.run("files.mkdir", path="p/q/r", parents=True)
    worker: list[threading.Thread] = []
    reached, go = watch_locking(monkeypatch, lambda: worker[0]), threading.Event()
    real_mkdir = os.mkdir

    def held_mkdir(*args: Any, **kwargs: Any) -> None:
        # Creating without having asked for any lock (as before the fix): wait for the move.
        if threading.current_thread() is worker[0]:
            reached.set()
            go.wait(HANG_GUARD)
        real_mkdir(*args, **kwargs)

    monkeypatch.setattr(os, "mkdir", held_mkdir)
    result: list[object] = []
    worker.append(threading.Thread(target=lambda: result.append(outcome(shallow, name, payload))))
    with root_locked(shallow.root, fcntl.LOCK_EX):
        worker[0].start()
        assert reached.wait(HANG_GUARD)
        os.rename(shallow.root / "d", shallow.root / "p/q/r/d")
    go.set()
    worker[0].join(HANG_GUARD)
    if expected == "created":
        assert isinstance(result[0], dict) and result[0]["created"] is True, result
        assert shallow.run("files.stat", path="d/e/x")["exists"] is True
    else:
        assert result == [expected]
    assert deepest(shallow) <= 4
    assert list((shallow.root / "p/q/r/d").iterdir()) == []


def test_creations_share_the_root_and_moves_hold_it_alone(
    files: Files, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seen from the action's own creating or renaming call: creations hold the root lock shared
    (they do not wait for one another), moves exclusively, reads and deletes not at all."""
    files.run("files.mkdir", path="s/x", parents=True)
    files.run("files.mkdir", path="t")
    files.run("files.write", path="s/f", content="f")
    seen: list[tuple[str, str | None]] = []

    def probe(label: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def probed(*args: Any, **kwargs: Any) -> Any:
            seen.append((label, root_lock_held(files.root)))
            return real(*args, **kwargs)

        return probed

    monkeypatch.setattr(os, "mkdir", probe("mkdir", os.mkdir))
    monkeypatch.setattr(actions, "publish", probe("write", actions.publish))
    monkeypatch.setattr(actions, "reaches_beyond", probe("move walk", actions.reaches_beyond))
    monkeypatch.setattr(actions, "rename_noreplace", probe("move", actions.rename_noreplace))
    monkeypatch.setattr(actions, "read_bounded", probe("read", actions.read_bounded))
    monkeypatch.setattr(actions, "empty_tree", probe("delete", actions.empty_tree))
    files.run("files.mkdir", path="s/y")
    files.run("files.write", path="s/g", content="g")
    files.run("files.write", path="top", content="g")
    files.run("files.move", src="s/x", dst="t/x")
    files.run("files.move", src="t/x", dst="s/y/x")
    files.run("files.read", path="s/f")
    files.run("files.delete", path="s/y", recursive=True)
    assert seen == [
        ("mkdir", "shared"),
        ("write", "shared"),
        ("write", "exclusive"),  # in the root itself: the root's own lock is the structure lock
        ("move", "exclusive"),
        ("move walk", "exclusive"),
        ("move", "exclusive"),
        ("read", None),
        ("delete", None),
    ]


CHILD = """
import fcntl, json, sys
from pathlib import Path
from openexec import ActionError
from openexec_files.actions import FilesPack
from openexec_files.models import MoveInput

real_flock = fcntl.flock

def announced(fd, operation):
    if operation != fcntl.LOCK_UN:
        print("locking", flush=True)
    real_flock(fd, operation)

fcntl.flock = announced
root, src, dst = sys.argv[1:]
pack = FilesPack(Path(root), 4096, max_depth=4)
try:
    result = pack.move_path(MoveInput(src=src, dst=dst), None)
except ActionError as err:
    result = err.code
print(json.dumps(result), flush=True)
"""


def test_a_move_in_another_process_waits_for_a_held_exclusive_lock(files: Files) -> None:
    """Workers of one service are processes: a thread lock would not make them take turns."""
    files.run("files.mkdir", path="x/y", parents=True)
    files.run("files.mkdir", path="d")
    files.run("files.mkdir", path="p/q", parents=True)
    with root_locked(files.root, fcntl.LOCK_EX):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(files.root), "x", "d/x"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        assert child.stdout.readline() == "locking\n"
        # Moved meanwhile by the holder of the lock: x/y would land 5 levels down.
        os.rename(files.root / "d", files.root / "p/q/d")
    out, err = child.communicate(timeout=HANG_GUARD)
    assert out.splitlines()[-1] == json.dumps("not_found"), err
    assert sorted(p.name for p in files.root.iterdir()) == ["p", "x"]
    assert list((files.root / "p/q/d").iterdir()) == []
