"""``openexec ledger audit``: check a whole log against its signed checkpoint, and against
what the auditor saw last time.

The auditor trusts only the verifier key it is given and the receipt keys. It checks:

1. the checkpoint's signature and origin;
2. every entry: canonical, and its receipt envelope (from the receipt bundles) signed by a
   receipt key, over the statement whose hash the entry holds, with the entry's signature;
3. every tile: the hashes it recomputes from the entries, level by level;
4. the root: the checkpoint's;
5. its own last run (``--state``): the log it saw then is a prefix of this one. The state
   keeps that run's leaf hashes beside it, so a log rebuilt without an entry (a split view)
   is named by the first index that differs, not only by a root that does not match.

The first problem found stops the audit with its index.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_public_key,
)

from openexec.ledger.checkpoint import Checkpoint, parse_checkpoint
from openexec.ledger.entries import Entry, entry_of_envelope, parse_entry
from openexec.ledger.merkle import HASH_SIZE, TreeAccumulator, leaf_hash
from openexec.ledger.note import NoteError, NoteVerifier, open_note
from openexec.ledger.sources import LogSource, SourceError, SourceTiles
from openexec.ledger.tiles import TILE_WIDTH, tile_path
from openexec.receipts import RECEIPT_TYPE
from openexec.signing import EnvelopeError, open_envelope

SIGNATURE_PROCESSES = max(1, min(4, os.cpu_count() or 1))
BUNDLES_PER_TASK = 16  # entry bundles a signature-checking process takes at a time


class AuditFailure(Exception):
    """The log is not what its checkpoint says; ``index`` is the first bad entry, if any."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message if index is None else f"index {index}: {message}")
        self.index = index


@dataclass(frozen=True)
class AuditReport:
    checkpoint: Checkpoint
    previous_size: int | None


def verified_checkpoint(source: LogSource, vkey: NoteVerifier) -> tuple[str, Checkpoint]:
    """The source's checkpoint note, its log signature checked, and what it says."""
    note = source.read("checkpoint")
    if note is None:
        raise AuditFailure("the log has no checkpoint")
    try:
        text, _ = open_note(note.decode("utf-8"), [vkey])
        checkpoint = parse_checkpoint(text)
    except (NoteError, ValueError, UnicodeDecodeError) as exc:
        raise AuditFailure(f"the checkpoint does not verify against the key: {exc}") from None
    if checkpoint.origin != vkey.name:
        raise AuditFailure(f"the checkpoint's origin is {checkpoint.origin!r}, not {vkey.name!r}")
    return note.decode("utf-8"), checkpoint


def receipt_keys_of(source: LogSource) -> tuple[Ed25519PublicKey, ...]:
    """The receipt keys the log lists (``receipt-keys``): a convenience for auditors that
    hold no keys of their own; ``--receipt-key`` pins them instead."""
    data = source.read("receipt-keys")
    if data is None:
        raise AuditFailure("the log lists no receipt keys; give --receipt-key")
    try:
        return tuple(_public_key(item["public_key_pem"].encode()) for item in json.loads(data))
    except (ValueError, KeyError, TypeError) as exc:
        raise AuditFailure(f"the receipt keys are unreadable: {exc}") from None


