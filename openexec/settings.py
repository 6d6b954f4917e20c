"""Configuration, read once at startup into an immutable Settings object."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

MODES = ("demo", "clawshield")
LOG_FORMATS = ("text", "json")
# The variables the host reads itself; every other OPENEXEC_ variable belongs to a pack.
HOST_VARIABLES = frozenset(
    {
        "OPENEXEC_MODE",
        "CLAWSHIELD_PUBLIC_KEY",
        "CLAWSHIELD_TENANT_ID",
        "OPENEXEC_ALLOWED_ACTIONS",
        "OPENEXEC_PLUGINS",
        "OPENEXEC_DB_URL",
        "OPENEXEC_RECEIPT_KEY",
        "OPENEXEC_RECEIPT_PUBLIC_KEYS",
        "OPENEXEC_SERVICE_ID",
        "OPENEXEC_ACTION_TIMEOUT_S",
        "OPENEXEC_CLOCK_SKEW_S",
        "OPENEXEC_MAX_REQUEST_BYTES",
        "OPENEXEC_LEASE_GRACE_S",
        "OPENEXEC_DB_POOL_SIZE",
        "OPENEXEC_LEDGER",
        "OPENEXEC_LEDGER_KEY",
        "OPENEXEC_LEDGER_ORIGIN",
        "OPENEXEC_LEDGER_INTERVAL_MS",
        "OPENEXEC_LEDGER_WITNESSES",
        "OPENEXEC_LEDGER_INTEGRATOR",
        "OPENEXEC_METRICS",
        "OPENEXEC_LOG_FORMAT",
    }
)
PEM_BLOCK = re.compile(r"-----BEGIN [A-Z ]+-----.+?-----END [A-Z ]+-----", re.DOTALL)


DEFAULT_KEY_NAME = "openexec-receipt-key.pem"
DEFAULT_LEDGER_KEY_NAME = "openexec-ledger-key.pem"
DEFAULT_LEDGER_ORIGIN = "openexec.localhost/ledger"
# A checkpoint origin: a schemeless URL-like name, printable ASCII without spaces or "+"
# (the origin is also the ledger key's name in C2SP signed notes).
LEDGER_ORIGIN = re.compile(r"^[\x21-\x2a\x2c-\x7e]{1,255}$")


class ConfigError(Exception):
    """Invalid configuration; the message names the variable and what is wrong."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


