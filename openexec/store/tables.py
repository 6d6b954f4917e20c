"""The tables (SQLModel) and the statements of the request path, built once."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    LargeBinary,
    String,
    UniqueConstraint,
    and_,
    bindparam,
    or_,
    select,
    update,
)
from sqlmodel import Field, SQLModel

NO_TENANT = ""  # (tenant, nonce) must be unique, and NULLs never collide in a unique index


# PostgreSQL's heap layout. A row is inserted "running" and updated soon after with its outcome.
# That update adds nothing to the table's indexes (a HOT update) only if the new version fits on
# the row's page, but under load a page fills with reservations before they finish. So pages
# keep 60% free for the outcomes to come. And once a row passes 2 KB, TOAST moves values out of
# line until it is under 1 KB, not 2 KB: both the response and the receipt envelope go, whatever
# a few bytes of nonce or payload add, and an outcome held in line stays near 530 bytes.
POSTGRES_STORAGE = {"fillfactor": 40, "toast_tuple_target": 1024}


class Execution(SQLModel, table=True):
    """One reserved nonce: what was asked, under which approval, and how it ended."""

    __tablename__ = "executions"
    __table_args__ = (
        UniqueConstraint("tenant", "nonce", name="uq_executions_tenant_nonce"),
        {"postgresql_with": POSTGRES_STORAGE},
    )

    id: str = Field(primary_key=True, max_length=36)
    tenant: str = Field(max_length=255)
    nonce: str = Field(max_length=255)
    action: str = Field(max_length=64)
    plugin_name: str = Field(max_length=255)
    plugin_version: str = Field(max_length=64)
    mode: str = Field(max_length=16)
    request_sha256: str = Field(max_length=64)
    payload: str
    approval_id: str | None = Field(default=None, sa_column=Column(String(255), unique=True))
    # An approval is consumed under its id and under what its signature covers: a v1 artifact
    # can name other ids with the same signed bytes (openexec.approvals). A unique index, not a
    # constraint, so that ``upgrade`` can add it to an existing SQLite table.
    approval_signed_sha256: str | None = Field(
        default=None, sa_column=Column(String(64), unique=True, index=True)
    )
    approval_format: str | None = Field(default=None, max_length=32)
    approval_sha256: str | None = Field(default=None, max_length=64)
    approval_key_id: str | None = Field(default=None, max_length=16)
    status: str = Field(max_length=16)
    result: str | None = None
    error_code: str | None = Field(default=None, max_length=64)
    error_message: str | None = None
    started_at: str = Field(max_length=40)
    completed_at: str | None = Field(default=None, max_length=40)
    lease_expires_at: float
    receipt: str | None = Field(default=None, max_length=64)
    receipt_envelope: str | None = None
    response: str | None = None
    # The execution's index in the witness ledger, set once by the integrator (openexec.ledger)
    ledger_index: int | None = Field(default=None, sa_column=Column(BigInteger))


class ReceiptKeyRecord(SQLModel, table=True):
    """A receipt key the service started with, by key id: its receipts may be in the store, so
    it must stay among the trusted keys. Kept apart from the executions, so that checking it at
    startup reads a few rows, not every receipt."""

    __tablename__ = "receipt_keys"

    key_id: str = Field(primary_key=True, max_length=16)
    first_used_at: str = Field(max_length=40)


class LedgerState(SQLModel, table=True):
    """The ledger's one row: how many entries are sequenced (and tiled), and the origin and
    verifier key its checkpoints are signed with, which never change while it has entries."""

    __tablename__ = "ledger_state"

    id: int = Field(primary_key=True)  # always 1
    size: int = Field(sa_column=Column(BigInteger, nullable=False))
    origin: str = Field(max_length=255)
    vkey: str = Field(max_length=512)


class LedgerTile(SQLModel, table=True):
    """A tile or entry bundle, by its tlog-tiles path (``tile/0/x001/234``, ``tile/entries/5.p/7``).
    A path's bytes never change once written; a partial tile is deleted when its full tile is
    written, as clients fall back to the full one."""

    __tablename__ = "ledger_tiles"

    path: str = Field(primary_key=True, max_length=96)
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class LedgerCheckpoint(SQLModel, table=True):
    """A signed checkpoint (C2SP signed note) for one tree size."""

    __tablename__ = "ledger_checkpoints"

    size: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    note: str
    signed_at: str = Field(max_length=40)


class LedgerCosignature(SQLModel, table=True):
    """A witness's cosignature (its note signature line) on the checkpoint of one size."""

    __tablename__ = "ledger_cosignatures"

    size: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    witness: str = Field(primary_key=True, max_length=255)  # the witness key's name
    line: str
    timestamp: int = Field(sa_column=Column(BigInteger, nullable=False))


EXECUTIONS = Execution.__table__

# The integrator's queue: final executions not yet in the ledger, oldest start first. Partial
# indexes, so that a running row, and an integrated one, costs no index entry here.
LEDGER_PENDING = Index(
    "ix_executions_ledger_pending",
    EXECUTIONS.c.started_at,
    EXECUTIONS.c.id,
    sqlite_where=(EXECUTIONS.c.ledger_index.is_(None)) & (EXECUTIONS.c.status != "running"),
    postgresql_where=(EXECUTIONS.c.ledger_index.is_(None)) & (EXECUTIONS.c.status != "running"),
)

# The database decides an index belongs to one execution, as it decides a nonce does.
LEDGER_INDEX_UNIQUE = Index(
    "uq_executions_ledger_index",
    EXECUTIONS.c.ledger_index,
    unique=True,
    sqlite_where=EXECUTIONS.c.ledger_index.is_not(None),
    postgresql_where=EXECUTIONS.c.ledger_index.is_not(None),
)


RECEIPT_KEYS = ReceiptKeyRecord.__table__


StoredExecution = dict[str, Any]  # one executions row, keyed by column name


EMPTY_ROW: StoredExecution = dict.fromkeys(EXECUTIONS.columns.keys())


# A lookup's row lacks the receipt envelope: the response holds it too, and only the receipt
# endpoints read it on its own (through GET). On PostgreSQL both are out of line, and a replay
# that read both would fetch twice what it needs.
LOOKUP = select(*(c for c in EXECUTIONS.columns if c.name != "receipt_envelope")).where(
    or_(
        and_(EXECUTIONS.c.tenant == bindparam("tenant"), EXECUTIONS.c.nonce == bindparam("nonce")),
        EXECUTIONS.c.approval_id == bindparam("approval_id"),
        EXECUTIONS.c.approval_signed_sha256 == bindparam("approval_signed_sha256"),
    )
)


GET = select(EXECUTIONS).where(EXECUTIONS.c.id == bindparam("exec_id"))


FINISH = update(EXECUTIONS).where(
    EXECUTIONS.c.id == bindparam("target_id"), EXECUTIONS.c.status == "running"
)


EXPIRE = FINISH.where(EXECUTIONS.c.lease_expires_at < bindparam("now"))


OUTCOME_COLUMNS = (  # what FINISH and EXPIRE set
    "status",
    "result",
    "error_code",
    "error_message",
    "completed_at",
    "receipt",
    "receipt_envelope",
    "response",
)
