"""C2SP signed notes: Ed25519 note signatures (type 0x01) and tlog-cosignature/v1 witness
cosignatures (type 0x04), with verifier keys.

A checkpoint is trusted only through the note that carries it, so parsing is strict and
accepts one spelling of each note: valid UTF-8 without control characters other than
newline, a text ending in newline, a blank line, then well formed signature lines in
canonical base64. As signed-note requires, signatures by unknown keys are ignored, a known key's
signature that fails is an error, and a note no known key verified is rejected.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

NOTE_KEY_TYPE = 0x01  # Ed25519 signatures of the note text
COSIGNATURE_KEY_TYPE = 0x04  # tlog-cosignature/v1: timestamped Ed25519 cosignatures
KEY_TYPES = (NOTE_KEY_TYPE, COSIGNATURE_KEY_TYPE)
PUBLIC_KEY_SIZE = 32
ED25519_SIGNATURE_SIZE = 64
KEY_ID_SIZE = 4
MAX_SIGNATURES = 100  # signed-note asks verifiers to accept at least 16
MAX_TIMESTAMP = 2**63 - 1
SIGNATURE_PREFIX = "\u2014 "  # em dash, space

_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")
_HEX_KEY_ID = re.compile(r"[0-9a-f]{8}")


class NoteError(ValueError):
    """A note, signature line or verifier key that is malformed or does not verify."""


def decode_base64(text: str) -> bytes:
    """Standard base64 (RFC 4648, section 4), in its one canonical spelling only."""
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise NoteError("not standard base64") from None
    if base64.b64encode(data).decode() != text:
        raise NoteError("not canonical base64")
    return data


def note_key_id(name: str, key_type: int, public_key: bytes) -> bytes:
    """SHA-256(name || 0x0A || type || public key)[:4], the key ID of both key types."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([key_type]) + public_key).digest()[
        :KEY_ID_SIZE
    ]


def cosignature_message(checkpoint_text: str, timestamp: int) -> bytes:
    """What a tlog-cosignature/v1 signs: a header line, a time line, the checkpoint body."""
    return f"cosignature/v1\ntime {timestamp}\n{checkpoint_text}".encode()


def _check_characters(text: str) -> None:
    if _CONTROL.search(text):
        raise NoteError("a note holds no control characters but newline")
    try:
        text.encode()
    except UnicodeEncodeError:
        raise NoteError("a note is valid UTF-8") from None


def _check_name(name: str) -> None:
    if not name or "+" in name or any(c.isspace() for c in name):
        raise NoteError(f"{name!r} is not a key name (non-empty, no spaces, no '+')")
    _check_characters(name)


def _check_text(text: str) -> None:
    """A note text: non-empty, ending in newline, nothing a signed note forbids."""
    if not text.endswith("\n"):
        raise NoteError("a note text ends in a newline")
    _check_characters(text)


def _verifies(public_key: bytes, signature: bytes, message: bytes) -> bool:
    if len(signature) != ED25519_SIGNATURE_SIZE:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except InvalidSignature:
        return False
    return True


def _cosigned_at(public_key: bytes, checkpoint_text: str, signature: bytes) -> int | None:
    """The timestamp of a valid cosignature (timestamp || Ed25519 signature), else None."""
    if len(signature) != 8 + ED25519_SIGNATURE_SIZE:
        return None
    timestamp = int.from_bytes(signature[:8], "big")
    if timestamp > MAX_TIMESTAMP:
        return None
    message = cosignature_message(checkpoint_text, timestamp)
    return timestamp if _verifies(public_key, signature[8:], message) else None


@dataclass(frozen=True)
class SignatureLine:
    """One signature line: its key name, key ID and signature (the bytes after the key ID;
    for a cosignature, the 8-byte timestamp and the Ed25519 signature)."""

    name: str
    key_id: bytes
    signature: bytes

    def line(self) -> str:
        """The line as a note carries it, newline included."""
        encoded = base64.b64encode(self.key_id + self.signature).decode()
        return f"{SIGNATURE_PREFIX}{self.name} {encoded}\n"


def parse_signature_line(line: str) -> SignatureLine:
    """A signature line, with or without its final newline."""
    line = line.removesuffix("\n")
    _check_characters(line)
    if "\n" in line or not line.startswith(SIGNATURE_PREFIX):
        raise NoteError("a signature line is an em dash, a space, a key name and a signature")
    name, space, encoded = line[len(SIGNATURE_PREFIX) :].partition(" ")
    if not space:
        raise NoteError("a signature line is an em dash, a space, a key name and a signature")
    _check_name(name)
    data = decode_base64(encoded)
    if len(data) <= KEY_ID_SIZE:
        raise NoteError(f"the signature of {name!r} is too short")
    return SignatureLine(name, data[:KEY_ID_SIZE], data[KEY_ID_SIZE:])


