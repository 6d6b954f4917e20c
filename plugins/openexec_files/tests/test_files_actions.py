"""Each action on real files: results, every error code, atomic writes, CAS, limits."""

from __future__ import annotations

import base64
import errno
import hashlib
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from openexec_files.atomic import TMP_PREFIX
from openexec_files.errors import fs_error
from openexec_files.walk import MAX_DEPTH

if TYPE_CHECKING:
    from conftest import Files


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(TMP_PREFIX)]


# registration


def test_registration_creates_the_root_0700_and_offers_eight_actions(
    tmp_path: Path, files_at: Callable[..., Files]
) -> None:
    files = files_at(tmp_path / "deep" / "root")
    assert stat.S_IMODE((tmp_path / "deep" / "root").stat().st_mode) == 0o700
    assert sorted(files.actions) == [
        "files.apply_patch",
        "files.delete",
        "files.list",
        "files.mkdir",
        "files.move",
        "files.read",
        "files.stat",
        "files.write",
    ]


def test_root_is_bound_by_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files_at: Callable[..., Files]
) -> None:
    monkeypatch.chdir(tmp_path)
    files = files_at(Path("relative-root"))
    monkeypatch.chdir(tmp_path / "relative-root")
    files.run("files.write", path="a.txt", content="x")
    assert (tmp_path / "relative-root" / "a.txt").read_text() == "x"


def test_missing_root_is_root_unavailable(files: Files) -> None:
    files.root.rmdir()
    files.fails("files.list", "root_unavailable")
    files.fails("files.write", "root_unavailable", path="a", content="x")


def test_root_may_be_an_operator_symlink(tmp_path: Path, files_at: Callable[..., Files]) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "root").symlink_to(tmp_path / "real")
    files = files_at(tmp_path / "root")
    files.run("files.write", path="a.txt", content="x")
    assert (tmp_path / "real" / "a.txt").read_text() == "x"


# files.write


def test_create_writes_a_new_0600_file_and_refuses_an_existing_one(files: Files) -> None:
    result = files.run("files.write", path="a.txt", content="hello")
    assert result == {"path": "a.txt", "size": 5, "sha256": sha(b"hello"), "created": True}
    assert (files.root / "a.txt").read_bytes() == b"hello"
    assert stat.S_IMODE((files.root / "a.txt").stat().st_mode) == 0o600
    files.fails("files.write", "exists", path="a.txt", content="other")
    assert (files.root / "a.txt").read_bytes() == b"hello"
    assert leftovers(files.root) == []


def test_overwrite_replaces_and_keeps_permission_bits(files: Files) -> None:
    target = files.root / "a.txt"
    target.write_bytes(b"old")
    target.chmod(0o640)
    result = files.run("files.write", path="a.txt", content="new", mode="overwrite")
    assert result == {"path": "a.txt", "size": 3, "sha256": sha(b"new"), "created": False}
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


def test_overwrite_of_a_missing_file_creates_it(files: Files) -> None:
    result = files.run("files.write", path="a.txt", content="x", mode="overwrite")
    assert result["created"] is True
    assert (files.root / "a.txt").read_bytes() == b"x"


def test_overwrite_swaps_in_a_new_file_rather_than_rewriting_in_place(files: Files) -> None:
    """A reader holding the old file sees all of the old content: the write was a rename."""
    target = files.root / "a.txt"
    target.write_bytes(b"old content")
    with target.open("rb") as old:
        files.run("files.write", path="a.txt", content="NEW", mode="overwrite")
        assert old.read() == b"old content"
    assert target.read_bytes() == b"NEW"
    assert leftovers(files.root) == []


def test_append_extends_an_existing_file_and_creates_a_missing_one(files: Files) -> None:
    created = files.run("files.write", path="log.txt", content="one\n", mode="append")
    assert created["created"] is True
    result = files.run("files.write", path="log.txt", content="two\n", mode="append")
    assert result == {
        "path": "log.txt",
        "size": 8,
        "sha256": sha(b"one\ntwo\n"),
        "created": False,
    }
    assert (files.root / "log.txt").read_bytes() == b"one\ntwo\n"


