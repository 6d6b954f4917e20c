"""``uvicorn tests.support.server:app``: the real service, configured from the environment like
main.py, serving the probe pack (registered in-process, so nothing needs installing)."""

from openexec.app import create_app
from openexec.plugins import InProcessPlugin
from openexec.settings import Settings
from tests.support import probe_pack

app = create_app(Settings.from_env(), [InProcessPlugin(probe_pack, "probe-pack", "1.0")])
