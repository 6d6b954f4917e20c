"""A ledger entry: what the log commits to for one execution, made from its receipt.

An entry is the JCS bytes of ``{"v": 1, "exec_id", "statement_sha256", "keyid", "sig"}``: the
receipt's statement hash (the ``receipt`` of the /execute answer) and the envelope's signature.
The statement itself stays out: entries are public, statements carry tenants and nonces.
Anyone holding the receipt envelope rebuilds its entry and so its leaf hash.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from openexec.signing import canonical_json, sha256_hex

ENTRY_VERSION = 1


@dataclass(frozen=True)
class Entry:
    exec_id: str
    statement_sha256: str
    keyid: str
    sig: str

    def bytes(self) -> bytes:
        return canonical_json(
            {
                "v": ENTRY_VERSION,
                "exec_id": self.exec_id,
                "statement_sha256": self.statement_sha256,
                "keyid": self.keyid,
                "sig": self.sig,
            }
        )


def entry_of_envelope(envelope: Any) -> Entry:
    """The entry of a receipt envelope (a parsed DSSE object). Raises ValueError for anything
    that is not a one-signature envelope over an OpenExec receipt statement."""
    try:
        body = base64.b64decode(envelope["payload"], validate=True)
        signature = envelope["signatures"][0]
        statement = json.loads(body)
        exec_id = statement["predicate"]["exec_id"]
        keyid, sig = signature["keyid"], signature["sig"]
    except (KeyError, IndexError, TypeError, ValueError, RecursionError, binascii.Error) as exc:
        raise ValueError(f"not a receipt envelope: {exc!r}") from None
    if not all(isinstance(value, str) for value in (exec_id, keyid, sig)):
        raise ValueError("not a receipt envelope: exec_id, keyid and sig must be strings")
    return Entry(exec_id, sha256_hex(body), keyid, sig)


def parse_entry(data: bytes) -> Entry:
    """An entry as stored in an entry bundle; ValueError unless it is exactly the canonical
    bytes of a version-1 entry."""
    try:
        value = json.loads(data)
        entry = Entry(value["exec_id"], value["statement_sha256"], value["keyid"], value["sig"])
        valid = value["v"] == ENTRY_VERSION and len(value) == 5
    except (KeyError, TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"not a ledger entry: {exc!r}") from None
    if not valid or entry.bytes() != data:
        raise ValueError("not a canonical version-1 ledger entry")
    return entry


def receipt_bundle(envelopes: list[str | None]) -> bytes:
    """A receipt bundle: the stored receipt envelopes (compact JSON) of consecutive entries,
    one a line, ``null`` for one the store lost."""
    return "".join(f"{envelope or 'null'}\n" for envelope in envelopes).encode()
