"""RFC 6962 Merkle trees kept as C2SP tlog-tiles: hashes, roots, proofs and their
verification (RFC 9162, sections 2.1.3.2 and 2.1.4.2), and building the tiles.

The tree is only ever stored as tiles, never as nodes, so everything here reads the hashes it
needs from tiles: a tile at tile level L holds consecutive hashes of tree level 8L, and every
level in between is recomputed from them. A proof or a root reads a handful of tiles (the
ones on its path, at most one partial tile per level); appending reads only the right edge.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from typing import Protocol

from openexec.ledger.tiles import TILE_HEIGHT, TILE_WIDTH

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
TILE_BYTES = TILE_WIDTH * HASH_SIZE


def leaf_hash(data: bytes) -> bytes:
    """RFC 6962 leaf hash: SHA-256(0x00 || data)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 interior node hash: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


class TileReader(Protocol):
    def read_tile(self, level: int, index: int, width: int) -> bytes:
        """The first ``width`` hashes of tile ``index`` at tile level ``level`` (at least
        ``width * 32`` bytes: a full tile may stand in for a partial one)."""
        ...


def _fold(hashes: list[bytes]) -> bytes:
    """The root of a perfect subtree whose 2**k bottom hashes are given, left to right."""
    while len(hashes) > 1:
        hashes = [node_hash(hashes[i], hashes[i + 1]) for i in range(0, len(hashes), 2)]
    return hashes[0]


def _split(data: bytes) -> list[bytes]:
    return [data[i : i + HASH_SIZE] for i in range(0, len(data), HASH_SIZE)]


def _largest_power_below(n: int) -> int:
    """The largest power of two smaller than ``n`` (n > 1): RFC 6962's k."""
    return 1 << ((n - 1).bit_length() - 1)


class _TreeTiles:
    """The hashes of one tree size, read from tiles, each tile read once."""

    def __init__(self, reader: TileReader, size: int) -> None:
        if size < 0:
            raise ValueError(f"tree size {size} is negative")
        self._reader = reader
        self._size = size
        self._tiles: dict[tuple[int, int], bytes] = {}

    def _tile(self, level: int, index: int) -> bytes:
        key = (level, index)
        if key not in self._tiles:
            width = min(TILE_WIDTH, (self._size >> (TILE_HEIGHT * level)) - index * TILE_WIDTH)
            data = self._reader.read_tile(level, index, width)
            if len(data) < width * HASH_SIZE:
                raise ValueError(f"tile {level}/{index} holds fewer than {width} hashes")
            self._tiles[key] = bytes(data[: width * HASH_SIZE])
        return self._tiles[key]

    def subtree(self, level: int, index: int) -> bytes:
        if level < 0 or index < 0 or (index + 1) << level > self._size:
            raise ValueError(
                f"no complete subtree {index} of height {level} in a tree of size {self._size}"
            )
        tile_level, height = divmod(level, TILE_HEIGHT)
        count = 1 << height
        tile_index, offset = divmod(index * count, TILE_WIDTH)
        data = self._tile(tile_level, tile_index)
        return _fold(_split(data[offset * HASH_SIZE : (offset + count) * HASH_SIZE]))

    def range(self, start: int, end: int) -> bytes:
        if not 0 <= start < end <= self._size or start % (1 << (end - start - 1).bit_length()):
            raise ValueError(f"leaves {start}..{end} are not a subtree of size {self._size}")
        pieces = []
        while start < end:
            height = (end - start).bit_length() - 1
            pieces.append(self.subtree(height, start >> height))
            start += 1 << height
        root = pieces.pop()
        while pieces:
            root = node_hash(pieces.pop(), root)
        return root


def subtree_hash(reader: TileReader, size: int, level: int, index: int) -> bytes:
    """The root of the perfect subtree of height ``level`` holding leaves
    ``index * 2**level`` to ``(index + 1) * 2**level - 1``, all within ``size``."""
    return _TreeTiles(reader, size).subtree(level, index)


