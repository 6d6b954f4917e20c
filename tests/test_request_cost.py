"""No request holds the event loop for long: slow canonical JSON runs on a worker thread.

Floats (and keys beyond the BMP) take rfc8785's pure-Python path, about 0.3 s for a megabyte
of them. Every 403 approval_* answer carries the request's hashes (``approval_request``), so
without care an unauthenticated request made the event loop canonicalise its payload several
times while every other request waited. Here rfc8785 reports where it ran and how often.
"""

from __future__ import annotations

import asyncio

import pytest
import rfc8785

from tests.conftest import execute

FLOATS = {"a": [0.5 + n for n in range(2000)], "b": [1e-7] * 100}


@pytest.fixture
def canonicalised(monkeypatch) -> list[tuple[bool, int]]:
    """Each rfc8785 call: whether it ran on an event loop's thread, and its output's size."""
    calls: list[tuple[bool, int]] = []
    real = rfc8785.dumps

    def recording(value):
        try:
            asyncio.get_running_loop()
            on_loop = True
        except RuntimeError:
            on_loop = False
        out = real(value)
        calls.append((on_loop, len(out)))
        return out

    monkeypatch.setattr(rfc8785, "dumps", recording)
    return calls


def big(calls: list[tuple[bool, int]]) -> list[tuple[bool, int]]:
    """The calls that canonicalised the payload (or a result holding it), not small records."""
    return [call for call in calls if call[1] > 10_000]


def test_an_unapproved_float_payload_is_canonicalised_once_off_the_loop(
    make_client, approver, canonicalised
):
    client = make_client(**approver.settings())
    answer = execute(client, "echo", FLOATS, nonce="floats")
    assert answer.status_code == 403 and "approval_request" in answer.json()
    assert big(canonicalised) == [(False, big(canonicalised)[0][1])]


def test_an_approved_float_payload_and_its_result_are_canonicalised_off_the_loop(
    make_client, approver, canonicalised
):
    client = make_client(**approver.settings())
    artifact = approver.v2("echo", FLOATS)
    canonicalised.clear()  # minting hashed the payload too
    answer = execute(client, "echo", FLOATS, nonce="floats", approval_artifact=artifact)
    assert answer.status_code == 200, answer.text
    calls = big(canonicalised)
    assert len(calls) == 2  # the payload once (request and v2 hash), the result once
    assert not any(on_loop for on_loop, _ in calls)


def test_verifying_a_float_result_runs_off_the_loop(client, canonicalised):
    done = execute(client, "echo", FLOATS, nonce="floats").json()
    canonicalised.clear()
    body = {"exec_id": done["id"], "receipt": done["receipt"], "result": done["result"]}
    assert client.post("/receipts/verify", json=body).json()["valid"] is True
    assert big(canonicalised) and not any(on_loop for on_loop, _ in big(canonicalised))
