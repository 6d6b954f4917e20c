"""The ledger's format library against its standards: every RFC 6962/9162 proof vector of
transparency-dev/merkle, proofs from tiles against a naive RFC 6962 recursion, tile building
three ways, and every example of the C2SP signed-note, tlog-checkpoint, tlog-cosignature,
tlog-tiles and tlog-proof documents (copies in tests/fixtures/tlog/)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
import time
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from openexec.ledger.checkpoint import Checkpoint, parse_checkpoint
from openexec.ledger.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    TreeAccumulator,
    TreeBuilder,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    range_hash,
    subtree_hash,
    tree_root,
    verify_consistency,
    verify_inclusion,
)
from openexec.ledger.note import (
    COSIGNATURE_KEY_TYPE,
    MAX_SIGNATURES,
    NOTE_KEY_TYPE,
    CosignatureSigner,
    NoteError,
    NoteSigner,
    NoteVerifier,
    SignatureLine,
    cosignature_message,
    open_note,
    parse_signature_line,
    parse_vkey,
    split_note,
    verify_cosignature,
)
from openexec.ledger.proof import TlogProof, format_proof, parse_proof
from openexec.ledger.tiles import (
    TILE_WIDTH,
    TilePath,
    decode_bundle,
    encode_bundle,
    entries_path,
    parse_tile_path,
    partial_tiles,
    partial_width,
    tile_path,
)

REF = Path(__file__).resolve().parent / "fixtures" / "tlog"
VECTORS = REF / "merkle-testdata"
C2SP = REF / "c2sp"


def b64(text: str) -> bytes:
    return base64.b64decode(text)


def key(seed: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"key %d" % seed).digest())


def flipped(data: bytes, position: int, bit: int = 0) -> bytes:
    return data[:position] + bytes([data[position] ^ (1 << bit)]) + data[position + 1 :]


# --- RFC 6962 / RFC 9162 vectors ----------------------------------------------------------


def vector_files() -> list[Path]:
    """Every JSON file under the vectors directory (a missing directory is a failure)."""
    assert VECTORS.is_dir(), f"{VECTORS} is missing"
    found = []
    for directory, _, names in os.walk(VECTORS):
        found += [Path(directory) / name for name in names if name.endswith(".json")]
    return sorted(found)


def check_vector(vector: dict[str, Any]) -> bool:
    proof = [b64(h) for h in vector["proof"] or []]
    if "leafIdx" in vector:
        return verify_inclusion(
            b64(vector["leafHash"]),
            vector["leafIdx"],
            vector["treeSize"],
            proof,
            b64(vector["root"]),
        )
    return verify_consistency(
        vector["size1"], vector["size2"], proof, b64(vector["root1"]), b64(vector["root2"])
    )


def test_every_proof_vector() -> None:
    files = vector_files()
    kinds = {"inclusion": 0, "consistency": 0}
    wrong = []
    for path in files:
        vector = json.loads(path.read_text())
        kind = "inclusion" if "leafIdx" in vector else "consistency"
        assert path.relative_to(VECTORS).parts[0] == kind
        kinds[kind] += 1
        if check_vector(vector) == vector["wantErr"]:
            wrong.append(f"{path.relative_to(VECTORS)} ({vector['desc']})")
    assert wrong == []
    assert len(files) > 0
    assert sum(kinds.values()) == len(files) == 196
    assert kinds["inclusion"] > 0 and kinds["consistency"] > 0


def inclusion_mutations(
    leaf: bytes, index: int, size: int, proof: list[bytes], root: bytes
) -> list[tuple[bytes, int, int, list[bytes], bytes]]:
    """Changes to a valid inclusion proof that must all be rejected."""
    mutated = [
        (leaf, index, size, proof[:-1], root),
        (leaf, index, size, proof[1:], root),
        (leaf, index, size, [*proof, root], root),
        (leaf, index, size, [EMPTY_ROOT, *proof], root),
        (leaf, size, size, proof, root),
        (leaf, index, index, proof, root),
        (leaf, -1, size, proof, root),
        (root, index, size, proof, root)
        if leaf != root
        else (EMPTY_ROOT, index, size, proof, root),
        (leaf, index, size, proof, EMPTY_ROOT),
        (leaf[:-1], index, size, proof, root),
        (leaf, index, size, proof, root + b"\0"),
    ]
    mutated = [m for m in mutated if m[3] != proof or m[:3] != (leaf, index, size) or m[4] != root]
    for position in range(HASH_SIZE):
        mutated.append((flipped(leaf, position), index, size, proof, root))
        mutated.append((leaf, index, size, proof, flipped(root, position, 7)))
        for i in range(len(proof)):
            changed = list(proof)
            changed[i] = flipped(proof[i], position, position % 8)
            mutated.append((leaf, index, size, changed, root))
    return mutated


def consistency_mutations(
    old: int, new: int, proof: list[bytes], old_root: bytes, new_root: bytes
) -> list[tuple[int, int, list[bytes], bytes, bytes]]:
    """Changes to a valid consistency proof (old < new) that must all be rejected."""
    mutated = [
        (old, new, proof[:-1], old_root, new_root),
        (old, new, proof[1:], old_root, new_root),
        (old, new, [*proof, new_root], old_root, new_root),
        (old, new, [old_root, *proof], old_root, new_root),
        (old, new, proof, new_root, old_root),
        (0, new, proof, old_root, new_root),
        (new, old, proof, old_root, new_root),
        (old, new, [], old_root, new_root),
    ]
    for position in range(HASH_SIZE):
        mutated.append((old, new, proof, flipped(old_root, position), new_root))
        mutated.append((old, new, proof, old_root, flipped(new_root, position, 5)))
        for i in range(len(proof)):
            changed = list(proof)
            changed[i] = flipped(proof[i], position, position % 8)
            mutated.append((old, new, changed, old_root, new_root))
    return mutated


def test_mutated_happy_paths_fail() -> None:
    """Beyond the files' own mutations: every bit flip position, truncation and extension
    at either end, wrong index, wrong size and wrong roots of each happy path."""
    happy = 0
    for path in vector_files():
        vector = json.loads(path.read_text())
        if vector["wantErr"]:
            continue
        happy += 1
        proof = [b64(h) for h in vector["proof"] or []]
        if "leafIdx" in vector:
            args = (b64(vector["leafHash"]), vector["leafIdx"], vector["treeSize"])
            for mutation in inclusion_mutations(*args, proof, b64(vector["root"])):
                assert not verify_inclusion(*mutation), (path, mutation)
        elif vector["size1"] < vector["size2"]:
            sizes = (vector["size1"], vector["size2"])
            roots = (b64(vector["root1"]), b64(vector["root2"]))
            for mutation in consistency_mutations(*sizes, proof, *roots):
                assert not verify_consistency(*mutation), (path, mutation)
    assert happy >= 10


def test_verification_never_raises_on_malformed_input() -> None:
    h = leaf_hash(b"x")
    junk: list[Any] = [None, "a" * 32, 32, b"", b"\0" * 31, b"\0" * 33, bytearray(32)]
    for bad in junk:
        assert not verify_inclusion(bad, 0, 2, [h], h)
        assert not verify_inclusion(h, 0, 2, [bad], h)
        assert not verify_inclusion(h, 0, 2, [h], bad)
        assert not verify_consistency(1, 2, [bad], h, h)
        assert not verify_consistency(1, 2, [h], bad, h)
        assert not verify_consistency(1, 2, [h], h, bad)
        assert not verify_consistency(3, 4, [h, bad], h, h)
        assert not verify_consistency(2, 2, [], bad, h)
    for index, size in ((0, 0), (1, 1), (-1, 1), (2**64, 2**64), (5, -1)):
        assert not verify_inclusion(h, index, size, [h], h)
    assert not verify_inclusion(h, 0, 2**70, [h] * 1000, h)
    assert not verify_consistency(-1, 2, [h], h, h)
    assert not verify_consistency(1, 2**70, [h] * 1000, h, h)


# --- constants.go ---------------------------------------------------------------------------


def go_functions() -> dict[str, str]:
    source = (VECTORS / "constants.go").read_text()
    return dict(re.findall(r"^func (\w+)\(\) [^{]*\{\n(.*?)^\}", source, re.M | re.S))


def hex_values(body: str) -> list[bytes]:
    return [bytes.fromhex(value) for value in re.findall(r'hd\("([0-9a-f]*)"\)', body)]


def test_constants_go() -> None:
    functions = go_functions()
    inputs = hex_values(functions["LeafInputs"])
    levels = [hex_values(level) for level in functions["NodeHashes"].split("}, {")]
    roots = hex_values(functions["RootHashes"])
    assert functions["RootHashes"].count("EmptyRootHash()") == 1
    assert hex_values(functions["EmptyRootHash"]) == [EMPTY_ROOT]
    assert (len(inputs), [len(level) for level in levels], len(roots)) == (8, [8, 4, 2, 1], 8)
    assert [leaf_hash(data) for data in inputs] == levels[0]
    for level in range(1, 4):
        below = levels[level - 1]
        assert levels[level] == [node_hash(below[i], below[i + 1]) for i in range(0, len(below), 2)]
    tiles = MemoryTiles()
    builder = TreeBuilder(tiles, 0)
    assert builder.root() == tree_root(tiles, 0) == EMPTY_ROOT
    for size, (data, root) in enumerate(zip(inputs, roots, strict=True), start=1):
        tiles.store(builder.append([leaf_hash(data)]))
        assert builder.root() == tree_root(tiles, size) == root
    for level, hashes in enumerate(levels):
        for index, expected in enumerate(hashes):
            assert subtree_hash(tiles, 8, level, index) == expected
            assert range_hash(tiles, 8, index << level, (index + 1) << level) == expected


# --- proofs from tiles, against a naive RFC 6962 ----------------------------------------------


class MemoryTiles:
    """Tiles as TreeBuilder made them, every version kept: a read for a width the tree never
    had fails, and a partial read may get the full tile, as tlog-tiles allows."""

    def __init__(self) -> None:
        self.versions: dict[tuple[int, int, int], bytes] = {}
        self.latest: dict[tuple[int, int], bytes] = {}
        self.reads: list[tuple[int, int, int]] = []

    def store(self, tiles: dict[tuple[int, int], bytes]) -> None:
        for (level, index), data in tiles.items():
            assert len(data) % HASH_SIZE == 0 and 1 <= len(data) // HASH_SIZE <= TILE_WIDTH
            self.versions[(level, index, len(data) // HASH_SIZE)] = data
            self.latest[(level, index)] = data

    def read_tile(self, level: int, index: int, width: int) -> bytes:
        self.reads.append((level, index, width))
        found = self.versions.get((level, index, width))
        return found if found is not None else self.versions[(level, index, TILE_WIDTH)]


class Naive:
    """RFC 6962 section 2.1, written as the RFC writes it, over a list of leaf hashes."""

    def __init__(self, leaves: Sequence[bytes]) -> None:
        self.leaves = leaves
        self.mth = cache(self._mth)

    @staticmethod
    def split(n: int) -> int:
        k = 1
        while k * 2 < n:
            k *= 2
        return k

    def _mth(self, lo: int, hi: int) -> bytes:
        if hi - lo == 0:
            return hashlib.sha256(b"").digest()
        if hi - lo == 1:
            return self.leaves[lo]
        k = self.split(hi - lo)
        return node_hash(self.mth(lo, lo + k), self.mth(lo + k, hi))

    def path(self, m: int, lo: int, hi: int) -> list[bytes]:
        if hi - lo == 1:
            return []
        k = self.split(hi - lo)
        if m < k:
            return [*self.path(m, lo, lo + k), self.mth(lo + k, hi)]
        return [*self.path(m - k, lo + k, hi), self.mth(lo, lo + k)]

    def proof(self, m: int, lo: int, hi: int, whole: bool = True) -> list[bytes]:
        if m == hi - lo:
            return [] if whole else [self.mth(lo, hi)]
        k = self.split(hi - lo)
        if m <= k:
            return [*self.proof(m, lo, lo + k, whole), self.mth(lo + k, hi)]
        return [*self.proof(m - k, lo + k, hi, False), self.mth(lo, lo + k)]


@cache
def leaves_of(count: int) -> list[bytes]:
    return [leaf_hash(b"entry %d" % i) for i in range(count)]


def built(leaves: Sequence[bytes], boundaries: Sequence[int]) -> MemoryTiles:
    """The tiles of ``leaves`` appended in chunks ending at each boundary (and the end)."""
    tiles = MemoryTiles()
    size = 0
    for end in [*boundaries, len(leaves)]:
        if end > size:
            tiles.store(TreeBuilder(tiles, size).append(leaves[size:end]))
            size = end
    return tiles


def check_proofs(
    tiles: MemoryTiles, naive: Naive, sizes: Sequence[int], pick: Any
) -> tuple[int, int]:
    checked = [0, 0]
    for size in sizes:
        root = tree_root(tiles, size)
        assert root == naive.mth(0, size)
        for index in (i for i in pick(size) if i < size):
            proof = inclusion_proof(tiles, size, index)
            assert proof == naive.path(index, 0, size), (size, index)
            assert verify_inclusion(naive.leaves[index], index, size, proof, root)
            assert not verify_inclusion(naive.leaves[index], index, size, proof, EMPTY_ROOT)
            checked[0] += 1
        for old in pick(size):
            if old == 0:
                continue
            proof = consistency_proof(tiles, old, size)
            assert proof == naive.proof(old, 0, size), (old, size)
            old_root = naive.mth(0, old)
            assert verify_consistency(old, size, proof, old_root, root)
            if proof:
                changed = [flipped(proof[0], 3), *proof[1:]]
                assert not verify_consistency(old, size, changed, old_root, root)
            checked[1] += 1
    return checked[0], checked[1]


def test_proofs_match_naive_rfc6962_small_trees() -> None:
    leaves = leaves_of(300)
    tiles = built(leaves, range(1, 300))  # one leaf at a time: every tile width is there
    rng = random.Random(6962)
    sizes = [*range(1, 70), 100, 127, 128, 129, 200, 255, 256, 257, 299, 300]

    def pick(size: int) -> list[int]:
        if size < 70:
            return list(range(size + 1))
        return sorted({0, 1, size - 1, size, *rng.sample(range(size), 12)})

    inclusions, consistencies = check_proofs(tiles, Naive(leaves), sizes, pick)
    assert inclusions > 2000 and consistencies > 2000


def test_proofs_match_naive_rfc6962_around_65536() -> None:
    leaves = leaves_of(65536 + 300)
    sizes = [1000, 65535, 65536, 65537, 65536 + 255, 65536 + 256, 65536 + 300]
    tiles = built(leaves, sizes)
    rng = random.Random(65536)

    def pick(size: int) -> list[int]:
        edges = {0, 1, 255, 256, 257, 65535, 65536, size - 1, size}
        return sorted({i for i in edges if i <= size} | set(rng.sample(range(size), 4)))

    check_proofs(tiles, Naive(leaves), sizes, pick)


def test_proof_arguments_outside_the_tree_are_refused() -> None:
    tiles = built(leaves_of(10), [])
    for call in (
        lambda: inclusion_proof(tiles, 10, 10),
        lambda: inclusion_proof(tiles, 10, -1),
        lambda: consistency_proof(tiles, 0, 10),
        lambda: consistency_proof(tiles, 11, 10),
        lambda: subtree_hash(tiles, 10, 3, 1),  # leaves 8..15
        lambda: subtree_hash(tiles, 10, -1, 0),
        lambda: range_hash(tiles, 10, 2, 5),  # not a range RFC 6962 makes
        lambda: range_hash(tiles, 10, 8, 11),
        lambda: range_hash(tiles, 10, 4, 4),
        lambda: tree_root(tiles, -1),
    ):
        with pytest.raises(ValueError):
            call()
    assert consistency_proof(tiles, 10, 10) == []
    assert range_hash(tiles, 10, 8, 10) == node_hash(leaves_of(10)[8], leaves_of(10)[9])


# --- building tiles -------------------------------------------------------------------------


def test_tlog_tiles_examples_of_tree_sizes() -> None:
    """tlog-tiles: "a tree of size 70,000 will be represented by 273 full level 0 tiles, one
    partial level 0 tile of width 112, one full level 1 tile, one partial level 1 tile of
    width 17, and one partial level 2 tile of width 1"; size 256: a full level 0 tile and a
    partial level 1 tile of width 1."""
    widths = {
        70000: {(0, i): 256 for i in range(273)}
        | {(0, 273): 112, (1, 0): 256, (1, 1): 17}
        | {(2, 0): 1},
        256: {(0, 0): 256, (1, 0): 1},
    }
    for size, expected in widths.items():
        tiles = TreeBuilder(MemoryTiles(), 0).append(leaves_of(size))
        assert {k: len(v) // HASH_SIZE for k, v in tiles.items()} == expected
    assert [partial_width(70000, level) for level in range(4)] == [112, 17, 1, 0]
    assert partial_tiles(70000) == [
        TilePath(0, 273, 112),
        TilePath(None, 273, 112),
        TilePath(1, 1, 17),
        TilePath(2, 0, 1),
    ]
    assert partial_tiles(256) == [TilePath(1, 0, 1)]
    assert partial_tiles(0) == []


def test_builder_in_chunks_matches_one_append_and_the_accumulator() -> None:
    leaves = leaves_of(70000)
    whole = TreeBuilder(MemoryTiles(), 0)
    expected_tiles = whole.append(leaves)
    accumulator = TreeAccumulator()
    accumulated: dict[tuple[int, int], bytes] = {}
    roots = [accumulator.root()]
    for leaf in leaves:
        for level, index, data in accumulator.add(leaf):
            assert len(data) == TILE_WIDTH * HASH_SIZE and (level, index) not in accumulated
            accumulated[(level, index)] = data
        roots.append(accumulator.root() if accumulator.size % 997 == 0 else b"")
    accumulated |= {(level, index): data for level, index, data in accumulator.partial_tiles()}
    assert accumulated == expected_tiles
    assert accumulator.root() == whole.root() == Naive(leaves).mth(0, len(leaves))

    rng = random.Random(256)
    patterns: list[tuple[list[int], int]] = [
        ([1], 1500),
        ([3, 250, 1], 3000),
        ([255, 256, 257], 70000),
        ([rng.randrange(1, 5000) for _ in range(40)], 70000),
    ]
    for chunks, count in patterns:
        tiles = MemoryTiles()
        size, i = 0, 0
        while size < count:
            end = min(count, size + chunks[i % len(chunks)])
            before = dict(tiles.latest)
            tiles.reads.clear()
            builder = TreeBuilder(tiles, size)
            changed = builder.append(leaves[size:end])
            # only the right edge is read: each level's partial tile, once
            edge = [
                (level, (size >> (8 * level)) // 256, partial_width(size, level))
                for level in range(4)
                if partial_width(size, level)
            ]
            assert set(tiles.reads) <= set(edge) and len(tiles.reads) == len(set(tiles.reads))
            tiles.store(changed)
            assert changed == {k: v for k, v in tiles.latest.items() if before.get(k) != v}
            assert builder.size == end
            if end % 997 == 0 or end == count:
                assert builder.root() == tree_root(tiles, end)
                assert end == count or builder.root() == roots[end]
            size, i = end, i + 1
        assert tiles.latest == TreeBuilder(MemoryTiles(), 0).append(leaves[:count])
    assert tree_root(tiles, 70000) == whole.root()


def test_builder_appends_before_its_tiles_are_stored() -> None:
    leaves = leaves_of(1000)
    tiles = MemoryTiles()
    tiles.store(TreeBuilder(tiles, 0).append(leaves[:300]))
    builder = TreeBuilder(tiles, 300)
    merged: dict[tuple[int, int], bytes] = {}
    for start in range(300, 1000, 70):
        merged |= builder.append(leaves[start : start + 70])
        assert builder.root() == Naive(leaves).mth(0, builder.size)
    tiles.store(merged)
    assert tiles.latest == TreeBuilder(MemoryTiles(), 0).append(leaves)
    assert len(tiles.reads) == 2  # the level 0 and level 1 partial tiles at size 300
    with pytest.raises(ValueError):
        builder.append([b"short"])
    assert builder.append([]) == {}


def test_accumulator_takes_a_million_leaves() -> None:
    started = time.monotonic()
    accumulator = TreeAccumulator()
    tiles = MemoryTiles()
    leaf = leaf_hash(b"")
    for _ in range(1_000_000):
        for level, index, data in accumulator.add(leaf):
            tiles.store({(level, index): data})
    tiles.store({(level, index): data for level, index, data in accumulator.partial_tiles()})
    assert time.monotonic() - started < 30  # linear: about two seconds
    assert sorted(tiles.versions)[-3:] == [(1, 14, 256), (1, 15, 66), (2, 0, 15)]
    assert accumulator.root() == tree_root(tiles, 1_000_000)


# --- tlog-tiles paths and bundles ----------------------------------------------------------


def test_tile_paths() -> None:
    assert tile_path(0, 1234067) == "tile/0/x001/x234/067"  # tlog-tiles' own example
    assert tile_path(0, 1234) == "tile/0/x001/234"
    assert tile_path(1, 67, 9) == "tile/1/067.p/9"
    assert tile_path(3, 0) == tile_path(3, 0, 256) == "tile/3/000"
    assert tile_path(63, 999, 255) == "tile/63/999.p/255"
    assert entries_path(1234, 5) == "tile/entries/x001/234.p/5"
    assert entries_path(1000000) == "tile/entries/x001/x000/000"
    assert parse_tile_path("tile/0/x001/x234/067") == TilePath(0, 1234067, 256)
    assert parse_tile_path("tile/1/067.p/9") == TilePath(1, 67, 9)
    assert parse_tile_path("tile/entries/x001/234.p/5") == TilePath(None, 1234, 5)
    rng = random.Random(3)
    for _ in range(300):
        level = rng.choice([None, *range(64)])
        tile = TilePath(
            level, rng.choice([0, 1, 999, 1000, rng.randrange(10**12)]), rng.randrange(1, 257)
        )
        assert parse_tile_path(tile.path()) == tile
    for bad in (
        "tile/00/000",
        "tile/01/000",
        "tile/64/000",
        "tile/-1/000",
        "tile/0/x000/001",
        "tile/0/0001",
        "tile/0/01",
        "tile/0/1",
        "tile/0/x001",
        "tile/0/x001/",
        "tile/0/001/002",
        "tile/0/000.p/0",
        "tile/0/000.p/256",
        "tile/0/000.p/01",
        "tile/0/000.p/",
        "tile/0/000.p",
        "tile/0/000/",
        "tile/entries/000.p/256",
        "tile/Entries/000",
        "/tile/0/000",
        "tile/0/000\n",
        "tile/0/٠٠٠",
        "tile//000",
        "tile/0/X001/000",
        "",
    ):
        with pytest.raises(ValueError):
            parse_tile_path(bad)
    for call in (
        lambda: tile_path(64, 0),
        lambda: tile_path(0, -1),
        lambda: tile_path(0, 0, 0),
        lambda: tile_path(0, 0, 257),
        lambda: entries_path(0, 0),
    ):
        with pytest.raises(ValueError):
            call()


def test_entry_bundles() -> None:
    entries = [b"", b"a", b"\0" * 65535, bytes(range(256))]
    data = encode_bundle(entries)
    assert data[:5] == b"\x00\x00\x00\x01a" and len(data) == 8 + 1 + 65535 + 256
    assert decode_bundle(data) == entries
    assert decode_bundle(b"") == []
    assert decode_bundle(encode_bundle([b"x"] * 256)) == [b"x"] * 256
    for bad in (
        data[:-1],
        data[:1],
        b"\x00",
        b"\x00\x05abc",
        encode_bundle([b"x"] * 256) + b"\0\0",
    ):
        with pytest.raises(ValueError):
            decode_bundle(bad)
    with pytest.raises(ValueError):
        encode_bundle([b"\0" * 65536])
    with pytest.raises(ValueError):
        encode_bundle([b""] * 257)


# --- signed notes ---------------------------------------------------------------------------


def code_blocks(document: str) -> list[str]:
    """The fenced code blocks of a C2SP document, each with its final newline."""
    return re.findall(r"^```\n(.*?\n)```$", (C2SP / document).read_text(), re.M | re.S)


def indented(document: str, first_line: str) -> str:
    """The indented block of a C2SP document that starts with ``first_line``."""
    text = (C2SP / document).read_text()
    match = re.search(r"^    " + re.escape(first_line) + r"\n(?:    .*\n)*", text, re.M)
    assert match is not None
    return "".join(line[4:] + "\n" for line in match[0].splitlines())


EXAMPLE_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"


def test_signed_note_examples() -> None:
    text = (C2SP / "signed-note.md").read_text()
    assert f"\n    {EXAMPLE_VKEY}\n" in text
    quasimodo, example = code_blocks("signed-note.md")
    verifier = parse_vkey(EXAMPLE_VKEY)
    assert (verifier.name, verifier.key_id.hex(), verifier.key_type) == (
        "example.com/foo",
        "530d903a",
        NOTE_KEY_TYPE,
    )
    assert verifier.vkey() == EXAMPLE_VKEY
    assert open_note(example, [verifier]) == ("This is an example message.\n", [verifier])
    # The first example has no verifier key in the document: its form is checked.
    poem, signatures = split_note(quasimodo)
    assert poem.endswith("raggio di sole:\n\ned è subito sera.\n")  # empty lines stay text
    assert [(s.name, len(s.key_id), len(s.signature)) for s in signatures] == [
        ("quasimodo.example/salvatore", 4, 64)
    ]
    assert signatures[0].line() == quasimodo.splitlines(keepends=True)[-1]
    with pytest.raises(NoteError, match="none of the known keys"):
        open_note(quasimodo, [verifier])
    tampered = example.replace("example message", "example massage")
    with pytest.raises(NoteError, match="does not verify"):
        open_note(tampered, [verifier])


def test_unknown_keys_are_ignored_and_known_ones_must_verify() -> None:
    _, example = code_blocks("signed-note.md")
    verifier = parse_vkey(EXAMPLE_VKEY)
    text, [signature] = split_note(example)
    other = NoteSigner("example.com/foo", key(1))  # same name, another key ID
    same_id = SignatureLine("example.com/bar", verifier.key_id, signature.signature)
    lines = [other.sign(text).splitlines(keepends=True)[-1], same_id.line()]
    for extra in lines:
        assert open_note(example + extra, [verifier])[1] == [verifier]
        assert open_note(text + "\n" + extra + signature.line(), [verifier])[1] == [verifier]
    assert open_note(example + signature.line(), [verifier])[1] == [verifier]  # twice
    forged = SignatureLine(verifier.name, verifier.key_id, bytes(64)).line()
    with pytest.raises(NoteError, match="does not verify"):
        open_note(example + forged, [verifier])
    short = SignatureLine(verifier.name, verifier.key_id, b"\1").line()
    with pytest.raises(NoteError, match="does not verify"):
        open_note(example + short, [verifier])
    both = open_note(other.sign(text) + signature.line(), [verifier, other.verifier])
    assert both == (text, [other.verifier, verifier])
    with pytest.raises(NoteError):
        open_note(example, [])


def test_signing_and_verifier_keys() -> None:
    signer = NoteSigner("log.example/one", key(2))
    vkey = signer.vkey()
    verifier = parse_vkey(vkey)
    assert vkey.count("+") == 3  # this key's base64 holds a '+' too
    name, key_id, material = vkey.split("+", 2)
    public = base64.b64decode(material)
    assert (name, bytes.fromhex(key_id), public[0]) == ("log.example/one", signer.key_id, 1)
    assert signer.key_id == hashlib.sha256(b"log.example/one\n\x01" + public[1:]).digest()[:4]
    note = signer.sign("hello\n\nworld\n")
    assert note == signer.sign("hello\n\nworld\n")  # Ed25519 is deterministic
    assert note.startswith("hello\n\nworld\n\n\u2014 log.example/one ") and note.endswith("=\n")
    assert open_note(note, [verifier]) == ("hello\n\nworld\n", [verifier])
    assert verifier == signer.verifier
    for bad_text in ("no newline", "", "tab\there\n", "cr\r\n", "nul\0\n", "\ud800\n"):
        with pytest.raises(NoteError):
            signer.sign(bad_text)
    for bad_name in ("", "a b", "a+b", "a\u2003b", "a\nb", "a\x7f\x01"):
        with pytest.raises(NoteError):
            NoteSigner(bad_name, key(2))


def test_vkey_parsing_is_strict() -> None:
    name, key_id, material = EXAMPLE_VKEY.split("+", 2)
    raw = base64.b64decode(material)
    as_type = {t: base64.b64encode(bytes([t]) + raw[1:]).decode() for t in (2, 4)}
    assert parse_vkey(f"{name}+{_key_id(name, 4, raw[1:])}+{as_type[4]}").key_type == 4
    assert NoteVerifier(name, bytes.fromhex(key_id), 1, raw[1:]) == parse_vkey(EXAMPLE_VKEY)
    with pytest.raises(NoteError):
        NoteVerifier(name, bytes(4), 1, raw[1:])
    for bad in (
        "",
        EXAMPLE_VKEY + " ",
        " " + EXAMPLE_VKEY,
        EXAMPLE_VKEY + "+x",
        f"{name}+{key_id.upper()}+{material}",
        f"{name}+{key_id[:-1]}+{material}",
        f"{name}+530d903b+{material}",  # not the key ID of this name and key
        f"example.com/fo0+{key_id}+{material}",
        f"+{key_id}+{material}",
        f"a b+{key_id}+{material}",
        f"{name}+{key_id}+{material}=",
        f"{name}+{key_id}+{base64.b64encode(raw[:-1]).decode()}",
        f"{name}+{key_id}+{base64.b64encode(raw + b'0').decode()}",
        f"{name}+{key_id}+{as_type[2]}",  # ECDSA: not supported
        f"{name}+{_key_id(name, 2, raw[1:])}+{as_type[2]}",
        f"{name}+{key_id}+",
    ):
        with pytest.raises(NoteError):
            parse_vkey(bad)


def _key_id(name: str, key_type: int, public: bytes) -> str:
    return hashlib.sha256(name.encode() + b"\n" + bytes([key_type]) + public).digest()[:4].hex()


def test_split_note_is_strict() -> None:
    _, example = code_blocks("signed-note.md")
    text, [signature] = split_note(example)
    line = signature.line()
    encoded = line.split(" ")[2].strip()
    many = text + "\n" + line * MAX_SIGNATURES
    assert len(split_note(many)[1]) == MAX_SIGNATURES
    for bad in (
        text + line,  # no blank line
        text + "\n",  # no signature
        text + "\n" + line[:-1],  # no final newline
        text + "\n" + line + "\n",  # a blank line after the signatures
        text + "\n" + line.replace("\u2014", "-"),
        text + "\n" + line.replace("\u2014 ", "\u2014"),
        text + "\n" + line.replace(" ", "  ", 1),
        text + "\n" + f"\u2014 example.com/foo {encoded} \n",
        text + "\n" + f"\u2014 example.com/foo {encoded[:-2]}\n",
        text + "\n" + f"\u2014 example.com/foo {encoded.rstrip('=')}\n",
        text + "\n" + f"\u2014 example.com/foo {base64.b64encode(b'1234').decode()}\n",
        text + "\n" + "\u2014 example.com/foo\n",
        text + "\n" + f"\u2014 example+com/foo {encoded}\n",
        text + "\n" + f"\u2014  {encoded}\n",
        "tab\there\n\n" + line,
        "cr\r\n\n" + line,
        text.replace("\n", "\r\n") + "\n" + line,
        "\ud800\n\n" + line,
        text + "\n" + line * (MAX_SIGNATURES + 1),
        "",
    ):
        with pytest.raises(NoteError):
            split_note(bad)
    # the note text may hold empty lines; the last one separates the signatures
    assert split_note("a\n\n\nb\n\n" + line)[0] == "a\n\n\nb\n"
    assert parse_signature_line(line) == parse_signature_line(line[:-1]) == signature


# --- checkpoints and cosignatures ------------------------------------------------------------


def test_checkpoint_example() -> None:
    [example] = code_blocks("tlog-checkpoint.md")
    text, [signature] = split_note(example)
    checkpoint = parse_checkpoint(text)
    assert checkpoint == Checkpoint(
        "example.com/behind-the-sofa",
        20852163,
        b64("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I="),
    )
    assert checkpoint.text() == text
    assert (signature.name, len(signature.signature)) == ("example.com/behind-the-sofa", 64)


def test_checkpoint_round_trip_and_strictness() -> None:
    root = leaf_hash(b"root")
    for checkpoint in (
        Checkpoint("example.com/log", 0, EMPTY_ROOT),
        Checkpoint("example.com/log", 2**64 - 1, root, ("ext one", "ext+two")),
        Checkpoint("an origin with spaces", 7, root),  # a SHOULD, not a MUST
    ):
        assert parse_checkpoint(checkpoint.text()) == checkpoint
    good = Checkpoint("o", 12, root).text()
    root_line = base64.b64encode(root).decode()
    for bad in (
        good[:-1],
        "o\n12\n",
        f"\n12\n{root_line}\n",
        f"o\n012\n{root_line}\n",
        f"o\n+12\n{root_line}\n",
        f"o\n 12\n{root_line}\n",
        f"o\n1_2\n{root_line}\n",
        f"o\n١٢\n{root_line}\n",
        f"o\n{2**64}\n{root_line}\n",
        f"o\n-1\n{root_line}\n",
        f"o\n12\n{root_line[:-1]}\n",
        f"o\n12\n{base64.b64encode(root[:31]).decode()}\n",
        f"o\n12\n{base64.b64encode(root + b'x').decode()}\n",
        f"o\n12\n{root_line}\n\n",
        f"o\n12\n{root_line}\next\n\n",
        f"o\r\n12\n{root_line}\n",
        f"o\n12\n{root_line}\n\text\n",
    ):
        with pytest.raises(ValueError):
            parse_checkpoint(bad)
    for args in (("", 1, root), ("o", -1, root), ("o", 1, root[:31]), ("o", 1, root, ("",))):
        with pytest.raises(ValueError):
            Checkpoint(*args)


def test_cosignature_example() -> None:
    [example] = code_blocks("tlog-cosignature.md")
    text, [log, witness] = split_note(example)
    assert (
        text
        == Checkpoint(
            "example.com/behind-the-sofa",
            20852163,
            b64("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I="),
        ).text()
    )
    assert (log.name, witness.name, witness.key_id.hex()) == (
        "example.com/behind-the-sofa",
        "witness.example.com/w1",
        "8d66cf3f",
    )
    assert len(witness.signature) == 72
    timestamp = int.from_bytes(witness.signature[:8], "big")
    assert timestamp == 1679315147
    message = indented("tlog-cosignature.md", "cosignature/v1")
    assert message == f"cosignature/v1\ntime 1679315147\n{text}"
    assert cosignature_message(text, timestamp) == message.encode()


def test_cosignature_round_trip_and_tampering() -> None:
    log = NoteSigner("log.example/one", key(3))
    text = Checkpoint("log.example/one", 5, leaf_hash(b"five")).text()
    note = log.sign(text)
    witness = CosignatureSigner("witness.example/w", key(4))
    line = witness.cosign(text, 1700000000)
    verifier = parse_vkey(witness.vkey())
    assert verifier.key_type == COSIGNATURE_KEY_TYPE and verifier == witness.verifier
    assert witness.key_id != NoteSigner("witness.example/w", key(4)).key_id
    assert line.endswith("\n") and len(parse_signature_line(line).signature) == 72
    assert verify_cosignature(line, text, verifier) == 1700000000
    cosigned = note + line
    assert open_note(cosigned, [log.verifier, verifier]) == (text, [log.verifier, verifier])
    assert open_note(cosigned, [verifier])[1] == [verifier]
    _, [_, signature] = split_note(cosigned)
    assert verify_cosignature(signature, text, verifier) == 1700000000
    assert verify_cosignature(witness.cosign(text, 0), text, verifier) == 0
    assert verify_cosignature(witness.cosign(text, 2**63 - 1), text, verifier) == 2**63 - 1

    later = SignatureLine(signature.name, signature.key_id, flipped(signature.signature, 7))
    too_late = SignatureLine(signature.name, signature.key_id, b"\x80" + signature.signature[1:])
    other = Checkpoint("log.example/one", 6, leaf_hash(b"five")).text()
    for bad_line, bad_text, bad_verifier in (
        (line, other, verifier),
        (line, text + "ext\n", verifier),
        (later, text, verifier),
        (too_late, text, verifier),
        (line, text, log.verifier),  # a note key, not a cosignature key
        (line, text, CosignatureSigner("witness.example/x", key(4)).verifier),
        (line, text, CosignatureSigner("witness.example/w", key(5)).verifier),
        (SignatureLine(signature.name, signature.key_id, signature.signature[:71]), text, verifier),
        (line.replace("\u2014", "-"), text, verifier),
    ):
        with pytest.raises(NoteError):
            verify_cosignature(bad_line, bad_text, bad_verifier)
    with pytest.raises(NoteError, match="does not verify"):
        open_note(note + later.line(), [log.verifier, verifier])
    for bad_time in (-1, 2**63):
        with pytest.raises(NoteError):
            witness.cosign(text, bad_time)
    with pytest.raises(NoteError):
        witness.cosign(text[:-1], 1)


# --- tlog-proof --------------------------------------------------------------------------------


def test_tlog_proof_example() -> None:
    """The document's example elides its signatures ("hI2DJw[...]1roloI="), which no parser
    may accept; with those lines signed for real, it parses and formats back unchanged."""
    [example] = code_blocks("tlog-proof.md")
    with pytest.raises(NoteError):
        parse_proof(example)
    head, checkpoint = example.split("\n\n", 1)
    body = checkpoint.split("\n\n")[0] + "\n"
    names = [line.split(" ")[1] for line in checkpoint.split("\n\n")[1].splitlines()]
    assert names == [
        "example.com/fancylog",
        "witness1.example",
        "witness2.example",
        "witness3.example",
    ]
    note = NoteSigner(names[0], key(10)).sign(body)
    note += "".join(
        CosignatureSigner(n, key(11 + i)).cosign(body, 1) for i, n in enumerate(names[1:])
    )
    text = head + "\n\n" + note
    proof = parse_proof(text)
    lines = head.splitlines()
    assert proof == TlogProof(73894, tuple(b64(h) for h in lines[3:]), note, b64(lines[1][6:]))
    assert proof.extra is not None and proof.extra.startswith(b"age-v1.2.1-darwin-arm64.tar.gz")
    assert len(proof.hashes) == 5
    assert parse_checkpoint(split_note(proof.checkpoint)[0]) == Checkpoint(
        "example.com/fancylog", 109482, b64("sFodV/vSp5O8n9a8QpW6PRY97tfOSW5bsc2Xl/EQi08=")
    )
    assert format_proof(proof) == text


def test_tlog_proof_end_to_end_and_strictness() -> None:
    leaves = leaves_of(1000)
    tiles = built(leaves, [])
    signer = NoteSigner("log.example/one", key(20))
    root = tree_root(tiles, 1000)
    note = signer.sign(Checkpoint(signer.name, 1000, root).text())
    for index, extra in ((0, None), (617, b""), (999, b"\x00extra")):
        made = TlogProof(index, tuple(inclusion_proof(tiles, 1000, index)), note, extra)
        text = format_proof(made)
        proof = parse_proof(text)
        assert proof == made and format_proof(proof) == text
        checkpoint = parse_checkpoint(open_note(proof.checkpoint, [signer.verifier])[0])
        assert verify_inclusion(leaves[index], proof.index, checkpoint.size, proof.hashes, root)
    single = built(leaves[:1], [])
    one = signer.sign(Checkpoint(signer.name, 1, tree_root(single, 1)).text())
    assert parse_proof(f"c2sp.org/tlog-proof@v1\nindex 0\n\n{one}").hashes == ()

    hashes = inclusion_proof(tiles, 1000, 617)
    good = format_proof(TlogProof(617, tuple(hashes), note))
    head = good.partition("\n")[0]
    hash_line = base64.b64encode(hashes[0]).decode()
    for bad in (
        good.replace("c2sp.org/tlog-proof@v1", "c2sp.org/tlog-proof@v2"),
        good.replace("index 617", "index 0617"),
        good.replace("index 617", "index  617"),
        good.replace("index 617", "index -1"),
        good.replace("index 617", "Index 617"),
        good.replace("index 617\n", ""),
        good.replace("index 617\n", "index 617\nextra AA==\n"),
        good.replace("\nindex", "\nextra AA=\nindex"),
        good.replace(hash_line, hash_line[:-1]),
        good.replace(hash_line, hash_line.replace("=", "A")),
        head + "\nindex 617\n" + "\n".join([hash_line] * 65) + "\n\n" + note,
        head + "\nindex 617\n" + base64.b64encode(b"\0" * 31).decode() + "\n\n" + note,
        good.split("\n\n")[0] + "\n",
        good.split("\n\n")[0] + "\n\n",
        good.split("\n\n")[0] + "\n\nnot a note\n",
        good.split("\n\n")[0] + "\n\n" + signer.sign("not\na checkpoint\n"),
        good[:-1],
        "c2sp.org/tlog-proof@v1",
        "",
    ):
        with pytest.raises(ValueError):
            parse_proof(bad)
    for args in ((-1, (), note), (0, (b"\0" * 31,), note), (0, (leaves[0],) * 65, note)):
        with pytest.raises(ValueError):
            TlogProof(*args)
