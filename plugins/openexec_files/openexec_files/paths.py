"""Path syntax, checked at payload validation so a bad path is a 422 before anything runs.

Only syntax is decided here; what a path points at is decided by ``resolve`` on the disk.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field

MAX_PATH_BYTES = 1024
MAX_COMPONENT_BYTES = 255
ROOT = "."


def check_path(value: str, *, allow_root: bool = False) -> str:
    """Return ``value`` if it is a relative, ``/``-separated UTF-8 path; raise ValueError if not."""
    if allow_root and value == ROOT:
        return value
    if not value:
        raise ValueError("path must not be empty")
    if "\x00" in value:
        raise ValueError("path must not contain NUL")
    if "\\" in value:
        raise ValueError("path must not contain a backslash; use '/'")
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("path must be valid UTF-8") from None
    if len(encoded) > MAX_PATH_BYTES:
        raise ValueError(f"path must be at most {MAX_PATH_BYTES} bytes")
    if value.startswith("/"):
        raise ValueError("path must be relative to the files root")
    for component in value.split("/"):
        if not component:
            raise ValueError("path must not contain empty components ('//' or a trailing '/')")
        if component in (".", ".."):
            raise ValueError("path must not contain '.' or '..' components")
        if len(component.encode("utf-8")) > MAX_COMPONENT_BYTES:
            raise ValueError(f"path components must be at most {MAX_COMPONENT_BYTES} bytes")
    return value


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
