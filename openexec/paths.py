"""Relative path syntax for packs that confine paths to a directory of their own.

The files pack's paths and the exec pack's ``cwd`` follow the same rules, checked at payload
validation so a bad path is a 422 before anything runs: relative, ``/``-separated UTF-8, no
empty, ``.`` or ``..`` components, no NUL or backslash, at most 1024 bytes with components of
at most 255. Only syntax is decided here; what a path points at is decided on the disk, one
component at a time, without following links.
"""

from __future__ import annotations

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
        raise ValueError("path must be relative, not absolute")
    for component in value.split("/"):
        if not component:
            raise ValueError("path must not contain empty components ('//' or a trailing '/')")
        if component in (".", ".."):
            raise ValueError("path must not contain '.' or '..' components")
        if len(component.encode("utf-8")) > MAX_COMPONENT_BYTES:
            raise ValueError(f"path components must be at most {MAX_COMPONENT_BYTES} bytes")
    return value