def test_compare_and_swap(files: Files) -> None:
    target = files.root / "a.txt"
    target.write_bytes(b"v1")
    files.run("files.write", path="a.txt", content="v2", mode="overwrite", if_sha256=sha(b"v1"))
    assert target.read_bytes() == b"v2"
    files.fails(
        "files.write",
        "precondition_failed",
        path="a.txt",
        content="v3",
        mode="overwrite",
        if_sha256=sha(b"v1"),
    )
    files.fails(
        "files.write",
        "precondition_failed",
        path="a.txt",
        content="tail",
        mode="append",
        if_sha256=sha(b"v1"),
    )
    assert target.read_bytes() == b"v2"
    files.run("files.write", path="a.txt", content="+", mode="append", if_sha256=sha(b"v2"))
    assert target.read_bytes() == b"v2+"
    files.fails(
        "files.write",
        "precondition_failed",
        path="missing.txt",
        content="x",
        mode="overwrite",
        if_sha256=sha(b""),
    )
    assert not (files.root / "missing.txt").exists()


def test_concurrent_compare_and_swap_loses_no_update(files: Files) -> None:
    """Writers race to increment a counter with CAS; the directory lock makes each swap atomic."""
    files.run("files.write", path="counter", content="0")
    threads, increments = 4, 25

    def work() -> None:
        done = 0
        while done < increments:
            current = files.run("files.read", path="counter")
            try:
                files.run(
                    "files.write",
                    path="counter",
                    content=str(int(current["content"]) + 1),
                    mode="overwrite",
                    if_sha256=current["sha256"],
                )
            except Exception as exc:  # only precondition_failed is expected: retry
                assert getattr(exc, "code", None) == "precondition_failed"
                continue
            done += 1

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert (files.root / "counter").read_text() == str(threads * increments)


def test_parents_are_created_0700_only_when_asked(files: Files) -> None:
    files.fails("files.write", "not_found", path="a/b/c.txt", content="x")
    assert not (files.root / "a").exists()
    files.run("files.write", path="a/b/c.txt", content="x", parents=True)
    assert (files.root / "a" / "b" / "c.txt").read_bytes() == b"x"
    assert stat.S_IMODE((files.root / "a" / "b").stat().st_mode) == 0o700


def test_write_type_errors(files: Files) -> None:
    (files.root / "dir").mkdir()
    (files.root / "file").write_bytes(b"f")
    files.fails("files.write", "is_a_directory", path="dir", content="x", mode="overwrite")
    files.fails("files.write", "is_a_directory", path="dir", content="x", mode="append")
    files.fails("files.write", "exists", path="dir", content="x")
    files.fails("files.write", "not_a_directory", path="file/x", content="x")
    files.fails("files.write", "not_a_directory", path="file/x", content="x", parents=True)


def test_write_size_limit_keeps_old_content_and_leaves_no_temp_file(files: Files) -> None:
    target = files.root / "a.txt"
    target.write_bytes(b"old")
    files.run("files.write", path="max.bin", content="x" * files.max_bytes)
    files.fails(
        "files.write",
        "too_large",
        path="a.txt",
        content="x" * (files.max_bytes + 1),
        mode="overwrite",
    )
    files.fails(
        "files.write", "too_large", path="a.txt", content="x" * (files.max_bytes - 2), mode="append"
    )
    assert target.read_bytes() == b"old"
    assert leftovers(files.root) == []


def test_base64_round_trip_of_every_byte(files: Files) -> None:
    data = bytes(range(256)) * 2
    encoded = base64.b64encode(data).decode()
    written = files.run("files.write", path="bin", content=encoded, encoding="base64")
    assert written["sha256"] == sha(data)
    assert (files.root / "bin").read_bytes() == data
    read = files.run("files.read", path="bin", encoding="base64")
    assert read == {
        "path": "bin",
        "encoding": "base64",
        "content": encoded,
        "size": 512,
        "sha256": sha(data),
    }
    files.fails("files.read", "not_utf8", path="bin")


# files.read


def test_read_text(files: Files) -> None:
    (files.root / "a.txt").write_bytes("héllo\n".encode())
    assert files.run("files.read", path="a.txt") == {
        "path": "a.txt",
        "encoding": "utf-8",
        "content": "héllo\n",
        "size": 7,
        "sha256": sha("héllo\n".encode()),
    }


def test_read_errors(files: Files) -> None:
    (files.root / "dir").mkdir()
    (files.root / "big").write_bytes(b"x" * (files.max_bytes + 1))
    (files.root / "max").write_bytes(b"x" * files.max_bytes)
    files.fails("files.read", "not_found", path="missing")
    files.fails("files.read", "not_found", path="nodir/missing")
    files.fails("files.read", "is_a_directory", path="dir")
    files.fails("files.read", "too_large", path="big")
    assert files.run("files.read", path="max")["size"] == files.max_bytes


# files.list


