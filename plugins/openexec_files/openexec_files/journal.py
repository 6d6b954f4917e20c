"""Committing several files at once: a journal that makes a crash roll forward or back.

``apply_patch`` computes every file's new content first, then commits them with ``commit``:

1. ``<id>.json`` is written (atomically, fsynced) in the journal directory: the directories to
   make, each temporary file and where it goes, and each name to remove.
2. Staging: missing directories are made, each new content is written to its temporary file
   beside its target and fsynced. Nothing under its own name has changed yet.
3. The commit point: ``<id>.committed`` is created and the journal directory fsynced.
4. Each temporary file is renamed onto its target (new names first, never replacing; then the
   replacements), then each removed name is unlinked, and the directories are fsynced. A new
   name that something outside this pack created meanwhile fails the commit before anything
   was replaced, and it is undone whole.
5. Both journal files are removed.

``recover``, run at startup, finishes a journal whose ``.committed`` exists (each step is
idempotent: a temporary file still there is renamed, a name still there is unlinked) and undoes
one without it (its temporary files are removed, the directories it made removed if empty).
So a crash at any point leaves the old set of files or the new one, never a mix. One lock,
``journal.lock``, is held from step 1 to step 5 and by ``recover``: patches commit one at a
time, and recovery never touches a journal that a live worker is committing.

Every directory is reached from the root one component at a time without following links, as
every files action does.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from openexec_files.atomic import TMP_PREFIX, rename_noreplace, write_new
from openexec_files.errors import fs_error
from openexec_files.resolve import DIR_MODE, open_dir

LOCK_NAME = "journal.lock"
JOURNAL_SUFFIX, COMMITTED_SUFFIX = ".json", ".committed"
FILE_MODE = 0o600


@dataclass
class Placement:
    """New content for ``dir/name``, staged in ``dir/temporary``."""

    dir: list[str]
    name: str
    content: bytes
    replace: bool  # an Update replaces; an Add or a Move's destination never does
    mode: int = FILE_MODE  # an Update keeps the file's permissions
    temporary: str = field(default_factory=lambda: TMP_PREFIX + secrets.token_hex(8))


@dataclass
class Removal:
    dir: list[str]
    name: str


@dataclass
class Plan:
    made: list[list[str]]  # directories to create, parents first
    placements: list[Placement]
    removals: list[Removal]

    def record(self) -> dict:
        placements = [
            {k: v for k, v in asdict(p).items() if k != "content"} for p in self.placements
        ]
        return {
            "made": self.made,
            "placements": placements,
            "removals": [asdict(r) for r in self.removals],
        }


class RolledBack(Exception):
    """A commit that failed before it replaced anything, and was undone."""

    def __init__(self, error: Exception) -> None:
        self.error = error


class Journal:
    """The journal directory (``OPENEXEC_FILES_STATE/journal``) of one root."""

    def __init__(self, root: Path, state: Path) -> None:
        self.root, self.directory = root, state / "journal"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        os.makedirs(self.directory, mode=DIR_MODE, exist_ok=True)
        fd = os.open(self.directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def commit(self, plan: Plan) -> None:
        """Apply ``plan`` all or nothing (see the module docstring)."""
        with self._locked():
            name = secrets.token_hex(8)
            record = self.directory / f"{name}{JOURNAL_SUFFIX}"
            committed = self.directory / f"{name}{COMMITTED_SUFFIX}"
            _write_durably(record, json.dumps(plan.record()).encode())
            try:
                self._stage(plan)
            except BaseException:
                self._undo(plan.record())
                _remove(record)
                raise
            _write_durably(committed, b"")
            try:
                self._finish(plan.record(), recovering=False)
            except RolledBack as rolled_back:
                self._undo(plan.record())
                _remove(committed)
                _remove(record)
                raise rolled_back.error from None
            _remove(committed)
            _remove(record)

    def recover(self) -> list[str]:
        """Finish or undo every journal left by a crash; return what was done, for the log."""
        done: list[str] = []
        with self._locked():
            for record in sorted(self.directory.glob(f"*{JOURNAL_SUFFIX}")):
                committed = record.with_suffix(COMMITTED_SUFFIX)
                try:
                    steps = json.loads(record.read_bytes())
                except ValueError:
                    steps = None  # torn before it was whole: nothing was staged from it
                if steps is not None and committed.exists():
                    given_up = self._finish(steps, recovering=True)
                    kept = f", keeping the files found at {', '.join(given_up)}" if given_up else ""
                    done.append(f"{record.stem}: finished{kept}")
                elif steps is not None:
                    self._undo(steps)
                    done.append(f"{record.stem}: undone")
                _remove(committed)
                _remove(record)
            for torn in self.directory.glob(".*.tmp"):  # a journal file not written whole
                _remove(torn)
        return done

    def _stage(self, plan: Plan) -> None:
        for parts in plan.made:
            with open_dir(self.root, parts[:-1]) as parent:
                with contextlib.suppress(FileExistsError):  # then opening it below decides
                    os.mkdir(parts[-1], DIR_MODE, dir_fd=parent)
                os.fsync(parent)
        for placement in plan.placements:
            shown = "/".join([*placement.dir, placement.name])
            with open_dir(self.root, placement.dir) as dir_fd:
                try:
                    write_new(dir_fd, placement.temporary, placement.content, placement.mode, shown)
                except FileExistsError as exc:  # 64 random bits: in theory only
                    raise fs_error(exc, shown) from None

    def _finish(self, steps: dict, *, recovering: bool) -> list[str]:
        """Put every placement in place, then remove every removed name; return the
        placements recovery had to give up. New names come first, because only they can
        fail (something outside this pack made one meanwhile): in a live commit that undoes
        the new names placed so far (``RolledBack``); in recovery the file found there is
        kept and the placement given up. Renames and unlinks of names already handled before
        a crash are skipped."""
        given_up: list[str] = []
        placed: list[dict] = []
        fresh = [p for p in steps["placements"] if not p["replace"]]
        try:
            for placement in fresh:
                with open_dir(self.root, placement["dir"]) as dir_fd:
                    try:
                        rename_noreplace(dir_fd, placement["temporary"], dir_fd, placement["name"])
                    except FileNotFoundError:
                        continue  # renamed before the crash
                    except FileExistsError:
                        if not recovering:
                            raise
                        os.unlink(placement["temporary"], dir_fd=dir_fd)
                        given_up.append("/".join([*placement["dir"], placement["name"]]))
                        continue
                    placed.append(placement)
                    os.fsync(dir_fd)
        except OSError as exc:
            for placement in placed:
                with contextlib.suppress(OSError), open_dir(self.root, placement["dir"]) as fd:
                    os.unlink(placement["name"], dir_fd=fd)
            shown = "/".join([*placement["dir"], placement["name"]])
            raise RolledBack(fs_error(exc, shown)) from None
        for placement in steps["placements"]:
            if not placement["replace"]:
                continue
            with open_dir(self.root, placement["dir"]) as dir_fd:
                try:
                    os.rename(
                        placement["temporary"],
                        placement["name"],
                        src_dir_fd=dir_fd,
                        dst_dir_fd=dir_fd,
                    )
                except FileNotFoundError:
                    pass  # renamed before the crash
                except OSError as exc:
                    shown = "/".join([*placement["dir"], placement["name"]])
                    raise fs_error(exc, shown) from None  # the journal stays: finished at start
                os.fsync(dir_fd)
        for removal in steps["removals"]:
            with open_dir(self.root, removal["dir"]) as dir_fd:
                with contextlib.suppress(FileNotFoundError):  # removed before the crash
                    os.unlink(removal["name"], dir_fd=dir_fd)
                os.fsync(dir_fd)
        return given_up

    def _undo(self, steps: dict) -> None:
        for placement in steps["placements"]:
            with contextlib.suppress(OSError), open_dir(self.root, placement["dir"]) as dir_fd:
                os.unlink(placement["temporary"], dir_fd=dir_fd)
        for parts in reversed(steps["made"]):
            with contextlib.suppress(OSError), open_dir(self.root, parts[:-1]) as parent:
                os.rmdir(parts[-1], dir_fd=parent)  # only if still empty


def _write_durably(path: Path, data: bytes) -> None:
    """``path`` holds ``data`` whole, or is absent, even after a power cut."""
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temporary, path)
    _sync_dir(path.parent)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
        _sync_dir(path.parent)


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