def range_hash(reader: TileReader, size: int, start: int, end: int) -> bytes:
    """MTH of leaves ``start`` to ``end - 1``: a range RFC 6962's recursion makes, that is
    ``start`` a multiple of the smallest power of two at least ``end - start``."""
    return _TreeTiles(reader, size).range(start, end)


def tree_root(reader: TileReader, size: int) -> bytes:
    """The root of the tree of ``size`` leaves (EMPTY_ROOT for 0)."""
    if size == 0:
        return EMPTY_ROOT
    return _TreeTiles(reader, size).range(0, size)


def inclusion_proof(reader: TileReader, size: int, index: int) -> list[bytes]:
    """RFC 6962 PATH(index, D[size]): the leaf's sibling first, the root's child last."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of size {size}")
    tiles = _TreeTiles(reader, size)
    path = []
    start, end = 0, size
    while end - start > 1:
        split = start + _largest_power_below(end - start)
        if index < split:
            path.append(tiles.range(split, end))
            end = split
        else:
            path.append(tiles.range(start, split))
            start = split
    path.reverse()
    return path


def consistency_proof(reader: TileReader, old_size: int, new_size: int) -> list[bytes]:
    """RFC 6962 PROOF(old_size, D[new_size]) (empty for equal sizes); 0 < old_size."""
    if not 0 < old_size <= new_size:
        raise ValueError(f"no consistency proof from size {old_size} to size {new_size}")
    tiles = _TreeTiles(reader, new_size)
    proof = []
    start, end, old, whole = 0, new_size, old_size, True
    while end - start != old:
        k = _largest_power_below(end - start)
        if old <= k:
            proof.append(tiles.range(start + k, end))
            end = start + k
        else:
            proof.append(tiles.range(start, start + k))
            start += k
            old -= k
            whole = False
    if not whole:
        proof.append(tiles.range(start, end))
    proof.reverse()
    return proof


def _is_hash(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == HASH_SIZE


def _same(a: object, b: object) -> bool:
    return isinstance(a, bytes) and isinstance(b, bytes) and hmac.compare_digest(a, b)


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """Whether ``proof`` shows the leaf hash ``leaf`` at ``index`` in the tree of ``size``
    leaves whose root is ``root`` (RFC 9162, 2.1.3.2). False for any malformed input."""
    if not 0 <= index < size or not _is_hash(leaf) or not _is_hash(root):
        return False
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if sn == 0 or not _is_hash(p):
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and _same(r, root)


def verify_consistency(
    old_size: int, new_size: int, proof: Sequence[bytes], old_root: bytes, new_root: bytes
) -> bool:
    """Whether ``proof`` shows the tree of ``old_size`` leaves and root ``old_root`` is a
    prefix of the one of ``new_size`` and ``new_root`` (RFC 9162, 2.1.4.2). Equal sizes need
    an empty proof and equal roots. An old size of 0 is False: RFC 9162 defines no proof
    from the empty tree (it is a prefix of every tree; callers decide that case themselves).
    False for any malformed input."""
    if not 0 < old_size <= new_size:
        return False
    if old_size == new_size:
        return len(proof) == 0 and _same(old_root, new_root)
    if not proof or not _is_hash(old_root) or not _is_hash(new_root):
        return False
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    if not _is_hash(path[0]):
        return False
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0 or not _is_hash(c):
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and _same(fr, old_root) and _same(sr, new_root)


class _EdgeTiles:
    """A TileReader over a tree's right-edge partial tiles, one per level: all a root reads."""

    def __init__(self, edge: Callable[[int], bytes]) -> None:
        self._edge = edge

    def read_tile(self, level: int, index: int, width: int) -> bytes:
        return self._edge(level)