def test_list_is_sorted_by_full_path(files: Files) -> None:
    for name in ("a", "a/b", "a-b", "b"):
        (files.root / name).mkdir()
    for name in ("a.txt", "a/b/z.txt", "a/b.txt", "b/c"):
        (files.root / name).write_bytes(b"12345")
    result = files.run("files.list", recursive=True)
    assert result == {
        "path": ".",
        "truncated": False,
        "entries": [
            {"path": "a", "type": "directory", "size": None},
            {"path": "a-b", "type": "directory", "size": None},
            {"path": "a.txt", "type": "file", "size": 5},
            {"path": "a/b", "type": "directory", "size": None},
            {"path": "a/b.txt", "type": "file", "size": 5},
            {"path": "a/b/z.txt", "type": "file", "size": 5},
            {"path": "b", "type": "directory", "size": None},
            {"path": "b/c", "type": "file", "size": 5},
        ],
    }
    flat = files.run("files.list")
    assert [e["path"] for e in flat["entries"]] == ["a", "a-b", "a.txt", "b"]
    sub = files.run("files.list", path="a", recursive=True)
    assert [e["path"] for e in sub["entries"]] == ["a/b", "a/b.txt", "a/b/z.txt"]
    assert files.run("files.list", recursive=True) == result  # deterministic


def test_list_truncates_to_the_first_entries_in_order(files: Files) -> None:
    for name in ("d", "d/e"):
        (files.root / name).mkdir()
    for name in ("c", "d/e/f", "d/g"):
        (files.root / name).write_bytes(b"")
    result = files.run("files.list", recursive=True, max_entries=3)
    assert [e["path"] for e in result["entries"]] == ["c", "d", "d/e"]
    assert result["truncated"] is True
    assert files.run("files.list", recursive=True, max_entries=5)["truncated"] is False


def test_list_errors(files: Files) -> None:
    (files.root / "file").write_bytes(b"")
    files.fails("files.list", "not_found", path="missing")
    files.fails("files.list", "not_a_directory", path="file")


def test_list_shows_special_entries_without_following_them(files: Files, tmp_path: Path) -> None:
    (files.root / "dir").mkdir()
    (files.root / "dir" / "inside.txt").write_bytes(b"")
    (files.root / "link").symlink_to(files.root / "dir")
    os.mkfifo(files.root / "fifo")
    entries = files.run("files.list", recursive=True)["entries"]
    assert entries == [
        {"path": "dir", "type": "directory", "size": None},
        {"path": "dir/inside.txt", "type": "file", "size": 0},
        {"path": "fifo", "type": "fifo", "size": None},
        {"path": "link", "type": "symlink", "size": None},
    ]


def test_list_skips_names_that_are_not_utf8(files: Files) -> None:
    os.mkdir(os.fsencode(files.root) + b"/bad\xff")
    (files.root / "good").write_bytes(b"")
    assert [e["path"] for e in files.run("files.list")["entries"]] == ["good"]


# files.stat


def test_stat(files: Files) -> None:
    (files.root / "dir").mkdir()
    (files.root / "a.txt").write_bytes(b"abc")
    (files.root / "big").write_bytes(b"x" * (files.max_bytes + 1))
    assert files.run("files.stat", path="a.txt") == {
        "path": "a.txt",
        "exists": True,
        "type": "file",
        "size": 3,
        "sha256": sha(b"abc"),
    }
    assert files.run("files.stat", path="dir") == {
        "path": "dir",
        "exists": True,
        "type": "directory",
        "size": None,
        "sha256": None,
    }
    missing = {"exists": False, "type": None, "size": None, "sha256": None}
    assert files.run("files.stat", path="nope") == {"path": "nope", **missing}
    assert files.run("files.stat", path="no/such/dir") == {"path": "no/such/dir", **missing}
    big = files.run("files.stat", path="big")
    assert (big["size"], big["sha256"]) == (files.max_bytes + 1, None)
    files.fails("files.stat", "not_a_directory", path="a.txt/x")


# files.delete


def test_delete_file_and_directories(files: Files) -> None:
    (files.root / "a.txt").write_bytes(b"")
    (files.root / "empty").mkdir()
    (files.root / "tree" / "sub").mkdir(parents=True)
    (files.root / "tree" / "sub" / "f").write_bytes(b"")
    assert files.run("files.delete", path="a.txt") == {"path": "a.txt", "deleted": True}
    files.fails("files.delete", "not_found", path="a.txt")
    files.fails("files.delete", "not_found", path="nodir/a.txt")
    files.run("files.delete", path="empty")
    files.fails("files.delete", "not_empty", path="tree")
    assert (files.root / "tree" / "sub" / "f").exists()
    files.run("files.delete", path="tree", recursive=True)
    assert list(files.root.iterdir()) == []


