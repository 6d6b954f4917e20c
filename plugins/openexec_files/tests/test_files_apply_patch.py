"""``files.apply_patch``: a corpus of real patch shapes, failures that change nothing, and a
crash in the middle of a commit."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import openexec_files
import pytest
from pydantic import ValidationError

BEGIN, END = "*** Begin Patch\n", "*** End Patch\n"


def patch(*body: str) -> str:
    return BEGIN + "".join(body) + END


def leftovers(root: Path) -> list[str]:
    """Temporary files of the pack, anywhere under the root, and unfinished journals."""
    found = [str(p) for p in root.rglob(".openexec-tmp-*")]
    return found + [str(p) for p in (root.parent / f"{root.name}-state").rglob("*.json")]


# The corpus.


def test_several_hunks_with_context_lines(files) -> None:
    source = files.root / "app.py"
    source.write_text(
        "import os\n\n\ndef first():\n    return 1\n\n\ndef second():\n    return 2\n"
    )
    result = files.run(
        "files.apply_patch",
        patch=patch(
            "*** Update File: app.py\n",
            "@@\n",
            "-import os\n",
            "+import os\n",
            "+import sys\n",
            "@@ def first():\n",
            "-    return 1\n",
            "+    return 10\n",
            "@@ def second():\n",
            "-    return 2\n",
            "+    return 20\n",
        ),
    )
    expected = "import os\nimport sys\n\n\ndef first():\n    return 10\n\n\ndef second():\n"
    assert source.read_text() == expected + "    return 20\n"
    data = source.read_bytes()
    assert result == {
        "added": [],
        "modified": ["app.py"],
        "deleted": [],
        "moved": [],
        "files": [
            {"path": "app.py", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        ],
    }


def test_several_files_add_update_delete_and_move(files) -> None:
    (files.root / "src").mkdir()
    (files.root / "src" / "old.py").write_text("x = 1\ny = 2\n")
    (files.root / "README").write_text("title\n")
    (files.root / "obsolete.txt").write_text("bye\n")
    result = files.run(
        "files.apply_patch",
        patch=patch(
            "*** Add File: docs/guide/intro.md\n",
            "+# Intro\n",
            "+\n",
            "+Welcome.\n",
            "*** Update File: src/old.py\n",
            "*** Move to: src/new.py\n",
            "@@\n",
            " x = 1\n",
            "-y = 2\n",
            "+y = 3\n",
            "*** Update File: README\n",
            "*** Move to: README.md\n",
            "*** Delete File: obsolete.txt\n",
        ),
    )
    assert (files.root / "docs/guide/intro.md").read_text() == "# Intro\n\nWelcome.\n"
    assert (files.root / "src/new.py").read_text() == "x = 1\ny = 3\n"
    assert (files.root / "README.md").read_text() == "title\n"
    for gone in ("src/old.py", "README", "obsolete.txt"):
        assert not (files.root / gone).exists()
    assert result["added"] == ["docs/guide/intro.md"]
    assert result["deleted"] == ["obsolete.txt"] and result["modified"] == []
    assert result["moved"] == [
        {"src": "README", "dst": "README.md"},
        {"src": "src/old.py", "dst": "src/new.py"},
    ]
    assert [f["path"] for f in result["files"]] == [
        "README.md",
        "docs/guide/intro.md",
        "src/new.py",
    ]
    assert oct((files.root / "docs/guide").stat().st_mode & 0o777) == "0o700"
    assert leftovers(files.root) == []


def test_a_crlf_file_keeps_its_line_endings(files) -> None:
    (files.root / "win.txt").write_bytes(b"alpha\r\nbeta\r\ngamma\r\n")
    files.run(
        "files.apply_patch",
        patch=patch("*** Update File: win.txt\n", "@@\n", " alpha\n", "-beta\n", "+BETA\n"),
    )
    assert (files.root / "win.txt").read_bytes() == b"alpha\r\nBETA\r\ngamma\r\n"


def test_a_crlf_patch_applies_to_an_lf_file(files) -> None:
    (files.root / "unix.txt").write_text("a\nb\n")
    text = patch("*** Update File: unix.txt\n", "@@\n", "-b\n", "+c\n").replace("\n", "\r\n")
    files.run("files.apply_patch", patch=text)
    assert (files.root / "unix.txt").read_text() == "a\nc\n"


def test_a_file_without_a_final_newline_keeps_none(files) -> None:
    (files.root / "raw.txt").write_text("first\nlast")
    files.run(
        "files.apply_patch",
        patch=patch(
            "*** Update File: raw.txt\n",
            "@@\n",
            " first\n",
            "-last\n",
            "+last\n",
            "+more\n",
            "*** End of File\n",
        ),
    )
    assert (files.root / "raw.txt").read_text() == "first\nlast\nmore"


def test_unicode_content_and_paths(files) -> None:
    (files.root / "café").mkdir()
    (files.root / "café" / "menu.txt").write_text("crème brûlée\nthé\n")
    files.run(
        "files.apply_patch",
        patch=patch(
            "*** Update File: café/menu.txt\n",
            "@@\n",
            "-thé\n",
            "+thé vert 🍵\n",
            "*** Add File: café/ünïcode.txt\n",
            "+日本語\n",
        ),
    )
    assert (files.root / "café/menu.txt").read_text() == "crème brûlée\nthé vert 🍵\n"
    assert (files.root / "café/ünïcode.txt").read_text() == "日本語\n"


def test_end_of_file_anchors_a_hunk_at_the_end(files) -> None:
    (files.root / "list.txt").write_text("item\nitem\nitem\n")
    files.run(
        "files.apply_patch",
        patch=patch(
            "*** Update File: list.txt\n", "@@\n", "-item\n", "+last\n", "*** End of File\n"
        ),
    )
    assert (files.root / "list.txt").read_text() == "item\nitem\nlast\n"


def test_whitespace_tolerance_in_order(files) -> None:
    (files.root / "t.py").write_text("def f():   \n    pass\n")
    files.run(
        "files.apply_patch",
        patch=patch(
            "*** Update File: t.py\n", "@@\n", " def f():\n", "-  pass\n", "+    return 1\n"
        ),
    )  # "def f():" matches ignoring trailing spaces; "  pass" only ignoring all of them
    assert (files.root / "t.py").read_text() == "def f():   \n    return 1\n"


def test_hunks_are_searched_forward_from_the_previous_one(files) -> None:
    (files.root / "twice.txt").write_text("a\nsame\nb\nsame\n")
    files.run(
        "files.apply_patch",
        patch=patch(
            "*** Update File: twice.txt\n",
            "@@\n",
            "-a\n",
            "+A\n",
            "@@ b\n",
            "-same\n",
            "+changed\n",
        ),
    )  # after its context line "b": the second "same", not the first
    assert (files.root / "twice.txt").read_text() == "A\nsame\nb\nchanged\n"
    before = (files.root / "twice.txt").read_text()
    files.fails(
        "files.apply_patch",
        "patch_failed",
        patch=patch(
            "*** Update File: twice.txt\n",
            "@@\n",
            " b\n",
            "-changed\n",
            "+x\n",
            "@@\n",
            "-same\n",
            "+y\n",
        ),
    )  # the only "same" left is before the first hunk: never searched backwards
    assert (files.root / "twice.txt").read_text() == before


def test_permissions_survive_an_update(files) -> None:
    target = files.root / "script.sh"
    target.write_text("echo a\n")
    target.chmod(0o751)
    files.run(
        "files.apply_patch",
        patch=patch("*** Update File: script.sh\n", "@@\n", "-echo a\n", "+echo b\n"),
    )
    assert target.read_text() == "echo b\n" and target.stat().st_mode & 0o777 == 0o751


def test_base_sha256_pins_a_file(files, tree_snapshot) -> None:
    target = files.root / "pinned.txt"
    target.write_text("v1\n")
    body = patch("*** Update File: pinned.txt\n", "@@\n", "-v1\n", "+v2\n")
    before = tree_snapshot(files.root)
    files.fails(
        "files.apply_patch", "precondition_failed", patch=body, base_sha256={"pinned.txt": "0" * 64}
    )
    assert tree_snapshot(files.root) == before
    good = hashlib.sha256(b"v1\n").hexdigest()
    files.run("files.apply_patch", patch=body, base_sha256={"pinned.txt": good})
    assert target.read_text() == "v2\n"
    with pytest.raises(ValidationError, match="does not update"):
        files.run("files.apply_patch", patch=body, base_sha256={"other.txt": good})


# Failures: each changes nothing.


@pytest.fixture
def project(files):
    """Three files a failing patch touches before it fails."""
    (files.root / "one.txt").write_text("1\n")
    (files.root / "two.txt").write_text("a\nb\nc\nd\n")
    (files.root / "taken.txt").write_text("already here\n")
    return files


def failing(project, tree_snapshot, code: str, *body: str) -> str:
    before = tree_snapshot(project.root)
    error = project.fails("files.apply_patch", code, patch=patch(*body))
    assert tree_snapshot(project.root) == before
    assert leftovers(project.root) == []
    return error.message


FIRST_CHANGES = (
    "*** Update File: one.txt\n",
    "@@\n",
    "-1\n",
    "+one\n",
    "*** Add File: new.txt\n",
    "+new\n",
)


def test_a_third_hunk_that_does_not_match(project, tree_snapshot) -> None:
    message = failing(
        project,
        tree_snapshot,
        "patch_failed",
        *FIRST_CHANGES,
        "*** Update File: two.txt\n",
        "@@\n",
        "-a\n",
        "+A\n",
        "@@\n",
        "-c\n",
        "+C\n",
        "@@\n",
        "-zzz\n",
        "+Z\n",
    )
    assert message.startswith("two.txt: hunk 3 (line 15 of the patch)")


def test_add_over_an_existing_file(project, tree_snapshot) -> None:
    message = failing(
        project, tree_snapshot, "exists", *FIRST_CHANGES, "*** Add File: taken.txt\n", "+x\n"
    )
    assert message.startswith("taken.txt")


def test_move_onto_an_existing_file(project, tree_snapshot) -> None:
    failing(
        project,
        tree_snapshot,
        "exists",
        *FIRST_CHANGES,
        "*** Update File: two.txt\n",
        "*** Move to: taken.txt\n",
    )


def test_delete_of_a_missing_file(project, tree_snapshot) -> None:
    failing(project, tree_snapshot, "not_found", *FIRST_CHANGES, "*** Delete File: ghost.txt\n")


def test_a_symlink_in_the_way(project, tree_snapshot, outside) -> None:
    os.symlink(outside.path, project.root / "link")
    os.symlink(outside.secret, project.root / "secret-link")
    failing(
        project,
        tree_snapshot,
        "symlink_refused",
        *FIRST_CHANGES,
        "*** Add File: link/planted.txt\n",
        "+x\n",
    )
    failing(
        project,
        tree_snapshot,
        "symlink_refused",
        *FIRST_CHANGES,
        "*** Update File: secret-link\n",
        "@@\n",
        "-outside secret\n",
        "+owned\n",
    )
    failing(
        project,
        tree_snapshot,
        "symlink_refused",
        *FIRST_CHANGES,
        "*** Update File: two.txt\n",
        "*** Move to: link/two.txt\n",
    )
    failing(
        project, tree_snapshot, "symlink_refused", *FIRST_CHANGES, "*** Delete File: secret-link\n"
    )
    outside.assert_untouched()


def test_hard_links_fifos_and_binary_files_are_refused(project, tree_snapshot, outside) -> None:
    os.link(outside.secret, project.root / "hard.txt")
    failing(
        project,
        tree_snapshot,
        "hard_link_refused",
        *FIRST_CHANGES,
        "*** Update File: hard.txt\n",
        "@@\n",
        "-outside secret\n",
        "+x\n",
    )
    os.mkfifo(project.root / "pipe")
    failing(project, tree_snapshot, "not_regular_file", *FIRST_CHANGES, "*** Delete File: pipe\n")
    (project.root / "blob.bin").write_bytes(b"\xff\xfe\n")
    failing(
        project,
        tree_snapshot,
        "not_utf8",
        *FIRST_CHANGES,
        "*** Update File: blob.bin\n",
        "@@\n",
        "-x\n",
        "+y\n",
    )
    outside.assert_untouched()


@pytest.mark.parametrize(
    ("body", "line"),
    [
        ("*** Add File: ../escape.txt\n+x\n", 2),
        ("*** Add File: /etc/passwd\n+x\n", 2),
        ("*** Update File: one.txt\n*** Move to: ../../out.txt\n", 3),
        ("*** Update File: one.txt\n@@\n-1\n+2\n*** Add File: a//b\n+x\n", 6),
        ("*** Update File: one.txt\n", 2),
        ("*** Update File: one.txt\n@@\nno prefix\n", 4),
        ("*** Frobnicate File: one.txt\n", 2),
        ("*** Add File: x.txt\nnot added\n", 3),
        ("*** Update File: one.txt\n@@\n-1\n*** Delete File: one.txt\n", 5),
    ],
)
def test_a_malformed_patch_is_refused_at_validation_naming_its_line(
    project, tree_snapshot, body: str, line: int
) -> None:
    before = tree_snapshot(project.root)
    with pytest.raises(ValidationError, match=f"line {line}:"):
        project.run("files.apply_patch", patch=patch(body))
    assert tree_snapshot(project.root) == before


def test_a_patch_without_its_markers_is_refused(project) -> None:
    with pytest.raises(ValidationError, match="line 1: a patch starts with"):
        project.run("files.apply_patch", patch="*** Add File: x\n+x\n*** End Patch\n")
    with pytest.raises(ValidationError, match="a patch ends with"):
        project.run("files.apply_patch", patch="*** Begin Patch\n*** Add File: x\n+x\n")


# A crash while several files are being committed.

CRASHING = """
import os, signal, sys
from pathlib import Path
from openexec_files.actions import FilesPack
from openexec_files.models import ApplyPatchInput

