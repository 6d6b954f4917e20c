"""``openexec_exec_sessions``: the sessions by state, read from the state directory when
``GET /metrics`` is scraped."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

FULL = 'security = "full"\n'


def sessions_by_state(host) -> dict[str, float]:
    answer = host.client.get("/metrics")
    assert answer.status_code == 200, answer.text
    return {
        sample.labels["state"]: sample.value
        for family in text_string_to_metric_families(answer.text)
        if family.name == "openexec_exec_sessions"
        for sample in family.samples
    }


def test_sessions_are_counted_by_state_at_each_scrape(exec_host) -> None:
    host = exec_host(FULL)
    nothing = dict.fromkeys(["running", "exited", "signalled", "timed_out", "lost"], 0.0)
    assert sessions_by_state(host) == nothing
    sleeper = host.start({"argv": ["sleep", "100"]})
    assert host.run({"argv": ["true"]})["state"] == "exited"
    assert sessions_by_state(host) == {**nothing, "running": 1, "exited": 1}
    killed = host.process("kill", {"session_id": sleeper, "signal": "TERM"})
    assert killed["state"] == "signalled"
    assert sessions_by_state(host) == {**nothing, "exited": 1, "signalled": 1}
    host.process("remove", {"session_id": sleeper})
    assert sessions_by_state(host) == {**nothing, "exited": 1}
