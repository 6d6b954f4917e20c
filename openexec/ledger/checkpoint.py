"""C2SP tlog-checkpoint: the body of the signed note a log publishes as its tree head.

A checkpoint is what witnesses cosign and auditors compare, so one tree head has one text:
parsing takes the size only without leading zeros, the root only in canonical base64, and
every line non-empty. The origin is kept as it is: tlog-checkpoint recommends, but does not
require, a name without spaces or '+', and tells clients not to assume it.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

from openexec.ledger.merkle import HASH_SIZE
from openexec.ledger.note import decode_base64

MAX_SIZE = 2**64 - 1

_DECIMAL = re.compile(r"0|[1-9][0-9]{0,19}")
_CONTROL = re.compile(r"[\x00-\x1f]")


def parse_decimal(text: str) -> int:
    """An ASCII decimal without leading zeros (``0`` itself is one), at most 2**64 - 1."""
    if not _DECIMAL.fullmatch(text) or int(text) > MAX_SIZE:
        raise ValueError(f"{text[:40]!r} is not a decimal number without leading zeros")
    return int(text)


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for line in (self.origin, *self.extensions):
            if not line or _CONTROL.search(line):
                raise ValueError("checkpoint lines are non-empty, without control characters")
        if not 0 <= self.size <= MAX_SIZE:
            raise ValueError(f"tree size {self.size} is not in 0..2**64-1")
        if len(self.root) != HASH_SIZE:
            raise ValueError(f"a root hash is {HASH_SIZE} bytes")

    def text(self) -> str:
        """The note text: origin, size, base64 root and extension lines, each ending in
        newline."""
        lines = (self.origin, str(self.size), base64.b64encode(self.root).decode())
        return "".join(line + "\n" for line in (*lines, *self.extensions))


def parse_checkpoint(text: str) -> Checkpoint:
    """The checkpoint whose note text is ``text``; ValueError unless it is canonical."""
    if not text.endswith("\n"):
        raise ValueError("a checkpoint ends in a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise ValueError("a checkpoint has an origin, a size and a root hash line")
    origin, size, root, *extensions = lines
    try:
        digest = decode_base64(root)
    except ValueError:
        raise ValueError("a checkpoint's root hash is canonical base64") from None
    return Checkpoint(origin, parse_decimal(size), digest, tuple(extensions))
