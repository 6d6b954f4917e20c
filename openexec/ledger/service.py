"""The ledger as the service runs it: opened at startup, integrated in the background, and
read by the ``/ledger/`` routes.

What the routes serve is public by design: tiles hold hashes and entries (statement hashes
and signatures, no payloads), checkpoints are signed notes, and the receipt bundles hold the
receipt envelopes auditors check the entries against.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from openexec.ledger.checkpoint import parse_checkpoint
from openexec.ledger.entries import receipt_bundle
from openexec.ledger.integrator import Integrator, IntegratorLock, StoredTiles
from openexec.ledger.keys import load_ledger_signer, witness_verifiers
from openexec.ledger.merkle import inclusion_proof
from openexec.ledger.note import NoteError, NoteSigner, NoteVerifier, split_note, verify_cosignature
from openexec.ledger.process import IntegratorProcess
from openexec.ledger.proof import TlogProof, format_proof
from openexec.ledger.tiles import TILE_WIDTH
from openexec.settings import Settings
from openexec.store import Store
from openexec.store.ledger import LedgerStore
from openexec.store.sqlite_locks import thread_write_lock

# How far behind the current checkpoint a cosigned one may be (in entries) and still be kept.
RECENT_ENTRIES = 1_000_000


class LedgerPending(LookupError):
    """The execution exists but no checkpoint covers it yet."""


class CosignatureRefused(ValueError):
    """A cosignature the ledger does not keep; ``code`` is the problem code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Cosigned:
    size: int
    witnesses: tuple[str, ...]


class Ledger:
    """The service's ledger: its store, key, witnesses and integrator."""

    def __init__(
        self,
        store: LedgerStore,
        signer: NoteSigner,
        witnesses: tuple[NoteVerifier, ...],
        integrator: Integrator,
        runner: Integrator | IntegratorProcess,
    ) -> None:
        """``integrator`` appends in this process when called; ``runner`` is what runs it
        from startup to shutdown: that integrator's thread, or a child process."""
        self.store = store
        self.signer = signer
        self.witnesses = witnesses
        self.integrator = integrator
        self.runner = runner

    @property
    def vkey(self) -> str:
        return self.signer.vkey()

    def start(self) -> None:
        self.runner.start()

    def stop(self) -> None:
        self.runner.stop()

    def checkpoint(self) -> str:
        """The latest signed checkpoint with the cosignatures it has."""
        latest = self.store.latest_checkpoint()
        if latest is None:
            raise LookupError("no checkpoint signed yet")
        size, note = latest
        return note + "".join(self.store.cosignatures(size))

    def tile(self, path: str) -> bytes | None:
        return self.store.tile(path)

    def proof(self, exec_id: str) -> str | None:
        """The tlog-proof of an execution against the latest checkpoint; None for an unknown
        execution; LedgerPending until a checkpoint covers it."""
        found, index = self.store.ledger_index(exec_id)
        if not found:
            return None
        latest = self.store.latest_checkpoint()
        if index is None or latest is None or latest[0] <= index:
            raise LedgerPending(exec_id)
        size, note = latest
        hashes = inclusion_proof(StoredTiles(self.store.tile), size, index)
        cosigned = note + "".join(self.store.cosignatures(size))
        return format_proof(TlogProof(index, tuple(hashes), cosigned))

    def receipts(self, index: int, width: int) -> bytes | None:
        """The receipt bundle ``index`` of ``width`` envelopes (an OpenExec extension beside
        the entry bundles): one compact JSON envelope a line, as the store holds them now, so
        an auditor sees a changed row. None unless all of them are logged."""
        start = index * TILE_WIDTH
        rows = self.store.logged_receipts(start, start + width)
        if len(rows) != width:
            return None
        return receipt_bundle([row.receipt_envelope for row in rows])

    def add_cosignatures(self, note: str) -> Cosigned:
        """Keep the cosignatures of known witnesses on a checkpoint this ledger signed.
        ``note`` is the checkpoint with the witness's signature lines (as a witness returns
        it; the log's own signature may be among them)."""
        try:
            text, signatures = split_note(note)
            checkpoint = parse_checkpoint(text)
        except (NoteError, ValueError) as exc:
            raise CosignatureRefused(
                "cosignature_malformed", f"Not a cosigned checkpoint: {exc}"
            ) from None
        latest = self.store.latest_checkpoint()
        recent = latest is not None and latest[0] - RECENT_ENTRIES <= checkpoint.size <= latest[0]
        stored = self.store.checkpoint(checkpoint.size) if recent else None
        if stored is None or split_note(stored)[0] != text:
            raise CosignatureRefused("checkpoint_unknown", "This ledger signed no such checkpoint.")
        accepted = []
        for signature in signatures:
            for witness in self.witnesses:
                if signature.name != witness.name or signature.key_id != witness.key_id:
                    continue
                try:
                    timestamp = verify_cosignature(signature, text, witness)
                except NoteError as exc:
                    raise CosignatureRefused(
                        "cosignature_invalid",
                        f"The cosignature of {witness.name!r} does not verify: {exc}",
                    ) from None
                self.store.add_cosignature(
                    checkpoint.size, witness.name, signature.line(), timestamp
                )
                accepted.append(witness.name)
        if not accepted:
            raise CosignatureRefused(
                "cosignature_invalid",
                "No signature of a witness listed in OPENEXEC_LEDGER_WITNESSES.",
            )
        return Cosigned(checkpoint.size, tuple(accepted))


def open_ledger(settings: Settings, store: Store, now: Callable[[], str]) -> Ledger | None:
    """The ledger, its key checked against the store's; None when ``OPENEXEC_LEDGER=off``.
    An empty ledger gets its state row and a checkpoint of size 0."""
    if not settings.ledger:
        return None
    ledger_store = LedgerStore(store.engine, thread_write_lock(settings))
    signer = load_ledger_signer(settings, ledger_store.head())
    witnesses = witness_verifiers(settings)
    head = ledger_store.open_ledger(settings.ledger_origin, signer.vkey())
    lock = IntegratorLock(ledger_store, settings.sqlite_path)
    integrator = Integrator(ledger_store, signer, settings.ledger_interval_s, lock, now)
    if head.size == 0 and ledger_store.latest_checkpoint() is None:
        integrator.sign(0)
    runner = IntegratorProcess(settings) if settings.ledger_integrator == "process" else integrator
    return Ledger(ledger_store, signer, witnesses, integrator, runner)