class TreeBuilder:
    """Appends leaves to a tree stored as tiles. It reads only the tree's right edge (one
    partial tile per level, each once) and keeps it, so appends can follow one another before
    the tiles of the earlier ones are stored."""

    def __init__(self, reader: TileReader, size: int) -> None:
        if size < 0:
            raise ValueError(f"tree size {size} is negative")
        self._reader = reader
        self._size = size
        self._edges: dict[int, bytes] = {}

    @property
    def size(self) -> int:
        return self._size

    def _edge(self, level: int) -> bytes:
        """The partial tile of ``level`` at the current size (empty if it has none)."""
        if level not in self._edges:
            count = self._size >> (TILE_HEIGHT * level)
            width = count % TILE_WIDTH
            data = b""
            if width:
                data = self._reader.read_tile(level, count // TILE_WIDTH, width)
                if len(data) < width * HASH_SIZE:
                    raise ValueError(f"tile {level}/{count // TILE_WIDTH} is short")
            self._edges[level] = bytes(data[: width * HASH_SIZE])
        return self._edges[level]

    def append(self, leaf_hashes: Sequence[bytes]) -> dict[tuple[int, int], bytes]:
        """Append the leaves; returns every tile created or changed, by (tile level, index),
        each with all its hashes so far (a full tile is 256 hashes wide)."""
        if not all(_is_hash(h) for h in leaf_hashes):
            raise ValueError("a leaf hash is not 32 bytes")
        changed: dict[tuple[int, int], bytes] = {}
        new = list(leaf_hashes)
        level = 0
        while new:
            index = (self._size >> (TILE_HEIGHT * level)) // TILE_WIDTH
            tile = bytearray(self._edge(level))
            completed = []
            for h in new:
                tile += h
                if len(tile) == TILE_BYTES:
                    full = bytes(tile)
                    changed[(level, index)] = full
                    completed.append(_fold(_split(full)))
                    tile.clear()
                    index += 1
            if tile:
                changed[(level, index)] = bytes(tile)
            self._edges[level] = bytes(tile)
            new = completed
            level += 1
        self._size += len(leaf_hashes)
        return changed

    def root(self) -> bytes:
        """The root at the current size."""
        return tree_root(_EdgeTiles(self._edge), self._size)


class TreeAccumulator:
    """Rebuilds a tree leaf by leaf (an auditor's view), keeping only its right edge: each
    ``add`` returns the full tiles that leaf completed, to compare with the log's, and
    ``partial_tiles`` gives the right edge's partial tiles at the end."""

    def __init__(self) -> None:
        self._size = 0
        self._edges: list[bytearray] = []  # the partial tile of each level

    @property
    def size(self) -> int:
        return self._size

    def add(self, leaf_hash: bytes) -> list[tuple[int, int, bytes]]:
        """Add the next leaf hash; returns the (tile level, index, bytes) of the full tiles
        it completed, lowest level first (usually none)."""
        if not _is_hash(leaf_hash):
            raise ValueError("a leaf hash is not 32 bytes")
        self._size += 1
        completed: list[tuple[int, int, bytes]] = []
        h, level = leaf_hash, 0
        while True:
            if level == len(self._edges):
                self._edges.append(bytearray())
            tile = self._edges[level]
            tile += h
            if len(tile) < TILE_BYTES:
                return completed
            full = bytes(tile)
            tile.clear()
            index = (self._size >> (TILE_HEIGHT * level)) // TILE_WIDTH - 1
            completed.append((level, index, full))
            h = _fold(_split(full))
            level += 1

    def partial_tiles(self) -> list[tuple[int, int, bytes]]:
        """The (tile level, index, bytes) of the partial tiles at the current size."""
        return [
            (level, (self._size >> (TILE_HEIGHT * level)) // TILE_WIDTH, bytes(tile))
            for level, tile in enumerate(self._edges)
            if tile
        ]

    def root(self) -> bytes:
        """The root at the current size."""
        return tree_root(_EdgeTiles(self._edge), self._size)

    def _edge(self, level: int) -> bytes:
        return bytes(self._edges[level])
