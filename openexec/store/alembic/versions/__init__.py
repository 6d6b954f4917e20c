"""The schema's revisions, one file each: ``v1`` (OpenExec 0.1.0's), ``v2``, ``v3``, ... Each
declares its tables as they were then, never through ``openexec.store.tables``, which holds the
head schema only and changes with it."""
