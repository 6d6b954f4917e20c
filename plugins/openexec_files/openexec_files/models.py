"""Input models of the seven actions: all that is checkable without the disk is checked here."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from openexec_files.patch import parse
from openexec_files.paths import DirPath, RelPath

Encoding = Literal["utf-8", "base64"]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{64}$", to_lower=True)]

DEFAULT_MAX_ENTRIES = 1000
MAX_ENTRIES_LIMIT = 10_000


class _Input(BaseModel):
    """Strict and closed: a misspelt option or a ``"false"`` string must not pass as a default."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ReadInput(_Input):
    path: RelPath
    encoding: Encoding = "utf-8"


class WriteInput(_Input):
    path: RelPath
    content: str
    encoding: Encoding = "utf-8"
    mode: Literal["create", "overwrite", "append"] = "create"
    if_sha256: Sha256 | None = Field(
        default=None, description="Only write if the current content has this SHA-256 (hex)."
    )
    parents: bool = Field(default=False, description="Create missing parent directories (0700).")

    @model_validator(mode="after")
    def _consistent(self) -> WriteInput:
        self.data()  # undecodable content is bad input, not a failed execution
        if self.if_sha256 is not None and self.mode == "create":
            raise ValueError(
                "if_sha256 needs mode 'overwrite' or 'append': 'create' has no content"
            )
        return self

    def data(self) -> bytes:
        """The bytes to write, decoded from ``content`` according to ``encoding``."""
        if self.encoding == "base64":
            try:
                return base64.b64decode(self.content, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("content is not valid base64") from None
        try:
            return self.content.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("content is not valid UTF-8 text") from None


class ListInput(_Input):
    path: DirPath = "."
    recursive: bool = False
    max_entries: int = Field(default=DEFAULT_MAX_ENTRIES, ge=1, le=MAX_ENTRIES_LIMIT)


class StatInput(_Input):
    path: RelPath


class DeleteInput(_Input):
    path: RelPath
    if_sha256: Sha256 | None = Field(
        default=None, description="Only delete a file whose current content has this SHA-256."
    )
    recursive: bool = Field(default=False, description="Delete a directory and everything in it.")


class MkdirInput(_Input):
    path: RelPath
    parents: bool = False
    exist_ok: bool = False


class MoveInput(_Input):
    src: RelPath
    dst: RelPath
    overwrite: bool = False


MAX_PATCH_CHARS = 4 << 20


class ApplyPatchInput(_Input):
    """A ``*** Begin Patch`` patch (see ``patch.py``), parsed here: a malformed one is a 422
    naming its line. ``base_sha256`` pins files the patch updates or deletes."""

    patch: Annotated[str, Field(max_length=MAX_PATCH_CHARS)]
    base_sha256: dict[RelPath, Sha256] = Field(
        default_factory=dict,
        description="Apply only if these files (updated or deleted by the patch) have these "
        "SHA-256s (hex).",
    )

    @model_validator(mode="after")
    def _well_formed(self) -> ApplyPatchInput:
        touched = {op.path for op in parse(self.patch) if op.kind != "add"}
        stray = sorted(set(self.base_sha256) - touched)
        if stray:
            raise ValueError(f"base_sha256 names {stray[0]!r}, which the patch does not update")
        return self
