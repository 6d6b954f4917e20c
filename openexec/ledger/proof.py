"""C2SP tlog-proof: an entry's index, its inclusion proof and the signed checkpoint in one
text, so that a receipt's inclusion can be checked offline with the log's key alone.

Parsing is strict (one spelling per proof) but checks only the form: the checkpoint must be
a signed note carrying a checkpoint, and whether its signatures verify, and the inclusion
proof with them, is for the verifier, which holds the keys.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

from openexec.ledger.checkpoint import parse_checkpoint, parse_decimal
from openexec.ledger.merkle import HASH_SIZE
from openexec.ledger.note import decode_base64, split_note

HEADER = "c2sp.org/tlog-proof@v1"
MAX_HASHES = 64  # an inclusion proof in a tree of fewer than 2**64 leaves


@dataclass(frozen=True)
class TlogProof:
    index: int
    hashes: tuple[bytes, ...]
    checkpoint: str  # the signed checkpoint note, verbatim (cosignatures included)
    extra: bytes | None = None

    def __post_init__(self) -> None:
        if self.index < 0:
            raise ValueError(f"entry index {self.index} is negative")
        if len(self.hashes) > MAX_HASHES or any(len(h) != HASH_SIZE for h in self.hashes):
            raise ValueError(f"an inclusion proof is at most {MAX_HASHES} hashes of 32 bytes")


def format_proof(proof: TlogProof) -> str:
    lines = [HEADER]
    if proof.extra is not None:
        lines.append("extra " + base64.b64encode(proof.extra).decode())
    lines.append(f"index {proof.index}")
    lines += (base64.b64encode(h).decode() for h in proof.hashes)
    return "".join(line + "\n" for line in lines) + "\n" + proof.checkpoint


def _next_line(text: str) -> tuple[str, str]:
    line, newline, rest = text.partition("\n")
    if not newline:
        raise ValueError("a tlog-proof ends with a checkpoint after an empty line")
    return line, rest


def parse_proof(text: str) -> TlogProof:
    """The proof ``text`` holds; ValueError unless it is a canonical tlog-proof whose
    checkpoint is a well formed signed checkpoint (its signatures are not verified here)."""
    line, rest = _next_line(text)
    if line != HEADER:
        raise ValueError(f"a tlog-proof starts with {HEADER!r}")
    line, rest = _next_line(rest)
    extra = None
    if line.startswith("extra "):
        extra = decode_base64(line.removeprefix("extra "))
        line, rest = _next_line(rest)
    if not line.startswith("index "):
        raise ValueError("a tlog-proof has an index line")
    index = parse_decimal(line.removeprefix("index "))
    hashes = []
    line, rest = _next_line(rest)
    while line:
        if len(hashes) == MAX_HASHES:
            raise ValueError(f"an inclusion proof is at most {MAX_HASHES} hashes")
        digest = decode_base64(line)
        if len(digest) != HASH_SIZE:
            raise ValueError(f"an inclusion proof hash is {HASH_SIZE} bytes")
        hashes.append(digest)
        line, rest = _next_line(rest)
    checkpoint_text, _ = split_note(rest)
    parse_checkpoint(checkpoint_text)
    return TlogProof(index, tuple(hashes), rest, extra)
