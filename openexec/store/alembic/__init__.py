"""The schema's Alembic environment (``env.py``) and revisions (``versions/``): a package, so
that an installed OpenExec carries them. ``openexec.store.migrations`` runs them; nothing here
is imported as a module."""
