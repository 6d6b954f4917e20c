"""v2: an approval is consumed under its signed bytes too (``approval_signed_sha256``, unique),
and the receipt keys are recorded (``receipt_keys``).

Rows written before hold NULL in approval_signed_sha256: they stay consumed under their
approval_id, as they always were. The keys that signed the store's receipts so far are read
from the envelopes themselves, once."""

import sqlalchemy as sa
from alembic import op

revision = "v2"
down_revision = "v1"


def upgrade() -> None:
    # A unique index, not a constraint: SQLite cannot add a constraint to an existing table.
    op.add_column("executions", sa.Column("approval_signed_sha256", sa.String(64)))
    op.create_index(
        "ix_executions_approval_signed_sha256",
        "executions",
        ["approval_signed_sha256"],
        unique=True,
    )
    op.create_table(
        "receipt_keys",
        sa.Column("key_id", sa.String(16), primary_key=True),
        sa.Column("first_used_at", sa.String(40), nullable=False),
    )
    key_id = (
        "receipt_envelope::json -> 'signatures' -> 0 ->> 'keyid'"
        if op.get_context().dialect.name == "postgresql"
        else "json_extract(receipt_envelope, '$.signatures[0].keyid')"
    )
    op.execute(
        f"INSERT INTO receipt_keys (key_id, first_used_at) SELECT {key_id}, MIN(completed_at) "
        "FROM executions WHERE receipt_envelope IS NOT NULL GROUP BY 1"
    )
    op.execute("UPDATE openexec_schema SET version = 2")
