"""``openexec ledger ...``: audit, prove, export, witness, and print verifier keys.

Exit status: 0 the check passed (or the command did its work); 1 the log or the receipt
failed a check, with the first bad index named; 2 anything the caller must fix.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from openexec.keyfiles import read_private_key
from openexec.ledger.audit import AuditFailure, audit, receipt_keys_of
from openexec.ledger.note import (
    NOTE_KEY_TYPE,
    CosignatureSigner,
    NoteError,
    NoteSigner,
    NoteVerifier,
    parse_vkey,
)
from openexec.ledger.offline import export, prove
from openexec.ledger.sources import SourceError, UrlSource, open_source
from openexec.ledger.witness import witness
from openexec.receipts import public_key_pem
from openexec.settings import ConfigError, Settings, parse_public_keys
from openexec.signing import key_id
from openexec.store.connection import open_engine
from openexec.store.ledger import LedgerStore


class CommandError(Exception):
    """A problem the caller must fix; reported on stderr with exit status 2."""


def add_ledger_commands(commands: Any) -> None:
    ledger = commands.add_parser("ledger", help="audit, prove, export and witness the ledger")
    sub = ledger.add_subparsers(dest="ledger_command", required=True, metavar="COMMAND")

    check = sub.add_parser("audit", help="verify a whole log: signatures, tiles, entries, root")
    check.add_argument("source", metavar="URL|DIR", help="the service's /ledger/ URL, or an export")
    check.add_argument("--vkey", required=True, help="the log's verifier key, or a file holding it")
    check.add_argument("--state", help="keep what this audit saw, and check the next against it")
    check.add_argument(
        "--receipt-key",
        help="receipt public key(s) (PEM file) to check entries against; default: the log's list",
    )
    check.set_defaults(run=_audit)

    inclusion = sub.add_parser("prove", help="check one receipt's inclusion offline")
    inclusion.add_argument(
        "receipt", metavar="RECEIPT", help="receipt envelope or /execute answer (JSON)"
    )
    inclusion.add_argument("proof", metavar="PROOF", help="its tlog-proof (GET /ledger/proof/ID)")
    inclusion.add_argument(
        "--vkey", required=True, help="the log's verifier key, or a file holding it"
    )
    inclusion.set_defaults(run=_prove)

    static = sub.add_parser("export", help="write the ledger of OPENEXEC_DB_URL as static files")
    static.add_argument("directory", metavar="DIR")
    static.set_defaults(run=_export)

    cosign = sub.add_parser("witness", help="check a log's new checkpoint, cosign it, post it")
    cosign.add_argument("url", metavar="URL", help="the service's /ledger/ URL")
    cosign.add_argument(
        "--vkey", required=True, help="the log's verifier key, or a file holding it"
    )
    cosign.add_argument("--key", required=True, help="this witness's Ed25519 private key (PEM)")
    cosign.add_argument("--name", required=True, help="this witness's name, e.g. witness.example")
    cosign.add_argument("--state", required=True, help="the last checkpoint this witness cosigned")
    cosign.set_defaults(run=_witness)

    vkey = sub.add_parser("vkey", help="print the verifier key of a private key")
    vkey.add_argument("--key", required=True, help="Ed25519 private key (PEM)")
    vkey.add_argument("--name", required=True, help="the key's name (a log: its origin)")
    vkey.add_argument("--witness", action="store_true", help="a witness's cosignature key")
    vkey.set_defaults(run=_vkey)


def _audit(args: argparse.Namespace) -> int:
    verifier = _verifier(args.vkey)
    try:
        source = open_source(args.source)
        if args.receipt_key:
            keys = _receipt_keys(args.receipt_key)
        else:
            keys = receipt_keys_of(source)
            print(
                "openexec: checking receipts against the keys the log lists; pin them with "
                "--receipt-key to check them against keys you hold",
                file=sys.stderr,
            )
        report = audit(source, verifier, keys, Path(args.state) if args.state else None)
    except AuditFailure as exc:
        print(f"FAILED: {exc}")
        return 1
    except SourceError as exc:
        raise CommandError(str(exc)) from None
    checkpoint = report.checkpoint
    since = (
        "" if report.previous_size is None else f", extends the last audit's {report.previous_size}"
    )
    print(f"ok: {checkpoint.origin} holds {checkpoint.size} entries, every one checked{since}")
    return 0


def _prove(args: argparse.Namespace) -> int:
    verifier = _verifier(args.vkey)
    try:
        receipt = json.loads(read_text(args.receipt))
        proven = prove(receipt, read_text(args.proof), verifier)
    except ValueError as exc:
        raise CommandError(f"{args.receipt} is not JSON: {exc}") from None
    except AuditFailure as exc:
        print(f"FAILED: {exc}")
        return 1
    print(f"ok: execution {proven.exec_id} is entry {proven.index} of {proven.size}")
    return 0


def _export(args: argparse.Namespace) -> int:
    try:
        settings = Settings.from_env()
        signing = read_private_key(settings.receipt_key_file, "OPENEXEC_RECEIPT_KEY", "receipt key")
    except ConfigError as exc:
        raise CommandError(str(exc)) from None
    keys = [signing.public_key(), *settings.receipt_public_keys]
    listed = [{"key_id": key_id(k), "public_key_pem": public_key_pem(k)} for k in keys]
    engine = open_engine(settings)
    try:
        store = LedgerStore(engine)
        head = store.head()
        if head is None:
            raise CommandError(f"{settings.safe_db_url} has no ledger")
        done = export(store, head.vkey, listed, Path(args.directory))
    except LookupError as exc:
        raise CommandError(str(exc)) from None
    finally:
        engine.dispose()
    print(f"exported {done.size} entries ({done.files} files) to {args.directory}")
    return 0


def _witness(args: argparse.Namespace) -> int:
    verifier = _verifier(args.vkey)
    try:
        key = read_private_key(Path(args.key), "--key", "witness key")
    except ConfigError as exc:
        raise CommandError(str(exc)) from None
    try:
        done = witness(
            UrlSource(args.url), verifier, CosignatureSigner(args.name, key), Path(args.state)
        )
    except AuditFailure as exc:
        print(f"FAILED: {exc}")
        return 1
    except SourceError as exc:
        raise CommandError(str(exc)) from None
    print(f"cosigned {verifier.name} at size {done.size}")
    return 0


def _vkey(args: argparse.Namespace) -> int:
    try:
        key = read_private_key(Path(args.key), "--key", "key")
    except ConfigError as exc:
        raise CommandError(str(exc)) from None
    signer = CosignatureSigner(args.name, key) if args.witness else NoteSigner(args.name, key)
    print(signer.vkey())
    return 0


def _verifier(given: str) -> NoteVerifier:
    """A verifier key given as itself, or as a file holding it."""
    text = given
    if "+" not in given or Path(given).is_file():
        text = read_text(given).strip()
    try:
        verifier = parse_vkey(text)
    except NoteError as exc:
        raise CommandError(f"--vkey: {exc}") from None
    if verifier.key_type != NOTE_KEY_TYPE:
        raise CommandError("--vkey: not a log's verifier key (type 0x01); a witness's key?")
    return verifier


def _receipt_keys(path: str) -> tuple[Ed25519PublicKey, ...]:
    try:
        return parse_public_keys(read_text(path), variable="--receipt-key")
    except ConfigError as exc:
        raise CommandError(str(exc)) from None


def read_text(name: str) -> str:
    """A file's UTF-8 text (``-``: stdin), or a CommandError naming it."""
    if name == "-":
        return sys.stdin.read()
    try:
        return Path(name).read_text(encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"cannot read {name}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise CommandError(f"{name} is not UTF-8 text") from None
