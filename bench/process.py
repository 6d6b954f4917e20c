"""Sessions under load: ``python -m bench.process [--seconds S] [--samples N]``.

One ``python -m uvicorn main:app`` worker in demo mode with the echo and exec packs, SQLite.
Every figure is a whole execution (nonce, store, receipt), measured against ``echo`` in the
same run so that a noisy machine moves both:

* ``process.poll`` with output flowing: a command prints a 100-byte line every millisecond
  (about 100 KB/s) and the poller follows it by byte offset. Latency: one caller, one poll
  after another. Throughput: 8 callers for ``--seconds``.
* ``send_keys`` round trip: one key to ``cat`` on a PTY, then polls (``wait_ms``) until the
  terminal's echo of it comes back.

It prints the figures; nothing is asserted.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import median, quantiles
from typing import Any

import httpx2 as httpx

from bench.server import running

CALLERS = 8
FLOW = "import time\nwhile True:\n    print('x' * 99, flush=True)\n    time.sleep(0.001)\n"
_nonces = itertools.count()


def call(client: httpx.Client, action: str, payload: dict[str, Any]) -> dict[str, Any]:
    body = {"action": action, "payload": payload, "nonce": f"b-{next(_nonces)}"}
    answer = client.post("/execute", json=body).json()
    if answer.get("status") != "succeeded":
        raise RuntimeError(f"{action}: {answer}")
    return answer["result"]


def latencies_ms(samples: int, once: Any) -> list[float]:
    measured = []
    for _ in range(samples):
        began = time.perf_counter()
        once()
        measured.append((time.perf_counter() - began) * 1000)
    return measured


def throughput(seconds: float, once: Any) -> float:
    deadline = time.monotonic() + seconds

    def caller() -> int:
        done = 0
        while time.monotonic() < deadline:
            once()
            done += 1
        return done

    with ThreadPoolExecutor(CALLERS) as pool:
        counts = list(pool.map(lambda _: caller(), range(CALLERS)))
    return sum(counts) / seconds


def follower(client: httpx.Client, session: str, start: int) -> Any:
    """A poll that follows the output; each thread keeps its own offset."""
    offsets = threading.local()

    def poll() -> None:
        answer = call(
            client,
            "process.poll",
            {"session_id": session, "stdout_offset": getattr(offsets, "next", start)},
        )
        offsets.next = answer["next_stdout_offset"]

    return poll


def shown(name: str, measured: list[float]) -> str:
    p99 = quantiles(measured, n=100)[98]
    return f"{name:<28} p50 {median(measured):6.2f} ms   p99 {p99:6.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--samples", type=int, default=400)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="openexec-bench-process-") as scratch:
        directory = Path(scratch)
        (directory / "policy.toml").write_text('security = "full"\n')
        env = {
            "OPENEXEC_PLUGINS": "openexec-echo,openexec-exec",
            "OPENEXEC_DB_URL": f"sqlite:///{directory / 'openexec.db'}",
            "OPENEXEC_EXEC_WORKSPACE": str(directory / "workspace"),
            "OPENEXEC_EXEC_STATE": str(directory / "state"),
            "OPENEXEC_EXEC_POLICY": str(directory / "policy.toml"),
        }
        with (
            running("main:app", env, 1, directory / "uvicorn.log") as server,
            httpx.Client(base_url=server.url, timeout=60) as client,
        ):
            measure(client, args.samples, args.seconds)


def measure(client: httpx.Client, samples: int, seconds: float) -> None:
    echo = lambda: call(client, "echo", {"message": "hi"})  # noqa: E731
    flowing = call(client, "exec.run", {"argv": ["python3", "-c", FLOW], "background": True})
    session = flowing["session_id"]
    offset = 0
    received = 0

    def poll() -> None:
        nonlocal offset, received
        answer = call(client, "process.poll", {"session_id": session, "stdout_offset": offset})
        received += answer["next_stdout_offset"] - offset
        offset = answer["next_stdout_offset"]

    echo_ms = latencies_ms(samples, echo)
    poll_ms = latencies_ms(samples, poll)
    print(shown("echo", echo_ms))
    print(shown("process.poll (output flowing)", poll_ms))
    print(f"  followed {received} bytes by offset")

    echo_rate = throughput(seconds, echo)
    poll_rate = throughput(seconds, follower(client, session, offset))
    print(f"echo throughput              {echo_rate:7.1f} /s ({CALLERS} callers)")
    print(f"process.poll throughput      {poll_rate:7.1f} /s, {poll_rate / echo_rate:.2f}x echo")
    call(client, "process.kill", {"session_id": session, "signal": "KILL"})

    terminal = call(client, "exec.run", {"argv": ["cat"], "pty": True, "background": True})
    cat = terminal["session_id"]
    position = 0

    def round_trip() -> None:
        nonlocal position
        call(client, "process.send_keys", {"session_id": cat, "keys": ["x"]})
        while True:
            answer = call(
                client, "process.poll", {"session_id": cat, "offset": position, "wait_ms": 5000}
            )
            position = answer["next_offset"]
            if "x" in answer["output"]:
                return

    print(shown("send_keys round trip", latencies_ms(samples // 2, round_trip)))
    call(client, "process.kill", {"session_id": cat, "signal": "KILL"})


if __name__ == "__main__":
    main()
