"""v1: the schema of OpenExec 0.1.0, the executions, and ``openexec_schema``, the version
table of the stores written before Alembic (version 1; v3 drops it)."""

import sqlalchemy as sa
from alembic import op

revision = "v1"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "executions",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant", sa.String(255), nullable=False),
        sa.Column("nonce", sa.String(255), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("plugin_name", sa.String(255), nullable=False),
        sa.Column("plugin_version", sa.String(64), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("request_sha256", sa.String(64), nullable=False),
        sa.Column("payload", sa.String, nullable=False),
        sa.Column("approval_id", sa.String(255), unique=True),
        sa.Column("approval_format", sa.String(32)),
        sa.Column("approval_sha256", sa.String(64)),
        sa.Column("approval_key_id", sa.String(16)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("result", sa.String),
        sa.Column("error_code", sa.String(64)),
        sa.Column("error_message", sa.String),
        sa.Column("started_at", sa.String(40), nullable=False),
        sa.Column("completed_at", sa.String(40)),
        sa.Column("lease_expires_at", sa.Float, nullable=False),
        sa.Column("receipt", sa.String(64)),
        sa.Column("receipt_envelope", sa.String),
        sa.Column("response", sa.String),
        sa.UniqueConstraint("tenant", "nonce", name="uq_executions_tenant_nonce"),
        postgresql_with={"fillfactor": 40, "toast_tuple_target": 1024},
    )
    schema = op.create_table("openexec_schema", sa.Column("version", sa.Integer, primary_key=True))
    op.bulk_insert(schema, [{"version": 1}])