@dataclass(frozen=True)
class Settings:
    """Everything the service is configured with. Build with ``from_env`` or directly in tests."""

    mode: str = "demo"
    clawshield_public_keys: tuple[Ed25519PublicKey, ...] = ()
    tenant_id: str | None = None
    allowed_actions: tuple[str, ...] | None = None
    plugins: tuple[str, ...] | None = None
    db_url: str = "sqlite:///openexec.db"
    receipt_key_path: Path | None = None
    receipt_public_keys: tuple[Ed25519PublicKey, ...] = ()
    service_id: str | None = None
    action_timeout_s: float = 30.0
    clock_skew_s: float = 60.0
    max_request_bytes: int = 1_048_576
    lease_grace_s: float = 10.0
    db_pool_size: int = 8
    ledger: bool = True
    ledger_key_path: Path | None = None
    ledger_origin: str = DEFAULT_LEDGER_ORIGIN
    ledger_interval_s: float = 0.5
    ledger_witnesses: tuple[str, ...] = ()  # verifier keys (C2SP note format), checked at startup
    ledger_integrator: str = "process"  # or "thread" (openexec.ledger.process says why)
    metrics: bool = True
    log_format: str = "text"
    # Every OPENEXEC_ variable that is not the host's own, as the environment held it at
    # startup: what packs' settings are read from (openexec.pack_settings).
    pack_environment: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError("OPENEXEC_MODE", f"must be 'demo' or 'clawshield', got {self.mode!r}")
        if self.mode == "clawshield" and not self.clawshield_public_keys:
            raise ConfigError(
                "CLAWSHIELD_PUBLIC_KEY",
                "CLAWSHIELD_PUBLIC_KEY not configured: clawshield mode needs the approver's "
                "Ed25519 public key (PEM)",
            )
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(
                "OPENEXEC_LOG_FORMAT", f"must be 'text' or 'json', got {self.log_format!r}"
            )
        if self.ledger_integrator not in ("process", "thread"):
            raise ConfigError(
                "OPENEXEC_LEDGER_INTEGRATOR",
                f"must be 'process' or 'thread', got {self.ledger_integrator!r}",
            )
        object.__setattr__(self, "db_url", normalise_db_url(self.db_url))
        if not LEDGER_ORIGIN.match(self.ledger_origin) or "://" in self.ledger_origin:
            raise ConfigError(
                "OPENEXEC_LEDGER_ORIGIN",
                "must be a schemeless URL-like name (such as example.com/ledger): printable "
                f"ASCII without spaces or '+', got {self.ledger_origin!r}",
            )

    @property
    def database_kind(self) -> str:
        return "postgresql" if self.db_url.startswith("postgresql") else "sqlite"

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite database file, or None for PostgreSQL and in-memory databases."""
        database = make_url(self.db_url).database
        if self.database_kind != "sqlite" or not database or database == ":memory:":
            return None
        return Path(database)

    @property
    def receipt_key_file(self) -> Path:
        """Where the receipt key is read from: ``OPENEXEC_RECEIPT_KEY``, or the key made on
        first start beside the SQLite file (or in the working directory)."""
        if self.receipt_key_path is not None:
            return self.receipt_key_path
        sqlite_path = self.sqlite_path
        return (sqlite_path.parent if sqlite_path else Path.cwd()) / DEFAULT_KEY_NAME

    @property
    def ledger_key_file(self) -> Path:
        """Where the ledger key is read from: ``OPENEXEC_LEDGER_KEY``, or the key made on first
        start beside the receipt key's default place."""
        if self.ledger_key_path is not None:
            return self.ledger_key_path
        return self.receipt_key_file.with_name(DEFAULT_LEDGER_KEY_NAME)

    @property
    def safe_db_url(self) -> str:
        """The database URL with any password masked, for messages and logs."""
        return make_url(self.db_url).render_as_string(hide_password=True)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the OPENEXEC_* and CLAWSHIELD_* variables; raise ConfigError naming the bad one."""
        env = os.environ if environ is None else environ
        keys_pem = env.get("CLAWSHIELD_PUBLIC_KEY")
        receipt_key = env.get("OPENEXEC_RECEIPT_KEY")
        receipt_public = env.get("OPENEXEC_RECEIPT_PUBLIC_KEYS")
        return cls(
            mode=env.get("OPENEXEC_MODE", "demo").strip().lower() or "demo",
            clawshield_public_keys=parse_public_keys(keys_pem) if keys_pem else (),
            tenant_id=env.get("CLAWSHIELD_TENANT_ID") or None,
            allowed_actions=_name_list(env, "OPENEXEC_ALLOWED_ACTIONS"),
            plugins=_name_list(env, "OPENEXEC_PLUGINS"),
            db_url=env.get("OPENEXEC_DB_URL") or "sqlite:///openexec.db",
            receipt_key_path=Path(receipt_key) if receipt_key else None,
            receipt_public_keys=(
                parse_public_keys(receipt_public, "OPENEXEC_RECEIPT_PUBLIC_KEYS")
                if receipt_public
                else ()
            ),
            service_id=env.get("OPENEXEC_SERVICE_ID") or None,
            action_timeout_s=_positive(env, "OPENEXEC_ACTION_TIMEOUT_S", 30.0, float),
            clock_skew_s=_positive(env, "OPENEXEC_CLOCK_SKEW_S", 60.0, float, allow_zero=True),
            max_request_bytes=_positive(env, "OPENEXEC_MAX_REQUEST_BYTES", 1_048_576, int),
            lease_grace_s=_positive(env, "OPENEXEC_LEASE_GRACE_S", 10.0, float),
            db_pool_size=_positive(env, "OPENEXEC_DB_POOL_SIZE", 8, int),
            ledger=_switch(env, "OPENEXEC_LEDGER"),
            ledger_key_path=Path(env["OPENEXEC_LEDGER_KEY"])
            if env.get("OPENEXEC_LEDGER_KEY")
            else None,
            ledger_origin=env.get("OPENEXEC_LEDGER_ORIGIN") or DEFAULT_LEDGER_ORIGIN,
            ledger_interval_s=_positive(env, "OPENEXEC_LEDGER_INTERVAL_MS", 500, int) / 1000,
            ledger_witnesses=tuple(
                re.split(r"[\s,]+", env.get("OPENEXEC_LEDGER_WITNESSES", "").strip())
                if env.get("OPENEXEC_LEDGER_WITNESSES", "").strip()
                else ()
            ),
            ledger_integrator=env.get("OPENEXEC_LEDGER_INTEGRATOR", "").strip().lower()
            or "process",
            metrics=_switch(env, "OPENEXEC_METRICS"),
            log_format=env.get("OPENEXEC_LOG_FORMAT", "text").strip().lower() or "text",
            pack_environment=MappingProxyType(
                {
                    name: value
                    for name, value in env.items()
                    if name.startswith("OPENEXEC_") and name not in HOST_VARIABLES
                }
            ),
        )


def parse_public_keys(
    text: str, variable: str = "CLAWSHIELD_PUBLIC_KEY"
) -> tuple[Ed25519PublicKey, ...]:
    """Parse one or more concatenated PEM Ed25519 public keys (several allow key rotation)."""
    text = text.replace("\\n", "\n")
    blocks = PEM_BLOCK.findall(text)
    if not blocks:
        raise ConfigError(
            variable, "no PEM public key found (expected '-----BEGIN PUBLIC KEY-----')"
        )
    keys = []
    for number, block in enumerate(blocks, start=1):
        try:
            key = load_pem_public_key(block.encode())
        except ValueError as exc:
            raise ConfigError(
                variable, f"PEM block {number} is not a valid public key ({exc})"
            ) from None
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError(variable, f"PEM block {number} is not an Ed25519 key")
        keys.append(key)
    return tuple(keys)


def normalise_db_url(url: str) -> str:
    """Accept ``postgresql://`` and ``postgres://`` and select the psycopg 3 driver for them."""
    try:
        parsed: URL = make_url(url)
    except ArgumentError:
        raise ConfigError("OPENEXEC_DB_URL", "is not a valid database URL") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise ConfigError(
            "OPENEXEC_DB_URL",
            "an in-memory SQLite database would forget every execution; name a file "
            "(sqlite:///openexec.db)",
        )
    if backend in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif backend != "sqlite":
        raise ConfigError(
            "OPENEXEC_DB_URL", f"unsupported database {backend!r}: use sqlite:/// or postgresql://"
        )
    return parsed.render_as_string(hide_password=False)


def _name_list(env: Mapping[str, str], variable: str) -> tuple[str, ...] | None:
    """Unset → None (no filter); set → the comma-separated names, possibly none."""
    if variable not in env:
        return None
    return tuple(name.strip() for name in env[variable].split(",") if name.strip())


def _switch(env: Mapping[str, str], variable: str) -> bool:
    """``on`` (the default) or ``off``."""
    raw = env.get(variable, "on").strip().lower() or "on"
    if raw not in ("on", "off"):
        raise ConfigError(variable, f"must be 'on' or 'off', got {raw!r}")
    return raw == "on"


def _positive(env, variable, default, kind, allow_zero=False):
    raw = env.get(variable)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(variable, f"must be a number, got {raw!r}") from None
    if value < 0 or (value == 0 and not allow_zero) or value != value or value == float("inf"):
        raise ConfigError(variable, f"must be a positive number, got {raw!r}")
    return value