root, state, moment = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
counts = {"rename": 0, "fchmod": 0}
real = {"rename": os.rename, "fchmod": os.fchmod}

def crash_after(name):
    def wrapped(*args, **kwargs):
        real[name](*args, **kwargs)
        if name == "rename" and "src_dir_fd" not in kwargs:
            return  # the journal's own files, not the patched ones
        counts[name] += 1
        if name == moment and counts[name] == 1:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup of any kind
    return wrapped

os.rename, os.fchmod = crash_after("rename"), crash_after("fchmod")
pack = FilesPack(root, 1 << 20, state=state)
pack.apply_patch(ApplyPatchInput(patch=sys.stdin.read()), None)
print("not killed")
"""

THREE_FILES = patch(
    "*** Update File: a.txt\n",
    "@@\n",
    "-old a\n",
    "+new a\n",
    "*** Update File: b.txt\n",
    "@@\n",
    "-old b\n",
    "+new b\n",
    "*** Update File: c.txt\n",
    "@@\n",
    "-old c\n",
    "+new c\n",
)


@pytest.mark.parametrize(
    ("moment", "expected"),
    [("rename", "new"), ("fchmod", "old")],
    ids=["between-two-renames", "while-staging"],
)
def test_a_kill_mid_commit_is_finished_or_undone_at_the_next_start(
    tmp_path: Path, moment: str, expected: str
) -> None:
    root, state = tmp_path / "root", tmp_path / "state"
    root.mkdir()
    for name in "abc":
        (root / f"{name}.txt").write_text(f"old {name}\n")
    crashed = subprocess.run(
        [sys.executable, "-c", CRASHING, str(root), str(state), moment],
        input=THREE_FILES,
        capture_output=True,
        text=True,
        check=False,
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    contents = {(root / f"{n}.txt").read_text() for n in "abc"}
    if moment == "rename":
        assert contents == {"new a\n", "old b\n", "old c\n"}  # killed with the set mixed
    assert list((state / "journal").glob("*.json"))  # the journal is what is left to read

    openexec_files.startup(openexec_files.FilesSettings(root=root, state=state))  # a restart
    assert {(root / f"{n}.txt").read_text() for n in "abc"} == {f"{expected} {n}\n" for n in "abc"}
    assert list(root.glob(".openexec-tmp-*")) == []
    assert list((state / "journal").glob("*.json")) == []


def test_a_path_made_both_a_file_and_a_directory(project, tree_snapshot) -> None:
    failing(
        project,
        tree_snapshot,
        "exists",
        *FIRST_CHANGES,
        "*** Add File: fresh\n",
        "+x\n",
        "*** Add File: fresh/inner.txt\n",
        "+y\n",
    )


def test_a_pure_move_keeps_any_bytes(files) -> None:
    (files.root / "blob.bin").write_bytes(b"\xff\x00\r\nraw")
    files.run(
        "files.apply_patch",
        patch=patch("*** Update File: blob.bin\n", "*** Move to: kept/blob.bin\n"),
    )
    assert (files.root / "kept/blob.bin").read_bytes() == b"\xff\x00\r\nraw"


def test_the_state_directory_may_not_be_inside_the_root(tmp_path: Path) -> None:
    settings = openexec_files.FilesSettings(root=tmp_path, state=tmp_path / "state")
    with pytest.raises(ValueError, match="inside OPENEXEC_FILES_ROOT"):
        openexec_files.startup(settings)


def test_a_destination_made_outside_the_pack_mid_commit_undoes_the_whole_patch(
    project, tree_snapshot, monkeypatch
) -> None:
    """Something outside the pack's locks (a command, a user) creates an Add's destination
    between the checks and the commit: the commit fails before it replaces anything, and
    what it had placed is taken back."""
    from openexec_files import journal

    real_commit = journal.Journal.commit

    def racing(self, plan):
        (project.root / "zz-raced.txt").write_text("theirs\n")
        real_commit(self, plan)

    monkeypatch.setattr(journal.Journal, "commit", racing)
    before = {**tree_snapshot(project.root)}
    project.fails(
        "files.apply_patch",
        "exists",
        patch=patch(
            *FIRST_CHANGES,
            "*** Add File: zz-raced.txt\n",
            "+ours\n",
            "*** Delete File: taken.txt\n",
        ),
    )
    after = tree_snapshot(project.root)
    assert (project.root / "zz-raced.txt").read_text() == "theirs\n"
    del after["zz-raced.txt"]
    assert after == before and leftovers(project.root) == []


def test_an_update_never_keeps_setuid_setgid_or_sticky_bits(files) -> None:
    target = files.root / "tool"
    target.write_text("v1\n")
    target.chmod(0o6755)
    files.run("files.apply_patch", patch=patch("*** Update File: tool\n", "@@\n", "-v1\n", "+v2\n"))
    assert target.stat().st_mode & 0o7777 == 0o755
