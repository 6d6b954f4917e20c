"""Escapes attempted for real on disk; nothing outside the root may be read, written or created."""

from __future__ import annotations

import os
import socket
import stat
import sys
import threading
from collections.abc import Iterator
from contextlib import chdir, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from openexec_files.atomic import publish
from openexec_files.resolve import open_dir, open_file, read_bounded
from pydantic import ValidationError

from openexec import ActionError

if TYPE_CHECKING:
    from conftest import Files, Outside

TRAVERSALS = [
    "../outside/secret.txt",
    "../outside/new.txt",
    "a/../../outside/new.txt",
    "/tmp/new.txt",
    "//outside/new.txt",
    "..",
    "./../outside",
    "..\\outside\\new.txt",
    "a\\..\\..\\new.txt",
    "new.txt\x00../../outside",
    "x" * 1025,
    "x" * 256,
]


def every_action(path: str) -> list[tuple[str, dict[str, Any]]]:
    """Each action aimed at ``path`` in each way it can touch it, mutating ones with force."""
    return [
        ("files.read", {"path": path}),
        ("files.stat", {"path": path}),
        ("files.list", {"path": path, "recursive": True}),
        ("files.write", {"path": path, "content": "pwned", "parents": True}),
        ("files.write", {"path": path, "content": "pwned", "mode": "overwrite"}),
        ("files.write", {"path": path, "content": "pwned", "mode": "append"}),
        ("files.delete", {"path": path, "recursive": True}),
        ("files.mkdir", {"path": path, "parents": True, "exist_ok": True}),
        ("files.move", {"src": path, "dst": "stolen", "overwrite": True}),
        ("files.move", {"src": "bait.txt", "dst": path, "overwrite": True}),
    ]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_traversal_paths_are_invalid_payloads(files: Files, outside: Outside, path: str) -> None:
    (files.root / "bait.txt").write_bytes(b"bait")
    for name, payload in every_action(path):
        with pytest.raises(ValidationError):
            files.run(name, **payload)
    assert (files.root / "bait.txt").read_bytes() == b"bait"
    outside.assert_untouched()


def test_percent_encoding_is_just_a_name(files: Files, outside: Outside) -> None:
    files.run("files.write", path="%2e%2e/%2e%2e/outside/new.txt", content="x", parents=True)
    assert (files.root / "%2e%2e" / "%2e%2e" / "outside" / "new.txt").read_bytes() == b"x"
    outside.assert_untouched()


def outcome(files: Files, name: str, payload: dict[str, Any]) -> str:
    """The error code of an action, or "ok"."""
    try:
        files.run(name, **payload)
    except ActionError as err:
        return err.code
    return "ok"


def test_symlink_as_last_component_is_refused(files: Files, outside: Outside) -> None:
    (files.root / "bait.txt").write_bytes(b"bait")
    (files.root / "file-link").symlink_to(outside.secret)
    (files.root / "dir-link").symlink_to(outside.path)
    (files.root / "dangling").symlink_to(outside.path / "new.txt")
    (files.root / "inside-link").symlink_to(files.root / "bait.txt")  # even inside: never followed
    for link in ("file-link", "dir-link", "dangling", "inside-link"):
        for name, payload in every_action(link):
            assert outcome(files, name, payload) == "symlink_refused", (link, name, payload)
        assert (files.root / link).is_symlink()
    assert (files.root / "bait.txt").read_bytes() == b"bait"
    outside.assert_untouched()


def test_symlink_as_middle_component_is_refused(files: Files, outside: Outside) -> None:
    (files.root / "bait.txt").write_bytes(b"bait")
    (files.root / "d").mkdir()
    (files.root / "d" / "link").symlink_to(outside.path)
    for path in ("d/link/secret.txt", "d/link/new.txt", "d/link/dir/inner.txt", "d/link/dir"):
        for name, payload in every_action(path):
            assert outcome(files, name, payload) == "symlink_refused", (path, name, payload)
    outside.assert_untouched()


def test_list_and_recursive_delete_never_follow_links(files: Files, outside: Outside) -> None:
    tree = files.root / "tree"
    tree.mkdir()
    (tree / "to-dir").symlink_to(outside.path)
    (tree / "to-file").symlink_to(outside.secret)
    listed = files.run("files.list", path="tree", recursive=True)["entries"]
    assert [(e["path"], e["type"]) for e in listed] == [
        ("tree/to-dir", "symlink"),
        ("tree/to-file", "symlink"),
    ]
    files.run("files.delete", path="tree", recursive=True)
    assert not tree.exists()
    outside.assert_untouched()


def test_hard_link_to_an_outside_file_is_neither_read_nor_written(
    files: Files, outside: Outside
) -> None:
    os.link(outside.secret, files.root / "hard")
    files.fails("files.read", "hard_link_refused", path="hard")
    files.fails("files.read", "hard_link_refused", path="hard", encoding="base64")
    for mode in ("overwrite", "append"):
        files.fails("files.write", "hard_link_refused", path="hard", content="pwned", mode=mode)
    files.fails("files.delete", "hard_link_refused", path="hard", if_sha256="0" * 64)
    stat_result = files.run("files.stat", path="hard")
    assert (stat_result["type"], stat_result["sha256"]) == ("file", None)
    outside.assert_untouched()
    files.run("files.delete", path="hard")  # removes the name inside the root, nothing else
    assert not (files.root / "hard").exists()
    outside.assert_untouched()


def make_socket(path: Path) -> Iterator[None]:
    with socket.socket(socket.AF_UNIX) as server:
        with chdir(path.parent):  # bound by name: socket paths are capped at 108 bytes
            server.bind(path.name)
        yield


