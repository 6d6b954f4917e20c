"""Key names to bytes: xterm's sequences (ctlseqs, "PC-Style Function Keys") as facts."""

from __future__ import annotations

import pytest
from openexec_exec.keys import UnknownKey, encode_key, encode_keys

XTERM = {
    "Enter": b"\r",
    "return": b"\r",
    "Tab": b"\t",
    "BTab": b"\x1b[Z",
    "S-Tab": b"\x1b[Z",
    "Escape": b"\x1b",
    "Space": b" ",
    "C-Space": b"\x00",
    "BSpace": b"\x7f",
    "C-BSpace": b"\x08",
    "C-Up": b"\x1b[1;5A",
    "M-Up": b"\x1b[1;3A",
    "S-Up": b"\x1b[1;2A",
    "C-S-Left": b"\x1b[1;6D",
    "C-End": b"\x1b[1;5F",
    "Insert": b"\x1b[2~",
    "IC": b"\x1b[2~",
    "Delete": b"\x1b[3~",
    "DC": b"\x1b[3~",
    "PageUp": b"\x1b[5~",
    "PGUP": b"\x1b[5~",
    "NPage": b"\x1b[6~",
    "C-PageDown": b"\x1b[6;5~",
    "F1": b"\x1bOP",
    "F4": b"\x1bOS",
    "S-F1": b"\x1b[1;2P",
    "F5": b"\x1b[15~",
    "F6": b"\x1b[17~",
    "F11": b"\x1b[23~",
    "F12": b"\x1b[24~",
    "C-F12": b"\x1b[24;5~",
    "C-c": b"\x03",
    "C-C": b"\x03",
    "^C": b"\x03",
    "C-[": b"\x1b",
    "C-@": b"\x00",
    "C-?": b"\x7f",
    "M-x": b"\x1bx",
    "C-M-a": b"\x1b\x01",
    "M-Enter": b"\x1b\r",
    "S-a": b"A",
    "a": b"a",
    "-": b"-",
    "é": "é".encode(),
}


@pytest.mark.parametrize(("name", "expected"), XTERM.items())
def test_xterm_sequences(name: str, expected: bytes) -> None:
    assert encode_key(name) == expected


@pytest.mark.parametrize(("name", "letter"), [("Up", "A"), ("down", "B"), ("Home", "H")])
def test_unmodified_cursor_keys_are_left_to_the_supervisor(name: str, letter: str) -> None:
    assert encode_key(name) == letter  # CSI or SS3, by the program's DECCKM


@pytest.mark.parametrize("name", ["Enterr", "C-Enter", "S-1", "C-é", "C-", "F13", "", "C-1"])
def test_a_name_that_is_no_key_is_refused(name: str) -> None:
    with pytest.raises(UnknownKey):
        encode_key(name)


def test_consecutive_bytes_are_merged_around_cursor_keys() -> None:
    assert encode_keys(["a", "b", "Up", "Enter"]) == [
        {"bytes": "YWI="},
        {"cursor": "A"},
        {"bytes": "DQ=="},
    ]