def test_delete_compare_and_swap(files: Files) -> None:
    (files.root / "a.txt").write_bytes(b"v1")
    (files.root / "dir").mkdir()
    files.fails("files.delete", "precondition_failed", path="a.txt", if_sha256=sha(b"v0"))
    assert (files.root / "a.txt").exists()
    files.fails("files.delete", "is_a_directory", path="dir", if_sha256=sha(b"v1"))
    files.run("files.delete", path="a.txt", if_sha256=sha(b"v1"))
    assert not (files.root / "a.txt").exists()


def test_recursive_delete_refuses_deeper_than_its_limit(files: Files) -> None:
    # Deeper than the pack's one limit, so made without it (as another program could).
    fd = os.open(files.root, os.O_RDONLY | os.O_DIRECTORY)
    for name in ["top"] + ["d"] * (MAX_DEPTH + 5):
        os.mkdir(name, dir_fd=fd)
        child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.close(fd)
    files.fails("files.delete", "too_deep", path="top", recursive=True)
    files.fails("files.list", "too_deep", recursive=True, max_entries=10_000)
    # Moving part of it towards the root needs no walk and takes the tree apart.
    files.run("files.move", src="top/" + "/".join(["d"] * 500), dst="rest")
    files.run("files.delete", path="top", recursive=True)
    files.run("files.delete", path="rest", recursive=True)
    assert list(files.root.iterdir()) == []


# files.mkdir


def test_mkdir(files: Files) -> None:
    (files.root / "file").write_bytes(b"")
    assert files.run("files.mkdir", path="d") == {"path": "d", "created": True}
    assert stat.S_IMODE((files.root / "d").stat().st_mode) == 0o700
    files.fails("files.mkdir", "exists", path="d")
    assert files.run("files.mkdir", path="d", exist_ok=True) == {"path": "d", "created": False}
    files.fails("files.mkdir", "exists", path="file", exist_ok=True)
    files.fails("files.mkdir", "not_found", path="x/y/z")
    files.fails("files.mkdir", "not_a_directory", path="file/y", parents=True)
    assert files.run("files.mkdir", path="x/y/z", parents=True)["created"] is True
    assert (files.root / "x" / "y" / "z").is_dir()


# files.move


def test_move(files: Files) -> None:
    (files.root / "a.txt").write_bytes(b"a")
    (files.root / "b.txt").write_bytes(b"b")
    (files.root / "dir").mkdir()
    assert files.run("files.move", src="a.txt", dst="dir/a.txt") == {
        "src": "a.txt",
        "dst": "dir/a.txt",
    }
    assert (files.root / "dir" / "a.txt").read_bytes() == b"a"
    files.fails("files.move", "exists", src="dir/a.txt", dst="b.txt")
    assert (files.root / "b.txt").read_bytes() == b"b"
    files.run("files.move", src="dir/a.txt", dst="b.txt", overwrite=True)
    assert (files.root / "b.txt").read_bytes() == b"a"
    assert not (files.root / "dir" / "a.txt").exists()
    files.run("files.move", src="dir", dst="moved")
    assert (files.root / "moved").is_dir()


def test_move_errors(files: Files) -> None:
    (files.root / "f").write_bytes(b"f")
    (files.root / "d" / "sub").mkdir(parents=True)
    (files.root / "full" / "x").mkdir(parents=True)
    files.fails("files.move", "not_found", src="missing", dst="x")
    files.fails("files.move", "not_found", src="f", dst="nodir/f")
    files.fails("files.move", "invalid_move", src="d", dst="d/sub/d")
    files.fails("files.move", "is_a_directory", src="f", dst="d", overwrite=True)
    files.fails("files.move", "not_a_directory", src="d", dst="f", overwrite=True)
    files.fails("files.move", "not_empty", src="d", dst="full", overwrite=True)
    files.fails("files.move", "exists", src="f", dst="f")
    assert files.run("files.move", src="f", dst="f", overwrite=True) == {"src": "f", "dst": "f"}
    assert (files.root / "f").read_bytes() == b"f"


# results and errors


def test_results_carry_no_times_or_inode_numbers(files: Files) -> None:
    files.run("files.write", path="a.txt", content="x")
    first = files.run("files.stat", path="a.txt")
    os.utime(files.root / "a.txt", (0, 0))
    assert files.run("files.stat", path="a.txt") == first
    assert set(first) == {"path", "exists", "type", "size", "sha256"}


def test_unexpected_errno_becomes_io_error_naming_only_the_relative_path() -> None:
    error = fs_error(OSError(errno.EIO, "Input/output error", "/secret/abs/path"), "a.txt")
    assert error.code == "io_error"
    assert error.message == "a.txt: could not be accessed (EIO)"
