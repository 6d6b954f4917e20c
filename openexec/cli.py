"""The ``openexec`` command: the server, keys, approvals, what would load, offline receipt
checks, and the database's upgrade and backup.

    openexec serve [--host H] [--port P] [--workers N] ...   (uvicorn, from any directory)
    openexec keygen --out approver.pem
    openexec approve --key approver.pem --action echo --payload '{"msg": "hi"}' --nonce n-1
    openexec actions [--json]
    openexec plugins [--json]
    openexec receipts verify receipt.json --public-key receipt-key.pub [--result '{...}']
        [--require-approval]
    openexec db upgrade
    openexec db backup DEST_DIR
    openexec ledger audit|prove|export|witness|vkey ...   (openexec.ledger.commands)

Exit status: 0 success (``serve`` with several workers: stopped by SIGTERM or SIGINT; with
one, uvicorn ends by that signal instead); 1 the receipt is not valid, or no approval backed it
and ``--require-approval`` was given (``receipts verify``), or the log or receipt failed a
check (``ledger audit``, ``prove``, ``witness``); 2 anything the caller must fix: bad
arguments, unreadable or invalid input, a key file that already exists, invalid configuration
or a plugin that fails to load; 3 (uvicorn's startup-failure code) ``serve`` could not start:
a bad setting, a plugin, the database, the socket.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import uvicorn
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from openexec.approvals import mint_v1, mint_v2
from openexec.backup import BackupError, backup_sqlite
from openexec.ledger.commands import CommandError, add_ledger_commands
from openexec.ledger.commands import read_text as _read_text
from openexec.logs import uvicorn_log_config
from openexec.models import PluginSummary
from openexec.plugins import PluginError, Registry, load_registry
from openexec.receipts import NO_RESULT, verify_envelope
from openexec.settings import ConfigError, Settings, parse_public_keys
from openexec.signing import key_id
from openexec.store import upgrade_schema
from openexec.strictjson import BadJson, parse_json

SERVICE_APP = "openexec.asgi:app"
NONCE = re.compile(r"^[\x21-\x7e]{1,255}$")  # as the API's nonces: printable ASCII, no spaces


class CliError(CommandError):
    """A problem the caller must fix; reported on stderr with exit status 2."""


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.run(args)
    except CommandError as exc:
        print(f"openexec: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="openexec", description="Governed, deterministic execution service tools."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the service under uvicorn, configured from the environment",
        description="Run the service (OPENEXEC_* settings from the environment) under uvicorn. "
        "Works from any directory; relative paths in the settings are relative to it.",
        allow_abbrev=False,  # uvicorn's own flags, spelled out: --worker is not --workers
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    serve.add_argument(
        "--workers", type=_positive_int, default=1, help="worker processes (default 1)"
    )
    serve.add_argument(
        "--log-level",
        choices=("critical", "error", "warning", "info", "debug", "trace"),
        default="info",
        help="uvicorn's log level (default info)",
    )
    serve.add_argument(
        "--no-access-log",
        dest="access_log",
        action="store_false",
        help="no line per request",
    )
    serve.add_argument(
        "--proxy-headers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="take the client's address and scheme from X-Forwarded-For and -Proto, when the "
        "peer is one of --forwarded-allow-ips (default: on)",
    )
    serve.add_argument(
        "--forwarded-allow-ips",
        metavar="IPS",
        help="comma-separated proxy addresses or networks to trust, '*' for any (default: "
        "$FORWARDED_ALLOW_IPS, or 127.0.0.1)",
    )
    serve.add_argument(
        "--root-path",
        default="",
        metavar="PATH",
        help="the path prefix a proxy serves the service under, e.g. /openexec",
    )
    serve.set_defaults(run=_serve)

    keygen = commands.add_parser("keygen", help="create an Ed25519 key pair")
    keygen.add_argument(
        "--out", required=True, help="private key path (PEM, mode 0600); public key goes to OUT.pub"
    )
    keygen.set_defaults(run=_keygen)

    approve = commands.add_parser("approve", help="mint a signed approval artifact")
    approve.add_argument("--key", required=True, help="approver private key (PEM)")
    approve.add_argument("--action", required=True, help="action name, e.g. files.read")
    payload = approve.add_mutually_exclusive_group()
    payload.add_argument("--payload", help="payload as a JSON object (default {})")
    payload.add_argument("--payload-file", help="file holding the JSON payload ('-': stdin)")
    approve.add_argument("--format", choices=("v1", "v2"), default="v2", help="default: v2")
    approve.add_argument("--tenant", help="tenant the approval is for")
    approve.add_argument("--ttl", type=int, default=300, help="seconds until it expires")
    approve.add_argument("--nonce", help="v2: only this request nonce may use it")
    approve.add_argument("--aud", help="v2: only the service with this OPENEXEC_SERVICE_ID")
    approve.set_defaults(run=_approve)

    for name, run, what in (
        ("actions", _actions, "the actions this installation would allow"),
        ("plugins", _plugins, "the plugins this installation would load"),
    ):
        listing = commands.add_parser(name, help=f"list {what} under the current environment")
        listing.add_argument("--json", action="store_true", help="machine-readable output")
        listing.set_defaults(run=run)

    receipts = commands.add_parser("receipts", help="work with execution receipts")
    receipt_commands = receipts.add_subparsers(dest="receipts_command", required=True)
    verify = receipt_commands.add_parser("verify", help="check a receipt envelope offline")
    verify.add_argument("envelope", metavar="ENVELOPE_FILE", help="receipt envelope (JSON)")
    verify.add_argument("--public-key", required=True, help="receipt public key(s) (PEM)")
    result = verify.add_mutually_exclusive_group()
    result.add_argument("--result", help="the execution's result as JSON, to check its hash")
    result.add_argument("--result-file", help="file holding the result JSON ('-': stdin)")
    verify.add_argument(
        "--require-approval",
        action="store_true",
        help="also refuse a receipt that no approval backed (a demo-mode execution)",
    )
    verify.set_defaults(run=_verify_receipt)

    database = commands.add_parser("db", help="work with the service's database")
    database_commands = database.add_subparsers(dest="db_command", required=True)
    upgrade = database_commands.add_parser(
        "upgrade", help="bring OPENEXEC_DB_URL's database to this version's schema"
    )
    upgrade.set_defaults(run=_upgrade_database)
    backup = database_commands.add_parser(
        "backup",
        help="copy OPENEXEC_DB_URL's SQLite store, live, with its receipt and ledger keys",
    )
    backup.add_argument(
        "destination",
        metavar="DEST_DIR",
        help="where to write the copies (created 0700); a file there is never replaced",
    )
    backup.set_defaults(run=_backup_database)

    add_ledger_commands(commands)
    return parser


def _keygen(args: argparse.Namespace) -> int:
    private_path = Path(args.out)
    public_path = Path(f"{args.out}.pub")
    for path in (private_path, public_path):
        if path.exists() or path.is_symlink():
            raise CliError(f"{path} already exists; refusing to overwrite it")
    key = Ed25519PrivateKey.generate()
    _write_new_file(
        private_path, key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()), 0o600
    )
    public_pem = key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    try:
        _write_new_file(public_path, public_pem, 0o644)
    except CliError:
        private_path.unlink()  # never leave half a key pair behind
        raise
    print(f"wrote {private_path} (private, mode 0600) and {public_path}", file=sys.stderr)
    print(key_id(key.public_key()))
    return 0


def _write_new_file(path: Path, content: bytes, mode: int) -> None:
    """Create ``path`` with exactly ``mode``; O_EXCL refuses existing files and symlinks."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except OSError as exc:
        raise CliError(f"cannot create {path}: {exc.strerror}") from None
    try:
        with os.fdopen(descriptor, "wb") as handle:
            os.fchmod(handle.fileno(), mode)  # the umask may have narrowed it
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        path.unlink()
        raise CliError(f"cannot write {path}: {exc.strerror}") from None