def audit(
    source: LogSource,
    vkey: NoteVerifier,
    receipt_keys: Sequence[Ed25519PublicKey],
    state: Path | None = None,
) -> AuditReport:
    """Audit the log; raise AuditFailure at the first problem; update ``state`` on success."""
    _, checkpoint = verified_checkpoint(source, vkey)
    previous = _read_state(state, vkey) if state is not None else None
    if previous is not None and previous.size > checkpoint.size:
        raise AuditFailure(
            f"the log shrank: {checkpoint.size} entries, {previous.size} at the last audit"
        )
    tiles = SourceTiles(source)
    accumulator = TreeAccumulator()
    leaves = bytearray()
    prefix_root = None if previous is None or previous.size else previous.root
    logged: set[str] = set()
    for checked in _checked_bundles(tiles, checkpoint.size, tuple(receipt_keys)):
        for start, entries, exec_ids in checked.bundles:
            for offset, (entry, exec_id) in enumerate(zip(entries, exec_ids, strict=True)):
                index = start + offset
                if exec_id in logged:
                    raise AuditFailure(f"logs execution {exec_id} a second time", index)
                logged.add(exec_id)
                leaf = leaf_hash(entry)
                if previous is not None and index < previous.size:
                    seen = previous.leaves[index * HASH_SIZE : (index + 1) * HASH_SIZE]
                    if seen != leaf:
                        raise AuditFailure(
                            "differs from the entry the last audit saw (split view)", index
                        )
                for level, tile_index, data in accumulator.add(leaf):
                    _compare_tile(tiles, level, tile_index, TILE_WIDTH, data)
                leaves += leaf
                if previous is not None and accumulator.size == previous.size:
                    prefix_root = accumulator.root()
        if checked.failure is not None:
            _compare_open_tile(tiles, accumulator)  # a bad hash there comes first
            raise checked.failure
    for level, tile_index, data in accumulator.partial_tiles():
        _compare_tile(tiles, level, tile_index, len(data) // HASH_SIZE, data)
    if accumulator.root() != checkpoint.root:
        raise AuditFailure(f"the entries' root is not the checkpoint's (size {checkpoint.size})")
    if previous is not None and prefix_root != previous.root:
        raise AuditFailure("the log's first entries do not have the root the last audit saw")
    if state is not None:
        _write_state(state, checkpoint, bytes(leaves))
    return AuditReport(checkpoint, None if previous is None else previous.size)


def _compare_tile(tiles: SourceTiles, level: int, index: int, width: int, computed: bytes) -> None:
    try:
        served = tiles.read_tile(level, index, width)
    except SourceError as exc:
        raise AuditFailure(str(exc), _first_leaf(level, index, 0)) from None
    if served != computed:
        position = next(
            i
            for i in range(width)
            if served[i * 32 : i * 32 + 32] != computed[i * 32 : i * 32 + 32]
        )
        raise AuditFailure(
            f"tile {tile_path(level, index, width)} differs from the hashes of the entries",
            _first_leaf(level, index, position),
        )


def _compare_open_tile(tiles: SourceTiles, accumulator: TreeAccumulator) -> None:
    """Compare the level-0 tile being filled, so far, with the log's, if it serves one."""
    for level, index, data in accumulator.partial_tiles():
        if level == 0:
            try:
                tiles.read_tile(0, index, len(data) // HASH_SIZE)
            except SourceError:
                return  # no tile of that width: nothing to compare it with
            _compare_tile(tiles, 0, index, len(data) // HASH_SIZE, data)


def _first_leaf(level: int, index: int, position: int) -> int:
    return (index * TILE_WIDTH + position) << (8 * level)


@dataclass
class _Checked:
    """A group of bundles as checked: the entries that passed, with their exec_ids, in index
    order, then the first failure (or None). Whatever precedes a failure is still processed,
    so the failure reported is the one at the lowest index."""

    bundles: list[tuple[int, list[bytes], list[str]]]
    failure: AuditFailure | None


def _checked_bundles(
    tiles: SourceTiles, size: int, keys: tuple[Ed25519PublicKey, ...]
) -> Iterator[_Checked]:
    """Each group of entry bundles, checked. Signatures take most of an audit's time, so
    groups are checked in other processes while this one reads ahead; results come back in
    order."""
    raw_keys = tuple(key.public_bytes(Encoding.Raw, PublicFormat.Raw) for key in keys)
    groups = _groups(size)
    if size <= BUNDLES_PER_TASK * TILE_WIDTH:
        for group in groups:
            yield _check_group(*_read_group(tiles, group), raw_keys)
        return
    with ProcessPoolExecutor(SIGNATURE_PROCESSES) as pool:
        window: list[Any] = []
        for group in groups:
            window.append(pool.submit(_check_group, *_read_group(tiles, group), raw_keys))
            if len(window) > 2 * SIGNATURE_PROCESSES:
                yield window.pop(0).result()
        for pending in window:
            yield pending.result()


def _groups(size: int) -> Iterator[list[tuple[int, int]]]:
    """The (first index, width) of each entry bundle of a tree of ``size``, in groups, made
    as they are needed: a signed size is not a reason to allocate anything."""
    group: list[tuple[int, int]] = []
    for start in range(0, size, TILE_WIDTH):
        group.append((start, min(TILE_WIDTH, size - start)))
        if len(group) == BUNDLES_PER_TASK:
            yield group
            group = []
    if group:
        yield group


def _read_group(
    tiles: SourceTiles, group: list[tuple[int, int]]
) -> tuple[list[tuple[int, list[bytes], list[bytes]]], AuditFailure | None]:
    """The bundles of a group that could be read, and why the next one could not."""
    read = []
    for start, width in group:
        try:
            entries = tiles.entries(start // TILE_WIDTH, width)
            receipts = tiles.receipts(start // TILE_WIDTH, width)
        except SourceError as exc:
            return read, AuditFailure(str(exc), start)
        read.append((start, entries, receipts))
    return read, None


def _check_group(
    read: list[tuple[int, list[bytes], list[bytes]]],
    unreadable: AuditFailure | None,
    raw_keys: tuple[bytes, ...],
) -> _Checked:
    """Check the entries and receipts of some bundles. The failure is returned, not raised,
    so that it crosses a process boundary as it is (keys cross as raw bytes)."""
    keys = tuple(Ed25519PublicKey.from_public_bytes(raw) for raw in raw_keys)
    checked: list[tuple[int, list[bytes], list[str]]] = []
    for start, entries, receipts in read:
        exec_ids: list[str] = []
        for offset, data in enumerate(entries):
            receipt = receipts[offset] if offset < len(receipts) else None
            problem, exec_id = _entry_problem(data, receipt, keys)
            if problem is not None:
                checked.append((start, entries[:offset], exec_ids))
                return _Checked(checked, AuditFailure(problem, start + offset))
            exec_ids.append(exec_id)
        checked.append((start, entries, exec_ids))
    return _Checked(checked, unreadable)


def _entry_problem(
    data: bytes, receipt: bytes | None, keys: tuple[Ed25519PublicKey, ...]
) -> tuple[str | None, str]:
    """Why an entry fails its receipt (or None), and the execution it logs."""
    try:
        entry = parse_entry(data)
    except (ValueError, RecursionError) as exc:
        return f"not a ledger entry: {exc!r}"[:300], ""
    if receipt is None:
        return "its receipt is missing from the receipt bundle", entry.exec_id
    try:
        envelope = json.loads(receipt)
        open_envelope(envelope, RECEIPT_TYPE, keys)
        logged: Entry = entry_of_envelope(envelope)
    except EnvelopeError as exc:
        return f"its receipt does not verify: {exc.reason}", entry.exec_id
    except (ValueError, RecursionError) as exc:
        return f"its receipt is unreadable: {exc!r}"[:300], entry.exec_id
    if logged != entry:
        return "its receipt is not the one the entry logged", entry.exec_id
    return None, entry.exec_id


@dataclass(frozen=True)
class _State:
    size: int
    root: bytes
    leaves: bytes


def _read_state(path: Path, vkey: NoteVerifier) -> _State | None:
    """The last run's size, root and leaf hashes (``FILE`` and ``FILE.leaves``); None before
    the first run."""
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
        leaves = path.with_name(path.name + ".leaves").read_bytes()
        origin, size, root = saved["origin"], int(saved["size"]), base64.b64decode(saved["root"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AuditFailure(f"the state file {str(path)!r} is unreadable: {exc!r}") from None
    if origin != vkey.name:
        raise AuditFailure(f"the state file is of the log {origin!r}")
    if len(leaves) < size * HASH_SIZE:  # longer after a run stopped between the two writes
        raise AuditFailure(f"the state file {str(path)!r} is inconsistent")
    return _State(size, root, leaves[: size * HASH_SIZE])


def _write_state(path: Path, checkpoint: Checkpoint, leaves: bytes) -> None:
    """Replace the state atomically: the leaves first, then the JSON that names their size."""
    leaves_path = path.with_name(path.name + ".leaves")
    for target, data in (
        (leaves_path, leaves),
        (
            path,
            json.dumps(
                {
                    "origin": checkpoint.origin,
                    "size": checkpoint.size,
                    "root": base64.b64encode(checkpoint.root).decode(),
                }
            ).encode(),
        ),
    ):
        temporary = target.with_name(target.name + ".tmp")
        temporary.write_bytes(data)
        os.replace(temporary, target)


def _public_key(pem: bytes) -> Ed25519PublicKey:
    key = load_pem_public_key(pem)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 key")
    return key
