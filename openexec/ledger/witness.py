"""``openexec ledger witness``: a witness that comes to the log (the service makes no
outbound calls). Each run it reads the log's checkpoint, checks that it extends the last
one it cosigned by a consistency proof it computes from the log's tiles, cosigns it
(C2SP tlog-cosignature), posts the cosignature, and only then remembers the checkpoint.

Its state is the last checkpoint it cosigned: it never cosigns one that does not extend
it, so two auditors shown two histories cannot both get its cosignature.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from openexec.ledger.audit import AuditFailure, verified_checkpoint
from openexec.ledger.checkpoint import Checkpoint, parse_checkpoint
from openexec.ledger.merkle import consistency_proof, verify_consistency
from openexec.ledger.note import CosignatureSigner, NoteVerifier
from openexec.ledger.sources import SourceTiles, UrlSource


@dataclass(frozen=True)
class Witnessed:
    size: int
    previous_size: int | None


def witness(
    log: UrlSource, vkey: NoteVerifier, signer: CosignatureSigner, state: Path
) -> Witnessed:
    """One round: check, cosign and post the log's checkpoint. Raises AuditFailure when the
    log's checkpoint does not extend the last one this witness cosigned."""
    _, checkpoint = verified_checkpoint(log, vkey)
    previous = _read_state(state)
    if previous is not None:
        if previous.origin != checkpoint.origin:
            raise AuditFailure(f"the state is of the log {previous.origin!r}")
        if checkpoint.size < previous.size:
            raise AuditFailure(
                f"the log's checkpoint is of size {checkpoint.size}, smaller than the "
                f"{previous.size} this witness cosigned"
            )
        if not _extends(log, previous, checkpoint):
            raise AuditFailure(
                f"the checkpoint of size {checkpoint.size} is not consistent with the one of "
                f"size {previous.size} this witness cosigned (a split view)"
            )
    text = checkpoint.text()
    line = signer.cosign(text, int(time.time()))
    log.post("cosignatures", (text + "\n" + line).encode(), "text/plain")
    _write_state(state, checkpoint)
    return Witnessed(checkpoint.size, None if previous is None else previous.size)


def _extends(log: UrlSource, old: Checkpoint, new: Checkpoint) -> bool:
    if old.size == new.size:
        return old.root == new.root
    if old.size == 0:
        return True
    proof = consistency_proof(SourceTiles(log), old.size, new.size)
    return verify_consistency(old.size, new.size, proof, old.root, new.root)


def _read_state(path: Path) -> Checkpoint | None:
    try:
        return parse_checkpoint(json.loads(path.read_text())["checkpoint"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AuditFailure(f"the witness state {str(path)!r} is unreadable: {exc}") from None


def _write_state(path: Path, checkpoint: Checkpoint) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps({"checkpoint": checkpoint.text()}))
    os.replace(temporary, path)