def _approve(args: argparse.Namespace) -> int:
    if args.ttl <= 0:
        raise CliError("--ttl must be a positive number of seconds")
    if args.nonce is not None and not NONCE.match(args.nonce):
        raise CliError("--nonce must be 1-255 printable ASCII characters without whitespace")
    for option, value in (("--tenant", args.tenant), ("--aud", args.aud)):
        if value == "":
            raise CliError(f"{option} must not be empty; leave it out instead")
    key = _read_private_key(Path(args.key))
    if args.payload_file is not None:
        payload = _parse_json(_read_text(args.payload_file), "--payload-file")
    else:
        payload = _parse_json("{}" if args.payload is None else args.payload, "--payload")
    if not isinstance(payload, dict):
        raise CliError("the payload must be a JSON object")
    if args.format == "v1":
        if args.nonce is not None or args.aud is not None:
            raise CliError("--nonce and --aud need --format v2 (v1 artifacts cannot bind them)")
        artifact = mint_v1(key, args.action, payload, tenant_id=args.tenant or "", ttl_s=args.ttl)
    else:
        artifact = mint_v2(
            key,
            args.action,
            payload,
            tenant_id=args.tenant,
            ttl_s=args.ttl,
            nonce=args.nonce,
            aud=args.aud,
        )
    print(json.dumps(artifact, indent=2))
    return 0


def _actions(args: argparse.Namespace) -> int:
    allowed = _load_registry().allowed_actions()
    if args.json:
        listing = [
            {
                "name": action.name,
                "description": action.description,
                "plugin": action.plugin_name,
                "plugin_version": action.plugin_version,
                "input_schema": action.input_schema,
            }
            for action in allowed
        ]
        print(json.dumps(listing, indent=2))
        return 0
    if not allowed:
        print("no actions allowed", file=sys.stderr)
    for action in allowed:
        plugin = f"{action.plugin_name} {action.plugin_version}"
        print(f"{action.name:<24} {plugin:<28} {action.description}")
    return 0


