"""The ledger key: the Ed25519 key checkpoints are signed with, and the witnesses' keys.

Like the receipt key it is made on first start when no path is configured, but never while
the log has entries: the checkpoints already served, and cosigned, were signed by the key
that is missing, and a new one would start a second, unrelated log under the same origin.
"""

from __future__ import annotations

from openexec.keyfiles import create_key_file, read_private_key
from openexec.ledger.note import (
    COSIGNATURE_KEY_TYPE,
    NoteError,
    NoteSigner,
    NoteVerifier,
    parse_vkey,
)
from openexec.settings import ConfigError, Settings
from openexec.store.ledger import LedgerHead


def load_ledger_signer(settings: Settings, head: LedgerHead | None) -> NoteSigner:
    """The configured ledger key, or one made beside the receipt key for an empty log.
    ``head`` is the ledger's state row, if the store has one."""
    path = settings.ledger_key_file
    logged = head is not None and head.size > 0
    if settings.ledger_key_path is None and not path.exists():
        if logged:
            raise ConfigError(
                "OPENEXEC_LEDGER_KEY",
                f"the ledger holds {head.size} entries signed by {head.vkey}, but the ledger "
                f"key {str(path)!r} is missing: restore it from the backup taken with the "
                "database (a new key would start another log under the same origin)",
            )
        create_key_file(path)
    signer = NoteSigner(
        settings.ledger_origin, read_private_key(path, "OPENEXEC_LEDGER_KEY", "ledger key")
    )
    if logged and head.vkey != signer.vkey():
        variable = (
            "OPENEXEC_LEDGER_ORIGIN"
            if head.origin != settings.ledger_origin
            else "OPENEXEC_LEDGER_KEY"
        )
        raise ConfigError(
            variable,
            f"the ledger holds {head.size} entries whose checkpoints are signed by "
            f"{head.vkey}, not by this service's {signer.vkey()}: restore that key and "
            "origin (a log never changes either)",
        )
    return signer


def witness_verifiers(settings: Settings) -> tuple[NoteVerifier, ...]:
    """The witnesses ``OPENEXEC_LEDGER_WITNESSES`` lists, parsed at startup."""
    verifiers = []
    for text in settings.ledger_witnesses:
        try:
            verifier = parse_vkey(text)
        except NoteError as exc:
            raise ConfigError("OPENEXEC_LEDGER_WITNESSES", f"{text!r}: {exc}") from None
        if verifier.key_type != COSIGNATURE_KEY_TYPE:
            raise ConfigError(
                "OPENEXEC_LEDGER_WITNESSES",
                f"{text!r} is not a cosignature (type 0x04) verifier key",
            )
        verifiers.append(verifier)
    return tuple(verifiers)
