"""Deep trees: whatever the pack can build it can list and delete, with a linear walk.

A path names at most 512 levels (1024 bytes of ``a/a/...``), but ``files.move`` can put one deep
chain under another, so an agent builds deeper trees than any single path can name. Work is
measured by counting ``os.open`` calls (and the descriptors open at once), not by timing.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
from openexec_files.actions import FilesPack
from openexec_files.walk import MAX_DEPTH, MAX_LIST_BYTES, SPAN, _Descent

from openexec import ActionError

if TYPE_CHECKING:
    from conftest import Files, Outside

TOP_LEVELS = 300  # "b/b/.../b": the chain the other one is moved under
MOVED_LEVELS = 400  # "a/a/.../a", 799 bytes: one path names it
DEPTH = TOP_LEVELS + MOVED_LEVELS  # 700: more than any path of 1024 bytes can name
# The walk's descriptors: the innermost SPAN levels, every SPAN-th level, the top, and the next
# level while it is being opened.
WALK_FDS = SPAN + DEPTH // SPAN + 2


def chain(name: str, levels: int) -> str:
    return "/".join([name] * levels)


def deep_tree_paths() -> list[str]:
    """Every path of the DEPTH-level tree, in the order files.list returns them."""
    top, moved = chain("b", TOP_LEVELS), chain("a", MOVED_LEVELS)
    directories = [chain("b", n) for n in range(1, TOP_LEVELS + 1)]
    directories += [f"{top}/{chain('a', n)}" for n in range(1, MOVED_LEVELS + 1)]
    return sorted([*directories, "b/b.txt", f"{top}/{moved}/leaf.txt"])


def build_deep_tree(files: Files) -> list[str]:
    """Build a DEPTH-level tree as an agent could, with mkdir, write and move; return its paths.

    Besides the chain there is a file at the bottom and one beside a directory high up, so the
    listing's order (``b/b.txt`` sorts before ``b/b/...``) and file sizes are checked too.
    """
    moved = chain("a", MOVED_LEVELS)
    top = chain("b", TOP_LEVELS)
    files.run("files.mkdir", path=moved, parents=True)
    files.run("files.write", path=f"{moved}/leaf.txt", content="bottom")
    files.run("files.mkdir", path=top, parents=True)
    files.run("files.write", path="b/b.txt", content="high")
    files.run("files.move", src="a", dst=f"{top}/a")
    return deep_tree_paths()


def build_deep_tree_directly(files: Files) -> list[str]:
    """The same tree made without the pack: quicker (no fsync per level) where how it was
    built is not the point."""
    bottom = make_chain(files.root, ["b"] * TOP_LEVELS + ["a"] * MOVED_LEVELS)
    with open(os.path.join(bottom, "leaf.txt"), "w") as leaf:
        leaf.write("bottom")
    (files.root / "b" / "b.txt").write_text("high")
    return deep_tree_paths()


def make_chain(top: str | os.PathLike[str], names: list[str]) -> str:
    """Create ``names`` nested below ``top`` without the pack (and without recursing)."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for name in names:
        os.mkdir(name, dir_fd=fd)
        child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.close(fd)
    return os.path.join(top, *names)


def expected_entry(path: str) -> dict[str, object]:
    if path.endswith("leaf.txt"):
        return {"path": path, "type": "file", "size": len("bottom")}
    if path.endswith("b.txt"):
        return {"path": path, "type": "file", "size": len("high")}
    return {"path": path, "type": "directory", "size": None}


@dataclass
class Descriptors:
    opened: int = 0  # os.open calls
    held: int = 0  # descriptors opened through os.open and not yet closed
    peak: int = 0


@contextmanager
def counting_descriptors(monkeypatch: pytest.MonkeyPatch) -> Iterator[Descriptors]:
    """Count os.open calls and the most descriptors they left open at once."""
    seen = Descriptors()
    real_open, real_close = os.open, os.close
    mine: set[int] = set()

    def counted_open(*args: object, **kwargs: object) -> int:
        fd = real_open(*args, **kwargs)  # type: ignore[arg-type]
        seen.opened += 1
        mine.add(fd)
        seen.held = len(mine)
        seen.peak = max(seen.peak, seen.held)
        return fd

    def counted_close(fd: int) -> None:
        real_close(fd)
        mine.discard(fd)
        seen.held = len(mine)

    with monkeypatch.context() as patch:
        patch.setattr(os, "open", counted_open)
        patch.setattr(os, "close", counted_close)
        yield seen


