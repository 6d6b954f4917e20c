"""Drive a server with wrk and bench/post.lua, and read back what the Lua ``done`` hook printed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from statistics import median

from bench.server import BenchFailure

LUA_SCRIPT = Path(__file__).resolve().parent / "post.lua"


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s


@dataclass(frozen=True)
class Measurement:
    """Several wrk rounds summarised by their medians: on this 2-core machine one round's
    throughput can swing by a third, the median of three much less. ``ceiling_rounds``, when
    present, are the ceiling's rounds, each run just before the round of the same index."""

    rounds: tuple[WrkResult, ...]
    ceiling_rounds: tuple[WrkResult, ...] = ()

    def against_ceiling(self, attribute: str) -> float:
        """The median over rounds of this round's figure over the ceiling's just before it.
        The machine's speed drifts by a third within minutes; two adjacent rounds share it,
        a scenario and a ceiling measured minutes apart do not."""
        pairs = zip(self.rounds, self.ceiling_rounds, strict=True)
        return median(getattr(own, attribute) / getattr(other, attribute) for own, other in pairs)

    @property
    def requests(self) -> int:
        return sum(result.requests for result in self.rounds)

    @property
    def rps(self) -> float:
        return median(result.rps for result in self.rounds)

    @property
    def p50_ms(self) -> float:
        return median(result.p50_ms for result in self.rounds)

    @property
    def p99_ms(self) -> float:
        return median(result.p99_ms for result in self.rounds)

    @property
    def rps_range(self) -> str:
        rates = [result.rps for result in self.rounds]
        return f"{min(rates):.0f}-{max(rates):.0f}"


def ensure_wrk() -> str:
    """The wrk binary, installed from Debian's packages when missing (needs root)."""
    found = shutil.which("wrk")
    if found:
        return found
    print("bench: wrk not found; installing it with apt-get", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "wrk"]):
        subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    found = shutil.which("wrk")
    if not found:
        raise BenchFailure("apt-get installed wrk but it is not on PATH")
    return found


def run_wrk(
    url: str,
    bodies: Path,
    *,
    duration_s: float,
    threads: int,
    connections: int,
    mode: str,
) -> WrkResult:
    """One wrk run; raises BenchFailure on any non-200 answer, socket error, timeout, missing
    replay or exhausted body file, because a benchmark of refusals measures nothing."""
    command = [
        ensure_wrk(),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        "--timeout",
        "30s",
        "-s",
        str(LUA_SCRIPT),
        url,
        "--",
        str(bodies),
        str(threads),
        mode,
    ]
    finished = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = finished.stdout.splitlines()
    summary = [line.removeprefix("BENCH ") for line in lines if line.startswith("BENCH {")]
    failures = [line.removeprefix("BENCH_FAILURE ") for line in lines if "BENCH_FAILURE" in line]
    if finished.returncode != 0 or not summary:
        raise BenchFailure(
            f"wrk failed ({finished.returncode}):\n{finished.stdout}{finished.stderr}"
        )
    stats = json.loads(summary[-1])
    problems = {
        "non-200 answers": stats["non200"],
        "answers that were not replays": stats["not_replayed"],
        "requests past the end of the body file (mint more bodies)": stats["exhausted"],
        "connect errors": stats["connect_errors"],
        "read errors": stats["read_errors"],
        "write errors": stats["write_errors"],
        "timeouts": stats["timeouts"],
    }
    found = {name: count for name, count in problems.items() if count}
    if found:
        listed = ", ".join(f"{count} {name}" for name, count in found.items())
        first = "".join(f"\n  first failure: {failure}" for failure in failures)
        raise BenchFailure(f"{listed} out of {stats['requests']} requests{first}")
    return WrkResult(
        requests=stats["requests"],
        duration_s=stats["duration_us"] / 1e6,
        p50_ms=stats["p50_us"] / 1000,
        p99_ms=stats["p99_us"] / 1000,
        max_ms=stats["max_us"] / 1000,
    )
