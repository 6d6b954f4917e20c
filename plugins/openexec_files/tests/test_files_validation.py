"""Payload validation: bad paths and bad options are refused by the input models (HTTP 422)."""

from __future__ import annotations

import hashlib

import pytest
from openexec_files.models import (
    DeleteInput,
    ListInput,
    MkdirInput,
    MoveInput,
    ReadInput,
    StatInput,
    WriteInput,
)
from pydantic import ValidationError

BAD_PATHS = [
    "",
    ".",
    "/",
    "/etc/passwd",
    "//x",
    "..",
    "../outside/secret.txt",
    "a/../../outside",
    "a/..",
    "./a",
    "a/./b",
    "a//b",
    "a/",
    "a\x00b",
    "\x00",
    "a\\b",
    "..\\outside",
    "\ud800",
    "x" * 256,
    "a/" + "x" * 256,
    "é" * 128,  # 256 bytes in one component, though only 128 characters
    "a/" * 512 + "a",  # 1025 bytes
]

GOOD_PATHS = [
    "a",
    "a/b/c.txt",
    "%2e%2e",
    "%2e%2e/%2F",
    "...",
    "a..b",
    ".hidden",
    "white space/ü/文件",
    "x" * 255,
    "é" * 127 + "x",  # 255 bytes
    "a/" * 511 + "ab",  # 1024 bytes
]


def payloads(path: str) -> list[tuple[type, dict]]:
    """Every path field of every action, holding ``path``."""
    return [
        (ReadInput, {"path": path}),
        (WriteInput, {"path": path, "content": ""}),
        (ListInput, {"path": path}),
        (StatInput, {"path": path}),
        (DeleteInput, {"path": path}),
        (MkdirInput, {"path": path}),
        (MoveInput, {"src": path, "dst": "ok"}),
        (MoveInput, {"src": "ok", "dst": path}),
    ]


@pytest.mark.parametrize("path", BAD_PATHS)
def test_bad_paths_are_refused_by_every_action(path: str) -> None:
    for model, payload in payloads(path):
        if model is ListInput and path == ".":
            continue  # the one place "." means the root
        with pytest.raises(ValidationError):
            model.model_validate(payload)


@pytest.mark.parametrize("path", GOOD_PATHS)
def test_good_paths_are_accepted_verbatim(path: str) -> None:
    for model, payload in payloads(path):
        validated = model.model_validate(payload)
        assert path in validated.model_dump().values()


def test_dot_means_the_root_only_for_list() -> None:
    assert ListInput.model_validate({}).path == "."
    assert ListInput.model_validate({"path": "."}).path == "."
    for model in (StatInput, MkdirInput, DeleteInput):
        with pytest.raises(ValidationError):
            model.model_validate({"path": "."})


@pytest.mark.parametrize(
    ("model", "payload"),
    [
        (WriteInput, {"path": "a", "content": "!!!", "encoding": "base64"}),
        (WriteInput, {"path": "a", "content": "aGk=\n", "encoding": "base64"}),
        (WriteInput, {"path": "a", "content": "\ud800"}),
        (WriteInput, {"path": "a", "content": "x", "encoding": "latin-1"}),
        (WriteInput, {"path": "a", "content": "x", "mode": "truncate"}),
        (WriteInput, {"path": "a", "content": "x", "if_sha256": "0" * 64}),  # mode create
        (WriteInput, {"path": "a", "content": "x", "mode": "overwrite", "if_sha256": "abc"}),
        (WriteInput, {"path": "a", "content": 5}),
        (WriteInput, {"path": "a"}),
        (WriteInput, {"path": "a", "content": "x", "parents": "true"}),
        (ReadInput, {"path": 7}),
        (ReadInput, {"path": "a", "follow_symlinks": True}),
        (ListInput, {"max_entries": 0}),
        (ListInput, {"max_entries": 10_001}),
        (ListInput, {"max_entries": "10"}),
        (ListInput, {"recursive": "false"}),
        (DeleteInput, {"path": "a", "recursive": 1}),
        (DeleteInput, {"path": "a", "if_sha256": "g" * 64}),
        (MkdirInput, {"path": "a", "exist_ok": None}),
        (MoveInput, {"src": "a"}),
    ],
)
def test_bad_options_are_refused(model: type, payload: dict) -> None:
    with pytest.raises(ValidationError):
        model.model_validate(payload)


def test_sha256_is_normalised_to_lowercase() -> None:
    digest = hashlib.sha256(b"x").hexdigest()
    payload = {"path": "a", "content": "", "mode": "overwrite", "if_sha256": digest.upper()}
    assert WriteInput.model_validate(payload).if_sha256 == digest


def test_base64_content_is_decoded() -> None:
    payload = {"path": "a", "content": "AP8=", "encoding": "base64"}
    assert WriteInput.model_validate(payload).data() == b"\x00\xff"
