"""The ledger away from the service: ``export`` writes it as static files, ``prove`` checks
one receipt's inclusion with nothing but the receipt, its proof and the verifier key."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openexec.ledger.audit import AuditFailure, verified_checkpoint
from openexec.ledger.entries import entry_of_envelope, receipt_bundle
from openexec.ledger.merkle import leaf_hash, verify_inclusion
from openexec.ledger.note import NoteVerifier
from openexec.ledger.proof import parse_proof
from openexec.ledger.tiles import TILE_WIDTH, entries_path
from openexec.store.ledger import LedgerStore


@dataclass(frozen=True)
class Exported:
    size: int
    files: int


def export(
    store: LedgerStore, service_vkey: str, receipt_keys: list[dict[str, str]], directory: Path
) -> Exported:
    """Write the latest checkpoint and everything it covers under ``directory``, in the
    layout ``/ledger/`` serves (openexec.ledger.sources), so a static file server or bucket
    can serve it and ``audit DIR`` can read it. Tiles are written before the checkpoint
    that needs them."""
    latest = store.latest_checkpoint()
    if latest is None:
        raise LookupError("the ledger has no checkpoint yet")
    size, note = latest
    files = 0
    for path, data in store.tiles():
        _write(directory / path, data)
        files += 1
    for index in range(0, size, TILE_WIDTH):
        width = min(TILE_WIDTH, size - index)
        rows = store.logged_receipts(index, index + width)
        name = entries_path(index // TILE_WIDTH, width).removeprefix("tile/entries/")
        _write(directory / "receipts" / name, receipt_bundle([r.receipt_envelope for r in rows]))
        files += 1
    _write(directory / "receipt-keys", json.dumps(receipt_keys).encode())
    _write(directory / "key", (service_vkey + "\n").encode())
    _write(directory / "checkpoint", (note + "".join(store.cosignatures(size))).encode())
    return Exported(size, files + 3)


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


@dataclass(frozen=True)
class Proven:
    exec_id: str
    index: int
    size: int


class _OneCheckpoint:
    """A source holding only a proof's checkpoint, so the audit's checkpoint check serves."""

    def __init__(self, note: str) -> None:
        self._note = note.encode()

    def read(self, path: str, limit: int = 0) -> bytes | None:
        return self._note if path == "checkpoint" else None


def prove(receipt: Any, proof_text: str, vkey: NoteVerifier) -> Proven:
    """Check that a receipt (its envelope, or an /execute answer holding one) is in the log
    at the proof's index under a checkpoint the verifier key signed. Raises AuditFailure."""
    envelope = receipt.get("receipt_envelope", receipt) if isinstance(receipt, dict) else receipt
    try:
        entry = entry_of_envelope(envelope)
        proof = parse_proof(proof_text)
    except ValueError as exc:
        raise AuditFailure(str(exc)) from None
    _, checkpoint = verified_checkpoint(_OneCheckpoint(proof.checkpoint), vkey)
    if not verify_inclusion(
        leaf_hash(entry.bytes()), proof.index, checkpoint.size, proof.hashes, checkpoint.root
    ):
        raise AuditFailure("the receipt is not in the log at this index", proof.index)
    return Proven(entry.exec_id, proof.index, checkpoint.size)
