"""Key names, as tmux spells them, to the bytes an xterm sends for them.

``process.send_keys`` takes names such as ``Enter``, ``C-c``, ``M-x``, ``S-Up`` or ``F5``
(case-insensitive; aliases like ``Return``, ``Esc``, ``PgUp``, ``DC`` as tmux has them), or a
single character, which is itself. Modifiers ``C-`` (control), ``M-`` (meta: an ESC prefix) and
``S-`` (shift) combine. A modified cursor, editing or function key is sent in xterm's
``ESC [ 1 ; m X`` / ``ESC [ n ; m ~`` form, where ``m`` is 1 + shift + 2·meta + 4·control. A
name that is not a key, or a combination a terminal cannot send (``C-Enter``), is refused.

The unmodified cursor keys (``Up Down Left Right Home End``) depend on the program: in
application cursor mode (DECCKM, which full-screen programs switch on) they are ``ESC O A``
rather than ``ESC [ A``. Only the supervisor, which reads the program's output, knows the mode
at the moment the key is written, so those keys are passed to it as a ``cursor`` part.
"""

from __future__ import annotations

import base64
from typing import Any

ESC = b"\x1b"
CSI = ESC + b"["
SS3 = ESC + b"O"

PLAIN = {  # keys that are one byte (or a fixed sequence) and take only some modifiers
    "enter": b"\r",
    "tab": b"\t",
    "btab": CSI + b"Z",
    "escape": ESC,
    "space": b" ",
    "bspace": b"\x7f",
}
CURSOR = {"up": "A", "down": "B", "right": "C", "left": "D", "home": "H", "end": "F"}
TILDE = {  # ESC [ n ~
    "insert": 2,
    "delete": 3,
    "pageup": 5,
    "pagedown": 6,
    "f5": 15,
    "f6": 17,
    "f7": 18,
    "f8": 19,
    "f9": 20,
    "f10": 21,
    "f11": 23,
    "f12": 24,
}
FUNCTION_SS3 = {"f1": "P", "f2": "Q", "f3": "R", "f4": "S"}
ALIASES = {
    "return": "enter",
    "esc": "escape",
    "ic": "insert",
    "dc": "delete",
    "del": "delete",
    "pgup": "pageup",
    "ppage": "pageup",
    "pgdn": "pagedown",
    "npage": "pagedown",
}
MODIFIERS = {"c": "control", "m": "meta", "s": "shift"}
CONTROL_PUNCTUATION = "@[\\]^_ "  # C-@ is NUL, C-[ is ESC, … C-_ is 0x1f


class UnknownKey(ValueError):
    """A name that is not a key, or a modifier the key cannot take."""


Part = dict[str, Any]  # {"bytes": base64} or {"cursor": "A"}: what the supervisor writes


def encode_keys(names: list[str]) -> list[Part]:
    """The parts for ``names``, in order; consecutive bytes are merged into one part."""
    parts: list[Part] = []
    pending = bytearray()
    for name in names:
        encoded = encode_key(name)
        if isinstance(encoded, bytes):
            pending += encoded
            continue
        if pending:
            parts.append(bytes_part(bytes(pending)))
            pending.clear()
        parts.append({"cursor": encoded})
    if pending:
        parts.append(bytes_part(bytes(pending)))
    return parts


def bytes_part(data: bytes) -> Part:
    return {"bytes": base64.b64encode(data).decode()}


def encode_key(name: str) -> bytes | str:
    """One key's bytes, or the letter of an unmodified cursor key (see the module)."""
    base, modifiers = _split(name)
    key = ALIASES.get(base.lower(), base.lower())
    shift, meta, control = (m in modifiers for m in ("shift", "meta", "control"))
    parameter = 1 + shift + 2 * meta + 4 * control
    if len(base) == 1:
        return _character(name, base, shift, meta, control)
    if key in CURSOR:
        if parameter == 1:
            return CURSOR[key]
        return CSI + f"1;{parameter}{CURSOR[key]}".encode()
    if key in TILDE:
        suffix = f";{parameter}" if parameter > 1 else ""
        return CSI + f"{TILDE[key]}{suffix}~".encode()
    if key in FUNCTION_SS3:
        if parameter == 1:
            return SS3 + FUNCTION_SS3[key].encode()
        return CSI + f"1;{parameter}{FUNCTION_SS3[key]}".encode()
    if key in PLAIN:
        data = PLAIN[key]
        if control and key == "space":
            data, control = b"\x00", False
        elif control and key == "bspace":
            data, control = b"\x08", False
        elif shift and key == "tab":
            data, shift = PLAIN["btab"], False
        if shift or control:
            raise UnknownKey(f"{name!r}: a terminal has no way to send that combination")
        return ESC + data if meta else data
    raise UnknownKey(f"{name!r} is not a key name")


def _split(name: str) -> tuple[str, set[str]]:
    """``C-M-x`` → (``x``, {control, meta}); ``^X`` → (``X``, {control})."""
    if len(name) == 2 and name[0] == "^":
        return name[1], {"control"}
    modifiers: set[str] = set()
    rest = name
    while len(rest) > 2 and rest[1] == "-" and rest[0].lower() in MODIFIERS:
        modifiers.add(MODIFIERS[rest[0].lower()])
        rest = rest[2:]
    if not rest:
        raise UnknownKey(f"{name!r} is not a key name")
    return rest, modifiers


def _character(name: str, character: str, shift: bool, meta: bool, control: bool) -> bytes:
    if shift:
        if not character.isalpha():
            raise UnknownKey(f"{name!r}: shift applies to letters only")
        character = character.upper()
    data = character.encode()
    if control:
        if character == "?":
            data = b"\x7f"
        elif character.isascii() and (character.isalpha() or character in CONTROL_PUNCTUATION):
            data = bytes([ord(character.upper()) & 0x1F])
        else:
            raise UnknownKey(f"{name!r}: a terminal has no control code for {character!r}")
    return ESC + data if meta else data