def test_a_tree_deeper_than_a_path_can_name_lists_every_entry_linearly(
    files: Files, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = build_deep_tree(files)
    with counting_descriptors(monkeypatch) as fds:
        result = files.run("files.list", recursive=True, max_entries=10_000)
    assert result == {
        "path": ".",
        "truncated": False,
        "entries": [expected_entry(p) for p in paths],
    }
    # Each directory is opened once, and at most once more when the walk comes back to it;
    # re-resolving every directory from the root would take DEPTH**2 / 2 (245,000) opens.
    assert fds.opened <= 2 * DEPTH + 10, fds
    assert fds.peak <= WALK_FDS, fds  # its top is the listed directory
    assert fds.held == 0


def test_a_deep_listing_truncates_to_the_first_entries(
    files: Files, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = build_deep_tree_directly(files)
    with counting_descriptors(monkeypatch) as fds:
        result = files.run("files.list", recursive=True, max_entries=100)
    assert result["entries"] == [expected_entry(p) for p in paths[:100]]
    assert result["truncated"] is True
    assert fds.opened <= 2 * 100 + 10, fds  # the walk stops where the answer does
    exact = files.run("files.list", recursive=True, max_entries=len(paths))
    assert (len(exact["entries"]), exact["truncated"]) == (len(paths), False)
    below = files.run("files.list", path=chain("b", TOP_LEVELS), recursive=True)
    assert below["entries"] == [expected_entry(p) for p in paths if p.count("/") >= TOP_LEVELS]


def test_a_tree_deeper_than_a_path_can_name_can_be_deleted(
    files: Files, monkeypatch: pytest.MonkeyPatch
) -> None:
    build_deep_tree(files)
    with counting_descriptors(monkeypatch) as fds:
        assert files.run("files.delete", path="b", recursive=True) == {"path": "b", "deleted": True}
    assert list(files.root.iterdir()) == []
    assert fds.opened <= 2 * DEPTH + 10, fds
    assert fds.peak <= WALK_FDS + 2, fds  # and two of the root: its lock's and the parent's
    assert fds.held == 0


def test_the_pack_builds_lists_and_deletes_exactly_max_depth_levels_and_no_more(
    files: Files,
) -> None:
    assert MAX_DEPTH == 1024
    files.run("files.mkdir", path=chain("a", 512), parents=True)  # the deepest path: 1023 bytes
    files.run("files.mkdir", path=chain("b", 256), parents=True)
    files.run("files.move", src="a", dst=f"{chain('b', 256)}/a")  # 768 levels
    files.run("files.mkdir", path=chain("c", 256), parents=True)
    files.run("files.move", src="b", dst=f"{chain('c', 256)}/b")  # 1024 levels
    files.run("files.mkdir", path="x")
    listed = files.run("files.list", recursive=True, max_entries=10_000)
    assert listed["truncated"] is False
    paths = [e["path"] for e in listed["entries"]]
    assert len(paths) == MAX_DEPTH + 1  # the chain and x
    assert max(p.count("/") + 1 for p in paths) == MAX_DEPTH
    # One level more is refused, whichever way the agent tries; nothing moves.
    files.fails("files.move", "too_deep", src="c", dst="x/c")
    files.run("files.mkdir", path="y/z", parents=True)
    files.fails("files.move", "too_deep", src="c/c", dst="y/z/c")
    assert sorted(p.name for p in files.root.iterdir()) == ["c", "x", "y"]
    assert files.run("files.list", recursive=True, max_entries=10_000)["entries"] == [
        *listed["entries"],
        {"path": "y", "type": "directory", "size": None},
        {"path": "y/z", "type": "directory", "size": None},
    ]
    # Moving up or sideways needs no walk; deeper by one but no deeper than before is fine.
    files.run("files.move", src="c/c", dst="y/c")
    files.run("files.move", src="y/c", dst="x/c")
    files.run("files.delete", path="x", recursive=True)  # 1024 levels, no Python recursion
    files.run("files.delete", path="c", recursive=True)
    files.run("files.delete", path="y", recursive=True)
    assert list(files.root.iterdir()) == []


@pytest.fixture
def shallow(files: Files) -> Files:
    """The pack on the same root with a limit of 4 levels, to reach it with short paths."""
    pack = FilesPack(files.root, files.max_bytes, max_depth=4)
    return dataclasses.replace(files, actions={a.name: a for a in pack.actions()})


def test_every_action_that_creates_refuses_to_go_deeper_than_the_limit(shallow: Files) -> None:
    shallow.fails("files.mkdir", "too_deep", path="a/b/c/d/e", parents=True)
    shallow.fails("files.write", "too_deep", path="a/b/c/d/e.txt", content="x", parents=True)
    assert list(shallow.root.iterdir()) == []  # refused before any parent was made
    shallow.run("files.mkdir", path="a/b/c/d", parents=True)
    shallow.run("files.write", path="a/b/c/f.txt", content="x")
    shallow.run("files.mkdir", path="x/y", parents=True)
    shallow.fails("files.move", "too_deep", src="a/b", dst="x/y/b")  # b/c/d would be at 5
    shallow.fails("files.move", "too_deep", src="a/b/c/f.txt", dst="x/y/z/w/f.txt")
    shallow.run("files.move", src="a/b/c", dst="x/y/c")  # c/d and c/f.txt land at 4
    listed = shallow.run("files.list", recursive=True)["entries"]
    assert [e["path"] for e in listed] == [
        "a",
        "a/b",
        "x",
        "x/y",
        "x/y/c",
        "x/y/c/d",
        "x/y/c/f.txt",
    ]


def test_list_and_delete_refuse_a_tree_deeper_than_the_limit(shallow: Files) -> None:
    make_chain(shallow.root, ["a", "b", "c", "d", "e"])
    assert [
        e["path"] for e in shallow.run("files.list", recursive=True, max_entries=4)["entries"]
    ] == ["a", "a/b", "a/b/c", "a/b/c/d"]  # the answer ends before the walk gets too deep
    error = shallow.fails("files.list", "too_deep", recursive=True)
    assert error.message == "a/b/c/d/e: is more than 4 levels below the root"
    shallow.fails("files.delete", "too_deep", path="a", recursive=True)
    shallow.run("files.move", src="a/b/c", dst="c")  # moving up takes it apart
    shallow.run("files.delete", path="a", recursive=True)
    shallow.run("files.delete", path="c", recursive=True)
    assert list(shallow.root.iterdir()) == []


def test_links_and_fifos_deep_in_a_tree_are_listed_and_unlinked_never_followed(
    files: Files, outside: Outside
) -> None:
    build_deep_tree_directly(files)
    bottom = os.path.join(files.root, chain("b", TOP_LEVELS), chain("a", MOVED_LEVELS))
    os.symlink(outside.path, os.path.join(bottom, "to-dir"))
    os.mkfifo(os.path.join(bottom, "fifo"))
    listed = files.run("files.list", recursive=True, max_entries=10_000)["entries"]
    assert [(e["path"].rsplit("/", 1)[-1], e["type"]) for e in listed[-3:]] == [
        ("fifo", "fifo"),
        ("leaf.txt", "file"),
        ("to-dir", "symlink"),
    ]
    files.run("files.delete", path="b", recursive=True)
    assert list(files.root.iterdir()) == []
    outside.assert_untouched()


def test_a_directory_replaced_under_a_running_walk_ends_it(files: Files) -> None:
    """Levels the walk closed are reopened by name and must still be the same directories."""
    make_chain(files.root, ["d"] * (3 * SPAN))
    top = os.open(files.root, os.O_RDONLY | os.O_DIRECTORY)
    walk = _Descent(top, "", owned=True)
    try:
        for level in range(1, 3 * SPAN + 1):
            walk.descend("d", chain("d", level))
        # Swap level 2 for a look-alike: same names below, other directories.
        os.rename(files.root / "d" / "d", files.root / "d" / "old")
        make_chain(files.root / "d", ["d"] * (3 * SPAN - 1))
        while walk.level > SPAN:  # reopened from level SPAN, which is still held: same tree
            walk.ascend()
            os.fstat(walk.fd)
        walk.ascend()
        with pytest.raises(ActionError) as caught:
            walk.fd  # noqa: B018 -- reopening levels 1 to SPAN - 1 from the top meets the swap
        assert caught.value.code == "not_found"
        assert caught.value.message == "d/d: was moved or replaced during the walk"
    finally:
        walk.close()


def test_the_walk_lists_in_the_order_of_whole_paths_and_truncates_at_any_point(
    files: Files,
) -> None:
    """Names that sort around ``/`` (``!``, ``-``, ``.`` below it; ``0`` and beyond above it)
    interleave a directory's descendants with its siblings' at every level."""
    names = ["a", "a!", "a!!", "a-b", "a.txt", "a0", "é", "z"]
    paths: list[str] = []
    for first in names:
        (files.root / first).mkdir()
        paths.append(first)
        for second in names[:4]:
            (files.root / first / second).mkdir()
            paths.append(f"{first}/{second}")
            (files.root / first / second / "f").write_bytes(b"")
            paths.append(f"{first}/{second}/f")
    paths.sort()
    assert paths.index("a!/a") < paths.index("a-b") < paths.index("a/a") < paths.index("a0")
    listed = files.run("files.list", recursive=True, max_entries=10_000)
    assert [e["path"] for e in listed["entries"]] == paths
    assert listed["truncated"] is False
    for cut in range(1, len(paths) + 1):
        part = files.run("files.list", recursive=True, max_entries=cut)
        assert [e["path"] for e in part["entries"]] == paths[:cut]
        assert part["truncated"] is (cut < len(paths))


# Long names: a legal 1024-level chain of 255-byte names has paths of up to 262,143 bytes.


def long_names(levels: int) -> list[str]:
    """255-byte names that differ, so a shortened path shows which end is which."""
    return [f"{level:04d}".ljust(255, "n") for level in range(1, levels + 1)]


def test_a_listing_of_long_deep_paths_is_bounded_in_bytes(files: Files) -> None:
    """Listed whole, the chain's paths would be 134 MB: every entry repeats its parents' path."""
    names = long_names(MAX_DEPTH)
    make_chain(files.root, names)
    result = files.run("files.list", recursive=True, max_entries=10_000)
    paths = [e["path"] for e in result["entries"]]
    assert result["truncated"] is True
    assert paths == ["/".join(names[:n]) for n in range(1, len(paths) + 1)]
    returned = sum(len(p.encode()) for p in paths)
    following = len("/".join(names[: len(paths) + 1]).encode())
    assert returned <= MAX_LIST_BYTES < returned + following  # stopped at the bound, not before
    assert len(json.dumps(result)) < MAX_LIST_BYTES + 100 * len(paths)
    # Listings within the bound are unchanged.
    assert files.run("files.list") == {
        "path": ".",
        "entries": [{"path": names[0], "type": "directory", "size": None}],
        "truncated": False,
    }
    below = files.run("files.list", path="/".join(names[:3]), recursive=True, max_entries=2)
    assert [e["path"] for e in below["entries"]] == ["/".join(names[:4]), "/".join(names[:5])]
    files.run("files.delete", path=names[0], recursive=True)
    assert list(files.root.iterdir()) == []


def test_messages_show_at_most_the_ends_of_a_long_path(files: Files, shallow: Files) -> None:
    """Messages are signed into receipts: a path in one is cut to its first and last 100
    characters, so none is longer than a few hundred, however long the path."""
    names = long_names(MAX_DEPTH + 1)  # made without the pack; one level too deep
    make_chain(files.root, names)
    path = "/".join(names)
    error = files.fails("files.delete", "too_deep", path=names[0], recursive=True)
    assert error.message == f"{path[:100]}…{path[-100:]}: is more than 1024 levels below the root"
    files.run("files.move", src="/".join(names[:3]), dst="rest")  # moving up takes it apart
    files.run("files.delete", path=names[0], recursive=True)
    files.run("files.delete", path="rest", recursive=True)
    # Paths a request names (up to 1024 bytes) are shortened the same way, in every message.
    deep = "/".join(name[:200] for name in long_names(5))  # 1004 bytes, 5 levels
    made = deep.rsplit("/", 2)[0]  # 3 levels, so not_found names the 4th: 803 characters
    shallow.run("files.mkdir", path=made, parents=True)
    shallow.run("files.mkdir", path="x/y/z", parents=True)
    dst = "x/y/z/" + "d" * 250
    errors = [
        shallow.fails("files.mkdir", "too_deep", path=deep, parents=True),
        shallow.fails("files.write", "too_deep", path=deep, content="x", parents=True),
        shallow.fails("files.read", "not_found", path=deep),
        shallow.fails("files.delete", "not_found", path=deep),
        shallow.fails("files.move", "too_deep", src=deep.split("/")[0], dst=dst),
    ]
    assert errors[0].message == f"{deep[:100]}…{deep[-100:]}: is more than 4 levels below the root"
    assert errors[2].message.startswith(f"{deep[:100]}…")
    assert errors[4].message.startswith(f"{dst[:100]}…{dst[-100:]}: moving {deep[:200]} there")
    assert all(len(error.message) < 512 for error in errors), [e.message for e in errors]
