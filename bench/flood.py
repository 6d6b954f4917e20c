"""How much unauthenticated requests can delay the others: ``python -m bench.flood``.

A clawshield-mode server (one worker, three approver keys) answers ``GET /health`` in a loop
while another client floods it, in two rounds:

* ``signatures``: v2 approvals carrying ``FLOOD_SIGNATURES`` signatures, each one shaped to
  cost a full Ed25519 verification. Before signatures were bounded
  (openexec.signing.MAX_SIGNATURES), each such request held the event loop for seconds.
* ``floats``: a megabyte of floats and no approval. The 403 carries the request's hashes, and
  canonical JSON of floats is rfc8785's pure-Python path; it runs on a worker thread.

It prints the probes' latency alone and under each flood, and the ratios, from one run.
"""

from __future__ import annotations

import base64
import json
import os
import statistics
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.server import running
from openexec.approvals import mint_v2
from openexec.receipts import public_key_pem

FLOOD_SIGNATURES = 5000
FLOOD_REQUESTS = 20
FLOATS = 50_000  # about 1 MB of JSON: the largest body the default limit takes
PROBES = 200


def flood_body(approver: Ed25519PrivateKey, number: int) -> bytes:
    envelope = mint_v2(approver, "echo", {})
    junk = [
        {"keyid": "", "sig": base64.b64encode(os.urandom(63) + b"\x01").decode()}
        for _ in range(FLOOD_SIGNATURES)
    ]
    envelope["signatures"] = junk + envelope["signatures"]
    body = {"action": "echo", "payload": {}, "nonce": f"flood-{number}"}
    return json.dumps({**body, "approval_artifact": envelope}).encode()


def float_body(number: int) -> bytes:
    payload = {"a": [0.1 + n for n in range(FLOATS)]}
    return json.dumps({"action": "echo", "payload": payload, "nonce": f"floats-{number}"}).encode()


def post(url: str, body: bytes) -> int:
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status
    except urllib.error.HTTPError as refused:
        return refused.code


def probe_latencies_ms(
    url: str, count: int, while_running: threading.Thread | None = None
) -> list[float]:
    """``count`` probes, or as many as it takes for ``while_running`` to end."""
    latencies: list[float] = []
    while len(latencies) < count or (while_running is not None and while_running.is_alive()):
        started = time.perf_counter()
        with urllib.request.urlopen(url + "/health", timeout=120) as answer:
            answer.read()
        latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def summary(latencies: list[float]) -> str:
    return (
        f"{len(latencies)} probes: p50 {statistics.median(latencies):7.2f} ms   "
        f"p99 {p99(latencies):8.2f} ms   max {max(latencies):8.2f} ms"
    )


def main() -> None:
    approver = Ed25519PrivateKey.generate()
    keys = [Ed25519PrivateKey.generate().public_key() for _ in range(2)] + [approver.public_key()]
    floods = {
        "signatures": [flood_body(approver, n) for n in range(FLOOD_REQUESTS)],
        "floats": [float_body(n) for n in range(FLOOD_REQUESTS)],
    }
    with tempfile.TemporaryDirectory() as directory:
        env = {
            "OPENEXEC_MODE": "clawshield",
            "CLAWSHIELD_PUBLIC_KEY": "".join(public_key_pem(key) for key in keys),
            "OPENEXEC_DB_URL": f"sqlite:///{Path(directory) / 'openexec.db'}",
            "OPENEXEC_FILES_ROOT": str(Path(directory) / "files"),
        }
        with running("main:app", env, 1, Path(directory) / "server.log") as server:
            quiet = probe_latencies_ms(server.url, PROBES)
            print(f"/health alone:              {summary(quiet)}")
            for name, bodies in floods.items():
                statuses: list[int] = []

                def flood(bodies: list[bytes] = bodies, statuses: list[int] = statuses) -> None:
                    statuses.extend(post(server.url + "/execute", body) for body in bodies)

                flooding = threading.Thread(target=flood)
                flooding.start()
                loud = probe_latencies_ms(server.url, PROBES, while_running=flooding)
                flooding.join()
                print(
                    f"/health under {name:>10} flood: {summary(loud)}   "
                    f"p99 {p99(loud) / p99(quiet):.2f}x alone; "
                    f"{FLOOD_REQUESTS} answered {sorted(set(statuses))}"
                )


if __name__ == "__main__":
    main()