def split_note(note: str) -> tuple[str, list[SignatureLine]]:
    """A note's text (up to its final newline before the blank line) and its signature
    lines, unverified."""
    _check_characters(note)
    split = note.rfind("\n\n")
    if split < 0:
        raise NoteError("a note is a text, a blank line and signature lines")
    text, block = note[: split + 1], note[split + 2 :]
    if not block.endswith("\n"):
        raise NoteError("a note ends with signature lines, each ending in a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"a note has at most {MAX_SIGNATURES} signatures")
    return text, [parse_signature_line(line) for line in lines]


@dataclass(frozen=True)
class NoteVerifier:
    """A verifier key: a key name, key ID, key type (0x01 note, 0x04 cosignature) and
    Ed25519 public key; its key ID is checked against the others when it is made."""

    name: str
    key_id: bytes
    key_type: int
    public_key: bytes

    def __post_init__(self) -> None:
        _check_name(self.name)
        if self.key_type not in KEY_TYPES:
            raise NoteError(f"key type {self.key_type:#04x} is not supported")
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key)
        except ValueError:
            raise NoteError(f"an Ed25519 public key is {PUBLIC_KEY_SIZE} bytes") from None
        if self.key_id != note_key_id(self.name, self.key_type, self.public_key):
            raise NoteError(f"the key ID of {self.name!r} is not the one of its name and key")

    def vkey(self) -> str:
        """``<name>+<hex key ID>+<base64(type || public key)>``."""
        material = base64.b64encode(bytes([self.key_type]) + self.public_key).decode()
        return f"{self.name}+{self.key_id.hex()}+{material}"

    def verify(self, text: str, signature: bytes) -> bool:
        """Whether ``signature`` (the bytes after the key ID) is this key's over the note
        text ``text``."""
        if self.key_type == COSIGNATURE_KEY_TYPE:
            return _cosigned_at(self.public_key, text, signature) is not None
        return _verifies(self.public_key, signature, text.encode())


def parse_vkey(text: str) -> NoteVerifier:
    """A verifier key ``<name>+<hex key ID>+<base64(type || public key)>`` of type 0x01 or
    0x04 (exactly that: no surrounding spaces). The key is split at its first two '+': base64
    has '+' too."""
    parts = text.split("+", 2)
    if len(parts) != 3:
        raise NoteError("a verifier key is a name, a key ID and a key, joined by '+'")
    name, key_id, encoded = parts
    if not _HEX_KEY_ID.fullmatch(key_id):
        raise NoteError("a verifier key's ID is 8 lowercase hex digits")
    material = decode_base64(encoded)
    if not material:
        raise NoteError("a verifier key has a key type and a public key")
    return NoteVerifier(name, bytes.fromhex(key_id), material[0], material[1:])


def open_note(note: str, verifiers: Sequence[NoteVerifier]) -> tuple[str, list[NoteVerifier]]:
    """The note's text and the verifiers (of those given) that signed it. Signatures by other
    keys are ignored; NoteError if a given key's signature fails or none of them signed."""
    text, signatures = split_note(note)
    verified: list[NoteVerifier] = []
    for signature in signatures:
        verifier = next(
            (v for v in verifiers if v.name == signature.name and v.key_id == signature.key_id),
            None,
        )
        if verifier is None:
            continue
        if not verifier.verify(text, signature.signature):
            raise NoteError(f"the signature of {signature.name!r} does not verify")
        if verifier not in verified:
            verified.append(verifier)
    if not verified:
        raise NoteError("the note is signed by none of the known keys")
    return text, verified


def verify_cosignature(
    signature: SignatureLine | str, checkpoint_text: str, verifier: NoteVerifier
) -> int:
    """The timestamp of a witness's cosignature (a signature line, or its text) on the
    checkpoint body ``checkpoint_text``; NoteError unless it is ``verifier``'s and valid."""
    line = parse_signature_line(signature) if isinstance(signature, str) else signature
    if verifier.key_type != COSIGNATURE_KEY_TYPE:
        raise NoteError(f"{verifier.name!r} is not a cosignature (type 0x04) key")
    if line.name != verifier.name or line.key_id != verifier.key_id:
        raise NoteError(f"the signature is not by {verifier.name!r}")
    timestamp = _cosigned_at(verifier.public_key, checkpoint_text, line.signature)
    if timestamp is None:
        raise NoteError(f"the cosignature of {verifier.name!r} does not verify")
    return timestamp


class _Signer:
    """An Ed25519 key under a key name, for one signature type."""

    key_type: ClassVar[int]

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        _check_name(name)
        self.name = name
        self._private_key = private_key
        public_key = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.verifier = NoteVerifier(
            name, note_key_id(name, self.key_type, public_key), self.key_type, public_key
        )

    @property
    def key_id(self) -> bytes:
        return self.verifier.key_id

    def vkey(self) -> str:
        return self.verifier.vkey()


class NoteSigner(_Signer):
    """Signs notes (a log's checkpoints) with Ed25519, signature type 0x01."""

    key_type = NOTE_KEY_TYPE

    def sign(self, text: str) -> str:
        """The signed note: ``text`` (ending in newline), a blank line, the signature."""
        _check_text(text)
        signature = self._private_key.sign(text.encode())
        return text + "\n" + SignatureLine(self.name, self.key_id, signature).line()


class CosignatureSigner(_Signer):
    """A witness's key: tlog-cosignature/v1, signature type 0x04."""

    key_type = COSIGNATURE_KEY_TYPE

    def cosign(self, checkpoint_text: str, timestamp: int) -> str:
        """The cosignature line (newline included) of the checkpoint body at ``timestamp``
        (POSIX seconds)."""
        _check_text(checkpoint_text)
        if not 0 <= timestamp <= MAX_TIMESTAMP:
            raise NoteError(f"timestamp {timestamp} is not in 0..2**63-1")
        signature = self._private_key.sign(cosignature_message(checkpoint_text, timestamp))
        data = timestamp.to_bytes(8, "big") + signature
        return SignatureLine(self.name, self.key_id, data).line()
