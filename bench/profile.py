"""``--profile``: where the clawshield v1 echo scenario spends its time, server side (py-spy).

Stacks go to /tmp (never into the repository); the printout charges each sample to a cost
category so the hot path's shares can be compared run to run.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from bench.harness import Bench, Scenario, scenario_space
from bench.server import BenchFailure

RATE = 250  # samples per second per thread
V1 = Scenario("clawshield v1 echo")

# Each sample is charged to the first category found walking its stack from the leaf up, so
# e.g. json.dumps called by the engine counts as JSON, not as engine code.
CATEGORIES = (
    # Statements run on the driver's cursor from openexec/store/: a leaf there is mostly
    # the driver's C code (SQLite's execute, the writer's commit and fsync, waits for locks).
    ("store: driver calls, commit, fsync", ("openexec/store/",)),
    ("SQLAlchemy Python (compile, cache keys, params, rows, pool)", ("sqlalchemy/",)),
    ("Ed25519 sign/verify", ("_verifying_key (", "sign_envelope (", "open_envelope (")),
    ("RFC 8785 canonical JSON", ("rfc8785/",)),
    ("stdlib json", ("json/",)),
    ("pydantic / SQLModel objects", ("pydantic", "sqlmodel/")),
    (
        "thread hand-offs (anyio, futures, locks)",
        ("anyio/", "threading.py", "futures/", "queue.py"),
    ),
    ("logging", ("logging/",)),
    ("HTTP (uvicorn, h11, socket transport)", ("h11/", "uvicorn/protocols", "selector_events.py")),
    ("Starlette / FastAPI", ("starlette/", "fastapi/")),
    ("OpenExec's own Python", ("openexec/",)),
    ("event loop (epoll, scheduling)", ("asyncio/", "selectors.py")),
)


def run_profile(bench: Bench) -> None:
    """Record the v1 echo server while wrk drives it: once sampling every busy thread (where
    wall time goes) and once only the thread holding the GIL (what serialises the process)."""
    spy = py_spy()
    seconds = bench.load.round_s * bench.load.rounds
    print(f"\nProfile: {V1.label}, 1 worker, SQLite, py-spy at {RATE} Hz", flush=True)
    with scenario_space(bench, V1, "profile") as space:
        warmup = bench.mint(V1, space, "warmup", bench.budget(1, bench.load.warmup_s))
        runs = {
            gil: bench.mint(V1, space, f"profile{int(gil)}", bench.budget(1, seconds))
            for gil in (False, True)
        }
        with space.serve(V1) as server:
            bench.warm(server, warmup)
            for gil, bodies in runs.items():
                output = Path(tempfile.gettempdir()) / f"openexec-bench-profile{'-gil' * gil}.txt"
                command = [
                    spy,
                    "record",
                    f"--pid={server.pid}",
                    f"--duration={round(seconds)}",
                    f"--rate={RATE}",
                    "--format=raw",
                    f"--output={output}",
                    "--nonblocking",
                    *(["--gil"] if gil else []),
                ]
                recorder = subprocess.Popen(
                    command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
                )
                result = bench.drive(server, bodies, seconds, "once")
                _, errors = recorder.communicate()
                if recorder.returncode != 0:
                    raise BenchFailure(f"py-spy failed: {errors.decode(errors='replace')}")
                what = "only the thread holding the GIL" if gil else "all busy threads"
                print(f"\n  {what}: {result.rps:.0f} req/s while recording; stacks: {output}")
                summarise(output)


def py_spy() -> str:
    """py-spy from the venv, installed with pip when missing."""
    path = Path(sys.executable).parent / "py-spy"
    if not path.exists():
        print("bench: installing py-spy into the venv", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "py-spy"], check=True)
    return str(path)


def summarise(path: Path) -> None:
    """Share of samples per cost category, the busiest leaf frames, and OpenExec's functions."""
    categories: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count, frames = int(count_text), stack.split(";")
        total += count
        categories[categorise(frames)] += count
        leaves[frame_name(frames[-1])] += count
        for frame in {frame_name(frame) for frame in frames if "openexec/" in frame}:
            ours[frame] += count
    print(f"  {total} samples; by category:")
    for name, count in categories.most_common():
        print(f"    {count / total:6.1%}  {name}")
    print("  busiest leaf frames:")
    for frame, count in leaves.most_common(10):
        print(f"    {count / total:6.1%}  {frame}")
    print("  OpenExec functions, inclusive:")
    for frame, count in ours.most_common(14):
        print(f"    {count / total:6.1%}  {frame}")


def categorise(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, markers in CATEGORIES:
            if any(marker in frame for marker in markers):
                return name
    return "other"


def frame_name(frame: str) -> str:
    """``func (path/to/file.py:123)`` -> ``func (to/file.py)``: lines merged, paths shortened."""
    name, _, location = frame.partition(" (")
    file = location.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({'/'.join(Path(file).parts[-2:])})" if file else name
