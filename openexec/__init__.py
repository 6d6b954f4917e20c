"""OpenExec: runs approved actions exactly once and witnesses each with a signed receipt."""

from importlib.metadata import PackageNotFoundError, version

from openexec.actions import Action, ActionError, Context
from openexec.hookspecs import hookimpl
from openexec.pack_settings import PackSettings

try:
    __version__ = version("openexec")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = ["Action", "ActionError", "Context", "PackSettings", "__version__", "hookimpl"]
