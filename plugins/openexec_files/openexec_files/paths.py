"""Path syntax, checked at payload validation so a bad path is a 422 before anything runs.

Only syntax is decided here; what a path points at is decided by ``resolve`` on the disk.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field

from openexec.paths import ROOT, check_path

__all__ = ["ROOT", "DirPath", "RelPath", "split"]


def _check_dir_path(value: str) -> str:
    return check_path(value, allow_root=True)


def split(path: str) -> tuple[list[str], str]:
    """Split a checked path into its parent components and its last component."""
    *parents, name = path.split("/")
    return parents, name


RelPath = Annotated[
    str,
    Field(min_length=1, description="Relative '/'-separated path below the files root."),
    AfterValidator(check_path),
]
"""A path below the root naming an entry (never the root itself)."""

DirPath = Annotated[
    str,
    Field(min_length=1, description="Relative '/'-separated directory path; '.' is the root."),
    AfterValidator(_check_dir_path),
]
"""Like ``RelPath``, but ``"."`` is accepted and means the root."""