@contextmanager
def special(kind: str, path: Path) -> Iterator[None]:
    """Create a FIFO, a unix socket or a device node at ``path`` for the duration."""
    if kind == "fifo":
        os.mkfifo(path)
        yield
    elif kind == "socket":
        yield from make_socket(path)
    else:
        # scripts/test.sh runs as root (it starts PostgreSQL); a device case never skips.
        assert os.geteuid() == 0, "creating device nodes needs root: run scripts/test.sh as root"
        # /dev/zero (1, 5): read endlessly if it were ever opened; /dev/loop0-like block device
        mode, device = (
            (stat.S_IFCHR, os.makedev(1, 5)) if kind == "char" else (stat.S_IFBLK, os.makedev(7, 0))
        )
        os.mknod(path, mode | 0o600, device)
        yield


def without_blocking(call: Any) -> Any:
    """Run ``call`` in a thread; fail rather than hang if opening a FIFO were to block."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = call()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive(), "the action blocked on a special file"
    if "error" in box:
        raise box["error"]
    return box["result"]


@pytest.mark.parametrize(
    ("kind", "listed"),
    [("fifo", "fifo"), ("socket", "socket"), ("char", "char_device"), ("block", "block_device")],
)
def test_special_files_are_refused(files: Files, outside: Outside, kind: str, listed: str) -> None:
    target = files.root / "special"
    (files.root / "bait.txt").write_bytes(b"bait")
    with special(kind, target):
        before = target.lstat()
        for name, payload in every_action("special"):
            code = without_blocking(lambda n=name, p=payload: outcome(files, n, p))
            assert code in ("not_regular_file", "not_a_directory"), (name, payload, code)
        entries = files.run("files.list")["entries"]
        assert {"path": "special", "type": listed, "size": None} in entries
        after = target.lstat()
        assert (stat.S_IFMT(after.st_mode), after.st_ino) == (
            stat.S_IFMT(before.st_mode),
            before.st_ino,
        )
    outside.assert_untouched()


def test_resolution_holds_the_directory_not_its_name(files: Files, outside: Outside) -> None:
    """Once a directory is reached, swapping its name for a link cannot redirect the request."""
    real = files.root / "d"
    real.mkdir()
    (real / "x.txt").write_bytes(b"inside")
    with open_dir(files.root, ["d"]) as dir_fd:
        real.rename(files.root / "d-moved")
        (files.root / "d").symlink_to(outside.path)
        publish(dir_fd, "planted.txt", b"planted", replace=False, perm=0o600, shown="d/planted.txt")
        with open_file(dir_fd, "x.txt", "d/x.txt") as (fd, _):
            assert read_bounded(fd, 100, "d/x.txt") == b"inside"
    assert (files.root / "d-moved" / "planted.txt").read_bytes() == b"planted"
    files.fails("files.read", "symlink_refused", path="d/x.txt")
    outside.assert_untouched()


@contextmanager
def flipping(root: Path, target: Path) -> Iterator[list[int]]:
    """Swap ``root/d`` between a real directory and a link to ``target`` until the block ends."""
    (root / "parked").symlink_to(target)
    stop = threading.Event()
    flips = [0]
    failures: list[BaseException] = []

    def flip() -> None:
        try:
            while not stop.is_set():
                os.rename(root / "d", root / "swap")
                os.rename(root / "parked", root / "d")
                os.rename(root / "swap", root / "parked")
                flips[0] += 1
        except BaseException as exc:
            failures.append(exc)

    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    thread = threading.Thread(target=flip)
    thread.start()
    try:
        yield flips
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(old_interval)
    assert not failures, failures


def test_directory_flipping_to_a_link_mid_request_never_escapes(
    files: Files, outside: Outside
) -> None:
    """Requests race a thread that keeps swapping a directory for a link to the outside."""
    (files.root / "d").mkdir()
    (files.root / "d" / "x.txt").write_bytes(b"inside")
    allowed = {"ok", "symlink_refused", "not_found", "not_a_directory"}
    seen: dict[str, int] = {}
    with flipping(files.root, outside.path) as flips:
        for round_ in range(400):
            attempts = [
                ("files.read", {"path": "d/x.txt"}),
                ("files.write", {"path": "d/x.txt", "content": "inside", "mode": "overwrite"}),
                ("files.write", {"path": f"d/new-{round_}.txt", "content": "new"}),
                ("files.mkdir", {"path": f"d/sub-{round_}"}),
                ("files.stat", {"path": "d/x.txt"}),
                ("files.list", {"path": "d", "recursive": True}),
                ("files.move", {"src": "d/x.txt", "dst": "d/x.txt", "overwrite": True}),
                ("files.delete", {"path": f"d/new-{round_ - 1}.txt"}),
            ]
            for name, payload in attempts:
                try:
                    result = files.run(name, **payload)
                except ActionError as err:
                    assert err.code in allowed, err.message
                    seen[err.code] = seen.get(err.code, 0) + 1
                    continue
                seen["ok"] = seen.get("ok", 0) + 1
                if name == "files.read":
                    assert result["content"] == "inside"
                if name == "files.stat" and result["exists"]:
                    assert result["size"] == len(b"inside")
                if name == "files.list":
                    assert all(
                        e["path"].startswith(("d/x", "d/new-", "d/sub-")) for e in result["entries"]
                    )
    assert flips[0] > 0
    assert seen.get("ok", 0) > 0 and seen.get("symlink_refused", 0) > 0, seen
    outside.assert_untouched()
