"""Alembic's environment. Revisions run on the connection ``openexec.store.migrations`` hands
over in ``config.attributes["connection"]``, inside its schema transaction: so an upgrade holds
the schema lock, and commits or leaves nothing, with every step in one transaction. There is no
offline (``--sql``) mode and no URL of its own: the settings name the database."""

from alembic import context

context.configure(connection=context.config.attributes["connection"])
with context.begin_transaction():
    context.run_migrations()
