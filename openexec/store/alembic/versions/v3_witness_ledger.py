"""v3: the witness ledger. Each execution gets its index in the ledger (``ledger_index``), and
the ledger's state, tiles, checkpoints and cosignatures their tables. ``openexec_schema`` goes:
from here on, ``alembic_version`` alone says what the schema is.

Executions already stored keep a NULL ledger_index: they are what the integrator appends
first, in start order (``ix_executions_ledger_pending``), once the service runs. The upgrade
itself signs nothing, as it has no ledger key."""

import sqlalchemy as sa
from alembic import op

revision = "v3"
down_revision = "v2"


def upgrade() -> None:
    op.add_column("executions", sa.Column("ledger_index", sa.BigInteger))
    ledger_index, status = sa.column("ledger_index"), sa.column("status")
    pending = ledger_index.is_(None) & (status != "running")
    op.create_index(
        "ix_executions_ledger_pending",
        "executions",
        ["started_at", "id"],
        sqlite_where=pending,
        postgresql_where=pending,
    )
    op.create_index(
        "uq_executions_ledger_index",
        "executions",
        ["ledger_index"],
        unique=True,
        sqlite_where=ledger_index.is_not(None),
        postgresql_where=ledger_index.is_not(None),
    )
    op.create_table(
        "ledger_state",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("origin", sa.String(255), nullable=False),
        sa.Column("vkey", sa.String(512), nullable=False),
    )
    op.create_table(
        "ledger_tiles",
        sa.Column("path", sa.String(96), primary_key=True),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "ledger_checkpoints",
        sa.Column("size", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("note", sa.String, nullable=False),
        sa.Column("signed_at", sa.String(40), nullable=False),
    )
    op.create_table(
        "ledger_cosignatures",
        sa.Column("size", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("witness", sa.String(255), primary_key=True),
        sa.Column("line", sa.String, nullable=False),
        sa.Column("timestamp", sa.BigInteger, nullable=False),
    )
    op.drop_table("openexec_schema")
