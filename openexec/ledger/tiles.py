"""C2SP tlog-tiles: the paths of tiles and entry bundles, and the entry bundle encoding.

The ledger is stored and served as tlog-tiles resources, so any tlog client can read it. Paths
are parsed strictly, one spelling per resource: a tile has exactly one path, so a cache or a
store keyed by path never holds two copies of one tile that could disagree.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

TILE_HEIGHT = 8  # tree levels per tile level
TILE_WIDTH = 256  # hashes in a full tile, entries in a full bundle
MAX_LEVEL = 63
MAX_ENTRY_SIZE = 0xFFFF  # a bundle's entry lengths are uint16

_PATH = re.compile(
    r"tile/(?P<level>entries|0|[1-9][0-9]?)/(?P<groups>(?:x[0-9]{3}/)*)(?P<last>[0-9]{3})"
    r"(?:\.p/(?P<width>[1-9][0-9]{0,2}))?"
)


@dataclass(frozen=True)
class TilePath:
    """A tile (``level`` 0..63) or an entry bundle (``level`` None), ``width`` 1..256."""

    level: int | None
    index: int
    width: int = TILE_WIDTH

    def path(self) -> str:
        if self.level is None:
            return entries_path(self.index, self.width)
        return tile_path(self.level, self.index, self.width)


def tile_path(level: int, index: int, width: int = TILE_WIDTH) -> str:
    """``tile/<L>/<N>[.p/<W>]``; a width of 256 is the full tile."""
    if not 0 <= level <= MAX_LEVEL:
        raise ValueError(f"tile level {level} is not in 0..{MAX_LEVEL}")
    return f"tile/{level}/{_encode_index(index, width)}"


def entries_path(index: int, width: int = TILE_WIDTH) -> str:
    """``tile/entries/<N>[.p/<W>]``; a width of 256 is the full bundle."""
    return f"tile/entries/{_encode_index(index, width)}"


def _encode_index(index: int, width: int) -> str:
    if index < 0:
        raise ValueError(f"tile index {index} is negative")
    if not 1 <= width <= TILE_WIDTH:
        raise ValueError(f"tile width {width} is not in 1..{TILE_WIDTH}")
    digits = str(index)
    digits = digits.zfill(-(-len(digits) // 3) * 3)
    groups = [digits[i : i + 3] for i in range(0, len(digits), 3)]
    encoded = "/".join([*(f"x{group}" for group in groups[:-1]), groups[-1]])
    return encoded if width == TILE_WIDTH else f"{encoded}.p/{width}"


def parse_tile_path(path: str) -> TilePath:
    """The tile or bundle of a canonical path; ValueError for anything else (leading zeros,
    a level over 63, a width outside 1..255 after ``.p/``, an index with a leading ``x000``)."""
    match = _PATH.fullmatch(path)
    if match is None:
        raise ValueError(f"{path!r} is not a tile path")
    groups = match["groups"]
    if groups.startswith("x000/"):
        raise ValueError(f"{path!r}: the tile index has a leading zero group")
    level = None if match["level"] == "entries" else int(match["level"])
    if level is not None and level > MAX_LEVEL:
        raise ValueError(f"{path!r}: the tile level is over {MAX_LEVEL}")
    width = TILE_WIDTH
    if match["width"] is not None:
        width = int(match["width"])
        if width >= TILE_WIDTH:
            raise ValueError(f"{path!r}: a partial tile is 1 to {TILE_WIDTH - 1} wide")
    index = int(groups.replace("x", "").replace("/", "") + match["last"])
    return TilePath(level, index, width)


def partial_width(size: int, level: int) -> int:
    """How many hashes the partial tile of ``level`` holds in a tree of ``size`` leaves, 0 if
    that level has none (its last tile is full, or it has no tile). The entry bundles follow
    level 0."""
    if size < 0 or not 0 <= level <= MAX_LEVEL:
        raise ValueError(f"no tile level {level} in a tree of size {size}")
    return (size >> (TILE_HEIGHT * level)) % TILE_WIDTH


def partial_tiles(size: int) -> list[TilePath]:
    """The partial tiles and the partial entry bundle a tree of ``size`` leaves has: the ones
    a log must serve for a checkpoint of that size (full tiles are all those before them)."""
    found = []
    level = 0
    while size >> (TILE_HEIGHT * level):
        width = partial_width(size, level)
        if width:
            index = (size >> (TILE_HEIGHT * level)) // TILE_WIDTH
            found.append(TilePath(level, index, width))
            if level == 0:
                found.append(TilePath(None, index, width))
        level += 1
    return found


def encode_bundle(entries: Sequence[bytes]) -> bytes:
    """An entry bundle: each entry as a big-endian uint16 length and its bytes."""
    if len(entries) > TILE_WIDTH:
        raise ValueError(f"a bundle holds at most {TILE_WIDTH} entries, not {len(entries)}")
    parts = []
    for entry in entries:
        if len(entry) > MAX_ENTRY_SIZE:
            raise ValueError(f"an entry of {len(entry)} bytes is over {MAX_ENTRY_SIZE}")
        parts += (len(entry).to_bytes(2, "big"), entry)
    return b"".join(parts)


def decode_bundle(data: bytes) -> list[bytes]:
    """The entries of a bundle; ValueError if it is truncated or holds over 256 entries."""
    entries = []
    offset = 0
    while offset < len(data):
        if len(entries) == TILE_WIDTH:
            raise ValueError(f"the bundle holds more than {TILE_WIDTH} entries")
        if offset + 2 > len(data):
            raise ValueError("the bundle ends inside an entry's length")
        end = offset + 2 + int.from_bytes(data[offset : offset + 2], "big")
        if end > len(data):
            raise ValueError("the bundle ends inside an entry")
        entries.append(bytes(data[offset + 2 : end]))
        offset = end
    return entries
