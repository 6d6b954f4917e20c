"""Entry point for ``uvicorn main:app``: the service configured from the environment."""

import sys

from uvicorn.config import STARTUP_FAILURE

from openexec.app import create_app
from openexec.plugins import PluginError
from openexec.settings import ConfigError

try:
    app = create_app()
except (ConfigError, PluginError) as exc:
    print(f"openexec: startup failed: {exc}", file=sys.stderr)
    # uvicorn's worker supervisor stops, rather than respawning, on this exit code
    raise SystemExit(STARTUP_FAILURE) from None
