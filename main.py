"""Entry point for ``uvicorn main:app`` from the repository root: the service configured from
the environment. The app is built in ``openexec.asgi``, which ``openexec serve`` imports from
any directory; this module only re-exports it."""

from openexec.asgi import app

__all__ = ["app"]
