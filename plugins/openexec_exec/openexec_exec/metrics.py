"""``openexec_exec_sessions``: this instance's sessions by state, for ``GET /metrics``.

Read from the state directory at each scrape, by whichever worker serves it: sessions belong
to the host, not to a worker, so no worker counts them in memory.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from openexec import ActionError
from openexec_exec.sessions import LOST, Sessions

# Every state a session reports (supervisor.py's, and ``lost``), shown even when none is in it.
STATES = ("running", "exited", "signalled", "timed_out", LOST)


class SessionStates:
    """A prometheus-client collector: the sessions kept in the state directory, by state
    (ended ones stay until their ``session_ttl_s`` passes or ``process.remove``)."""

    def __init__(self, sessions: Sessions) -> None:
        self.sessions = sessions

    def collect(self) -> Iterator[Metric]:
        counts = dict.fromkeys(STATES, 0)
        try:
            directories = self.sessions.all_directories()
        except FileNotFoundError:  # the pack has not started here yet
            directories = []
        for directory in directories:
            try:
                state = self.sessions.recorded(directory)["state"]
            except ActionError:  # starting, or removed while we looked
                continue
            if state in counts:
                counts[state] += 1
        family = GaugeMetricFamily(
            "openexec_exec_sessions",
            "The exec pack's sessions on this instance, by state.",
            labels=["state"],
        )
        for state, count in counts.items():
            family.add_metric([state], count)
        yield family