def _plugins(args: argparse.Namespace) -> int:
    plugins = _load_registry().plugins
    if args.json:
        listing = [PluginSummary.of(plugin).model_dump() for plugin in plugins]
        print(json.dumps(listing, indent=2))
        return 0
    if not plugins:
        print("no plugins loaded", file=sys.stderr)
    for plugin in plugins:
        print(f"{plugin.name} {plugin.version}: {', '.join(plugin.actions) or '(no actions)'}")
    return 0


def _upgrade_database(_: argparse.Namespace) -> int:
    """Upgrade the database the service would open under the current environment."""
    try:
        settings = Settings.from_env()
        upgrade = upgrade_schema(settings)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    where = settings.safe_db_url
    if upgrade.found is None:
        print(f"created schema revision {upgrade.head} in {where}")
    elif upgrade.found == upgrade.head:
        print(f"{where} is at schema revision {upgrade.head} already; nothing to do")
    else:
        print(f"upgraded {where} from schema revision {upgrade.found} to {upgrade.head}")
    if count := upgrade.unledgered:  # the upgrade holds no ledger key: the integrator does
        executions = "1 execution is" if count == 1 else f"{count} executions are"
        print(
            f"{executions} not in the witness ledger yet: the service appends them, "
            "in start order, when it runs"
        )
    return 0


def _backup_database(args: argparse.Namespace) -> int:
    """Back up the store the service would open under the current environment, live."""
    try:
        taken = backup_sqlite(Settings.from_env(), Path(args.destination))
    except (ConfigError, BackupError) as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"cannot back up to {args.destination}: {exc}") from None
    for source, copy in taken.copies:
        print(f"copied {source.absolute()} to {copy.absolute()}")
    print(
        f"the copy holds {taken.executions} executions and {taken.ledger_size} ledger "
        "entries; restore all of these files together (docs/operations.md)"
    )
    return 0


def _serve(args: argparse.Namespace) -> int:
    """Run ``openexec.asgi:app`` under uvicorn: an import path inside the installed package,
    so it works from any directory, unlike ``main:app``.

    One worker runs in this process, as ``uvicorn.run`` does, and a startup failure exits
    with uvicorn's STARTUP_FAILURE code from there. With several, uvicorn's supervisor stops
    when a worker fails to start but exits 0 all the same; this one exits STARTUP_FAILURE, so
    a service manager sees the failure and does not restart it (deploy/openexec.service).
    """
    options = uvicorn_options(args)
    if args.workers == 1:
        uvicorn.run(SERVICE_APP, **options)
        return 0
    config = uvicorn.Config(SERVICE_APP, workers=args.workers, **options)
    supervisor = Multiprocess(config, sockets=[config.bind_socket()])
    supervisor.run()
    failed = any(worker.exitcode == STARTUP_FAILURE for worker in supervisor.processes)
    return STARTUP_FAILURE if failed else 0


def uvicorn_options(args: argparse.Namespace) -> dict[str, Any]:
    """``openexec serve``'s options as uvicorn's ``Config`` arguments."""
    return {
        "host": args.host,
        "port": args.port,
        "log_level": args.log_level,
        "access_log": args.access_log,
        "proxy_headers": args.proxy_headers,
        "forwarded_allow_ips": args.forwarded_allow_ips,
        "root_path": args.root_path,
        "log_config": uvicorn_log_config(os.environ.get("OPENEXEC_LOG_FORMAT", "").strip().lower()),
    }


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text!r}")
    return value


def _load_registry() -> Registry:
    """What the service would load at startup under the current environment."""
    try:
        return load_registry(Settings.from_env())
    except (ConfigError, PluginError) as exc:
        raise CliError(str(exc)) from None


def _verify_receipt(args: argparse.Namespace) -> int:
    text = _read_text(args.envelope)
    try:
        envelope = _parse_json(text, args.envelope)
    except CliError as exc:  # a file that is not even JSON is an invalid receipt, not misuse
        print(f"invalid: {exc}")
        return 1
    try:
        keys = parse_public_keys(_read_text(args.public_key), variable="--public-key")
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    result = NO_RESULT
    if args.result_file is not None:
        result = _parse_json(_read_text(args.result_file), "--result-file")
    elif args.result is not None:
        result = _parse_json(args.result, "--result")
    verdict = verify_envelope(envelope, keys, result=result)
    if not verdict.valid:
        print(f"invalid: {verdict.reason}")
        return 1
    if verdict.approval is None:
        if args.require_approval:
            print(f"invalid: no approval backed this execution (mode {verdict.mode})")
            return 1
        backed = "approval=none"
    else:
        backed = f"approval={verdict.approval['id']} ({verdict.approval['format']})"
    # "valid <exec_id> <status>" first, as before, so scripts reading it keep working.
    print(f"valid {verdict.exec_id} {verdict.status} mode={verdict.mode} {backed}")
    return 0


def _read_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise CliError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise CliError(f"{path} is not an Ed25519 private key")
    return key


def _parse_json(text: str, source: str) -> Any:
    """Strict JSON, as the service reads it: no NaN, no duplicate keys (which copy would be
    approved?), bounded depth and integers."""
    try:
        return parse_json(text.encode())
    except BadJson as exc:
        raise CliError(f"{source} is not valid JSON: {exc}") from None
