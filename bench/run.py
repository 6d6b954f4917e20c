"""The load benchmark: ``bench/run.sh [--quick] [--memory] [--growth] [--profile] ...``.

Each scenario gets a fresh database and a fresh ``python -m uvicorn`` process, is driven by wrk
with pre-minted bodies (bench/post.lua), and is compared with the ceiling app (bench/ceiling.py)
measured in the same invocation under the same flags. After each scenario the database itself
is read to check that every answered request ran exactly once and succeeded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from bench.bodies import body, mint_bodies, nonce_of, write_bodies
from bench.server import REPO, BenchFailure, Server, running
from bench.stores import Database, Postgres, sqlite_database
from bench.wrk import WrkResult, ensure_wrk, run_wrk
from openexec.receipts import private_key_pem

CEILING_APP = "bench.ceiling:app"
SERVICE_APP = "main:app"
BODY_MARGIN = 1.5  # bodies minted per request the ceiling says a scenario could possibly send
CEILING_BODIES = 5000  # the ceiling keeps no state, so these are sent round and round
SETTLE_S = 0.5  # lets requests wrk abandoned at the end of a run finish before reading the store


@dataclass(frozen=True)
class Scenario:
    label: str
    app: str = SERVICE_APP
    mode: str = "clawshield"
    action: str = "echo"
    approval: str | None = "v1"
    store: str = "sqlite"
    workers: int = 1
    replay: bool = False

    @property
    def is_ceiling(self) -> bool:
        return self.app == CEILING_APP


CEILING = Scenario("ceiling (no database)", app=CEILING_APP)
CEILING_2W = Scenario("ceiling (no database)", app=CEILING_APP, workers=2)
V1 = Scenario("clawshield v1 echo")
V1_2W = Scenario("clawshield v1 echo", workers=2)
REPLAY = Scenario("clawshield v1 replay", replay=True)
V1_PG = Scenario("clawshield v1 echo", store="postgresql")
REPLAY_PG = Scenario("clawshield v1 replay", store="postgresql", replay=True)
DEFAULT_SCENARIOS = (
    CEILING,
    Scenario("demo echo", mode="demo", approval=None),
    V1,
    Scenario("clawshield v2 echo", approval="v2"),
    REPLAY,
    Scenario("clawshield v1 files.write", action="files.write"),
    V1_PG,
    REPLAY_PG,
    CEILING_2W,
    V1_2W,
)


@dataclass(frozen=True)
class Load:
    """How hard and how long wrk drives each scenario."""

    duration_s: float
    warmup_s: float
    threads: int = 2
    connections: int = 32


@dataclass(frozen=True)
class Outcome:
    scenario: Scenario
    result: WrkResult
    check: str


@dataclass
class Bench:
    """What every scenario of one invocation shares: keys, load, scratch space, the ceiling."""

    load: Load
    workdir: Path
    use_postgres: bool
    approver: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    ceiling_rps: dict[int, float] = field(default_factory=dict)
    _postgres: Postgres | None = None
    _runs: int = 0

    def __post_init__(self) -> None:
        self.receipt_key = self.workdir / "receipt-key.pem"
        self.receipt_key.write_bytes(private_key_pem(Ed25519PrivateKey.generate()))
        self.approver_pem = (
            self.approver.public_key()
            .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )

    def postgres(self) -> Postgres:
        if self._postgres is None:
            self._postgres = Postgres()
        return self._postgres

    def scratch(self, label: str) -> Path:
        self._runs += 1
        directory = self.workdir / f"{self._runs:02d}-{label.replace(' ', '-')}"
        directory.mkdir()
        return directory

    def database(self, store: str, directory: Path) -> Database:
        if store == "sqlite":
            return sqlite_database(directory)
        return self.postgres().database(directory.name.split("-")[0])

    def env(self, scenario: Scenario, database: Database, directory: Path) -> dict[str, str]:
        return {
            "OPENEXEC_MODE": scenario.mode,
            "CLAWSHIELD_PUBLIC_KEY": self.approver_pem,
            "OPENEXEC_DB_URL": database.url,
            "OPENEXEC_FILES_ROOT": str(directory / "files"),
            "OPENEXEC_RECEIPT_KEY": str(self.receipt_key),
        }

    def budget(self, workers: int, seconds: float) -> int:
        """Bodies enough for ``seconds`` at the ceiling's pace: no scenario should outrun it,
        and one that does fails loudly (post.lua's exhausted counter) instead of replaying."""
        ceiling = self.ceiling_rps.get(workers) or max(self.ceiling_rps.values()) * workers
        return int(ceiling * seconds * BODY_MARGIN) + 200

    def mint(self, scenario: Scenario, space: Space, name: str, count: int) -> Path:
        """A file of ``count`` bodies; ``name`` must be unique within the scenario's database."""
        path = space.directory / f"{name}.jsonl"
        bodies = mint_bodies(scenario.action, scenario.approval, count, self.approver, name)
        write_bodies(path, bodies)
        return path

    def drive(self, server: Server, bodies: Path, seconds: float, mode: str) -> WrkResult:
        return run_wrk(
            server.url,
            bodies,
            duration_s=seconds,
            threads=self.load.threads,
            connections=self.load.connections,
            mode=mode,
        )


@dataclass(frozen=True)
class Space:
    """One scenario's scratch directory, database and service environment."""

    directory: Path
    database: Database
    env: dict[str, str]

    @property
    def files_root(self) -> Path:
        return self.directory / "files"

    def serve(self, scenario: Scenario) -> AbstractContextManager[Server]:
        return running(scenario.app, self.env, scenario.workers, self.directory / "server.log")


@contextmanager
def scenario_space(bench: Bench, scenario: Scenario, label: str) -> Iterator[Space]:
    """Fresh state for one scenario; afterwards only its server log is kept."""
    directory = bench.scratch(label)
    database = bench.database(scenario.store, directory)
    try:
        yield Space(directory, database, bench.env(scenario, database, directory))
    finally:
        database.drop()
        for item in directory.iterdir():
            if item.is_dir():
                shutil.rmtree(item)
            elif item.name != "server.log":
                item.unlink()


def run_scenario(bench: Bench, scenario: Scenario) -> Outcome:
    load = bench.load
    with scenario_space(bench, scenario, scenario.label) as space:
        if scenario.is_ceiling:
            return run_ceiling(bench, scenario, space)
        warmup = bench.mint(
            scenario, space, "warmup", bench.budget(scenario.workers, load.warmup_s)
        )
        if not scenario.replay:
            main = bench.mint(
                scenario, space, "main", bench.budget(scenario.workers, load.duration_s)
            )
        with space.serve(scenario) as server:
            warm = bench.drive(server, warmup, load.warmup_s, "once")
            if scenario.replay:
                time.sleep(SETTLE_S)
                stored = space.database.status_counts()
                replays = select_bodies(
                    warmup, space.database.succeeded_nonces(), space.directory / "replay.jsonl"
                )
                result = bench.drive(server, replays, load.duration_s, "replay")
            else:
                result = bench.drive(server, main, load.duration_s, "once")
        if scenario.replay:
            check = check_replays(space.database, stored, result.requests)
        else:
            files = space.files_root if scenario.action == "files.write" else None
            answered = warm.requests + result.requests
            check = check_exactly_once(space.database, answered, 2 * load.connections, files)
    return Outcome(scenario, result, check)


def run_ceiling(bench: Bench, scenario: Scenario, space: Space) -> Outcome:
    """The ceiling is stateless, so one file of bodies can be sent round and round."""
    bodies = bench.mint(scenario, space, "ceiling", CEILING_BODIES)
    with space.serve(scenario) as server:
        bench.drive(server, bodies, bench.load.warmup_s, "cycle")
        result = bench.drive(server, bodies, bench.load.duration_s, "cycle")
    bench.ceiling_rps[scenario.workers] = result.rps
    return Outcome(scenario, result, "stateless")


def select_bodies(source: Path, nonces: set[str], target: Path) -> Path:
    """The lines of ``source`` whose nonce is in ``nonces``: requests known to have finished."""
    with source.open() as lines, target.open("w") as out:
        kept = sum(out.write(line) > 0 for line in lines if nonce_of(line) in nonces)
    if not kept:
        raise BenchFailure(f"no finished executions to replay from {source.name}")
    return target


def check_exactly_once(
    database: Database, answered: int, slack: int, files_root: Path | None = None
) -> str:
    """Read the store after the server stopped: one succeeded row per answered request, plus at
    most ``slack`` rows for requests wrk abandoned mid-flight when its time was up."""
    counts = database.status_counts()
    rows = sum(counts.values())
    if set(counts) != {"succeeded"}:
        raise BenchFailure(f"not every execution succeeded: {counts}")
    if not answered <= rows <= answered + slack:
        raise BenchFailure(f"{answered} answered requests but {rows} stored executions")
    if files_root is not None:
        written = sum(1 for _ in files_root.iterdir())
        if written != rows:
            raise BenchFailure(f"{rows} files.write executions but {written} files on disk")
    return f"{rows} rows, each once"


def check_replays(database: Database, before: dict[str, int], replays: int) -> str:
    after = database.status_counts()
    if after != before:
        raise BenchFailure(f"replays changed the store: {before} -> {after}")
    return f"{replays} replays, 0 new rows"


# Reporting.

COLUMNS = (
    f"{'scenario':<27} {'store':<10} {'workers':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}"
    f" {'x ceil rps':>10} {'x ceil p99':>10}  check"
)


def row(outcome: Outcome, ceiling: Outcome | None) -> str:
    scenario, result = outcome.scenario, outcome.result
    store = "-" if scenario.is_ceiling else scenario.store
    if ceiling is None:
        ratios = f"{'':>10} {'':>10}"
    else:
        rps_ratio = result.rps / ceiling.result.rps
        p99_ratio = result.p99_ms / ceiling.result.p99_ms
        ratios = f"{rps_ratio:>9.2f}x {p99_ratio:>9.2f}x"
    return (
        f"{scenario.label:<27} {store:<10} {scenario.workers:>7} {result.rps:>8.0f}"
        f" {result.p50_ms:>8.1f} {result.p99_ms:>8.1f} {ratios}  {outcome.check}"
    )


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def print_targets(outcomes: dict[Scenario, Outcome]) -> None:
    """The issue's targets, judged only from figures printed above."""
    ceiling, v1 = outcomes.get(CEILING), outcomes.get(V1)
    print("\nTargets (1 uvicorn worker, 32 connections, SQLite synchronous=FULL):")
    if ceiling and v1:
        rps = v1.result.rps / ceiling.result.rps
        p99 = v1.result.p99_ms / ceiling.result.p99_ms
        print(
            f"  clawshield v1 echo throughput >= 0.60x ceiling: {rps:.2f}x  {verdict(rps >= 0.6)}"
        )
        print(f"  clawshield v1 echo p99 <= 2.00x ceiling p99:    {p99:.2f}x  {verdict(p99 <= 2)}")
    replay = outcomes.get(REPLAY)
    if ceiling and replay:
        rps = replay.result.rps / ceiling.result.rps
        print(
            f"  replay throughput >= 0.80x ceiling:             {rps:.2f}x  {verdict(rps >= 0.8)}"
        )
    v1_2w = outcomes.get(V1_2W)
    if v1 and v1_2w:
        gain = v1_2w.result.rps / v1.result.rps
        print(f"  2 workers raise v1 echo throughput:             {gain:.2f}x  {verdict(gain > 1)}")
    ceiling_2w = outcomes.get(CEILING_2W)
    if ceiling and ceiling_2w:
        ratio = ceiling_2w.result.rps / ceiling.result.rps
        print(
            f"  (the 2-worker ceiling runs at {ratio:.2f}x the 1-worker one: with --workers N"
            " uvicorn leaves TCP_NODELAY off; see bench/README.md)"
        )


def run_table(bench: Bench) -> None:
    print(COLUMNS, flush=True)
    outcomes: dict[Scenario, Outcome] = {}
    for scenario in DEFAULT_SCENARIOS:
        if scenario.store == "postgresql" and not bench.use_postgres:
            continue
        outcome = run_scenario(bench, scenario)
        outcomes[scenario] = outcome
        print(row(outcome, None if scenario == CEILING else outcomes[CEILING]), flush=True)
    print_targets(outcomes)


# --memory: resident memory across a long run of new executions.

MIB = 1024 * 1024
MEMORY_WARMUP_S = 10.0  # the first round; RSS after it is the baseline "flat" is judged against
MEMORY_ROUND_S = 30.0
MEMORY_FLAT = 0.05  # "flat": at most 5% growth after the first (warm-up) round


def run_memory(bench: Bench, total: int) -> None:
    """Demo-mode echo with a unique nonce per request, in rounds of fresh bodies, until
    ``total`` requests were answered; RSS is read between rounds, while the server idles."""
    scenario = Scenario("demo echo, unique nonces", mode="demo", approval=None)
    connections = bench.load.connections
    print(f"\nMemory: {total:,} requests, {scenario.label}, 1 worker, SQLite", flush=True)
    with scenario_space(bench, scenario, "memory") as space:
        with space.serve(scenario) as server:
            samples = [(0, server.rss_bytes())]
            print(f"  {0:>9,} requests {'':>13} RSS {samples[0][1] / MIB:7.1f} MiB", flush=True)
            rps, answered, rounds = bench.budget(1, 1) / BODY_MARGIN, 0, 0
            while answered < total:
                full = MEMORY_ROUND_S if rounds else MEMORY_WARMUP_S
                seconds = min(full, max(2.0, (total - answered) / rps))
                count = int(rps * seconds * BODY_MARGIN) + 500
                bodies = bench.mint(scenario, space, f"round{rounds}", count)
                result = bench.drive(server, bodies, seconds, "once")
                answered, rps, rounds = answered + result.requests, result.rps, rounds + 1
                samples.append((answered, server.rss_bytes()))
                print(
                    f"  {answered:>9,} requests {result.rps:>7.0f} req/s"
                    f" RSS {samples[-1][1] / MIB:7.1f} MiB",
                    flush=True,
                )
        check = check_exactly_once(space.database, answered, rounds * 2 * connections)
    (_, idle), (warm_count, warm), (_, end) = samples[0], samples[1], samples[-1]
    growth = (end - warm) / warm
    per_request = (end - warm) / max(answered - warm_count, 1)
    print(f"  RSS before: {idle / MIB:.1f} MiB idle, {warm / MIB:.1f} MiB after the first round")
    print(f"  RSS after:  {end / MIB:.1f} MiB after {answered:,} requests ({check})")
    print(
        f"  growth after the first round: {growth:+.1%} ({per_request:+.1f} bytes/request)"
        f"  flat (<= {MEMORY_FLAT:.0%}): {verdict(growth <= MEMORY_FLAT)}"
    )


# --growth: latency with a large store against an empty one.

GROWTH_LIMIT = 1.2
REPLAY_SAMPLE = 5000


@dataclass(frozen=True)
class GrowthPhase:
    stored: int
    execute: WrkResult
    replay: WrkResult


def run_growth(bench: Bench, rows: int) -> None:
    """Per store: v1 echo and replay on an empty store, then on one seeded with ``rows``
    executions (bulk-inserted copies of a real row), replaying a sample of the seeded rows."""
    stores = ["sqlite", "postgresql"] if bench.use_postgres else ["sqlite"]
    print(f"\nGrowth: clawshield v1 echo and replay, empty store vs {rows:,} stored executions")
    print(
        f"{'store':<10} {'stored':>10} {'exec req/s':>10} {'p50 ms':>7} {'p99 ms':>7}"
        f" {'replay req/s':>12} {'p50 ms':>7} {'p99 ms':>7}",
        flush=True,
    )
    for store in stores:
        scenario = Scenario("growth", store=store)
        empty, template = growth_phase(bench, scenario, 0, None)
        print(growth_row(store, empty), flush=True)
        seeded, _ = growth_phase(bench, scenario, rows, template)
        print(growth_row(store, seeded), flush=True)
        for name in ("execute", "replay"):
            before, after = getattr(empty, name), getattr(seeded, name)
            p50, p99 = after.p50_ms / before.p50_ms, after.p99_ms / before.p99_ms
            ok = p50 <= GROWTH_LIMIT and p99 <= GROWTH_LIMIT
            print(
                f"  {store} {name}: p50 {p50:.2f}x, p99 {p99:.2f}x, req/s"
                f" {after.rps / before.rps:.2f}x of the empty store"
                f"  within {GROWTH_LIMIT}x: {verdict(ok)}"
            )


def growth_row(store: str, phase: GrowthPhase) -> str:
    execute, replay = phase.execute, phase.replay
    return (
        f"{store:<10} {phase.stored:>10,} {execute.rps:>10.0f} {execute.p50_ms:>7.1f}"
        f" {execute.p99_ms:>7.1f} {replay.rps:>12.0f} {replay.p50_ms:>7.1f} {replay.p99_ms:>7.1f}"
    )


Template = tuple[dict[str, object], str]  # a stored row, and the request body that made it


def growth_phase(
    bench: Bench, scenario: Scenario, rows: int, template: Template | None
) -> tuple[GrowthPhase, Template]:
    load = bench.load
    with scenario_space(bench, scenario, f"growth-{scenario.store}-{rows}") as space:
        sample: list[str] = []
        if rows:
            assert template is not None
            space.database.prepare()
            seconds, sample = space.database.seed(rows, template[0], REPLAY_SAMPLE)
            print(f"  seeded {rows:,} rows into {scenario.store} in {seconds:.0f}s", flush=True)
        warmup = bench.mint(scenario, space, "warmup", bench.budget(1, load.warmup_s))
        main = bench.mint(scenario, space, "main", bench.budget(1, load.duration_s))
        with space.serve(scenario) as server:
            bench.drive(server, warmup, load.warmup_s, "once")
            execute = bench.drive(server, main, load.duration_s, "once")
            time.sleep(SETTLE_S)
            if rows:
                replays = space.directory / "replay.jsonl"
                write_bodies(replays, (with_nonce(template[1], nonce) for nonce in sample))
            else:
                nonces = space.database.succeeded_nonces()
                replays = select_bodies(main, nonces, space.directory / "replay.jsonl")
            stored = space.database.status_counts()
            replay = bench.drive(server, replays, load.duration_s, "replay")
        check_replays(space.database, stored, replay.requests)
        if template is None:
            row_ = space.database.template_row()
            template = (row_, body_for((warmup, main), str(row_["nonce"])))
        total = sum(stored.values())
    return GrowthPhase(total, execute, replay), template


def with_nonce(line: str, nonce: str) -> str:
    request = json.loads(line)
    return body(request["action"], request["payload"], nonce, request["approval_artifact"])


def body_for(files: tuple[Path, ...], nonce: str) -> str:
    """The request body, from one of ``files``, that was sent with ``nonce``."""
    for path in files:
        with path.open() as lines:
            for line in lines:
                if nonce_of(line) == nonce:
                    return line.rstrip("\n")
    raise BenchFailure(f"no body with nonce {nonce!r} was minted")


# --profile: where the clawshield v1 scenario spends its time, server side.

PROFILE_RATE = 250


def run_profile(bench: Bench) -> None:
    """Record the v1 echo server with py-spy while wrk drives it: once sampling every busy
    thread (where wall time goes) and once only the thread holding the GIL (what serialises)."""
    spy = py_spy()
    load = bench.load
    print("\nProfile: clawshield v1 echo, 1 worker, SQLite (py-spy)", flush=True)
    with scenario_space(bench, V1, "profile") as space:
        warmup = bench.mint(V1, space, "warmup", bench.budget(1, load.warmup_s))
        runs = {
            gil: bench.mint(V1, space, f"profile{int(gil)}", bench.budget(1, load.duration_s))
            for gil in (False, True)
        }
        with space.serve(V1) as server:
            bench.drive(server, warmup, load.warmup_s, "once")
            for gil, bodies in runs.items():
                output = Path(tempfile.gettempdir()) / f"openexec-bench-profile{'-gil' * gil}.txt"
                command = [
                    spy,
                    "record",
                    "--pid",
                    str(server.pid),
                    "--duration",
                    str(round(load.duration_s)),
                    "--rate",
                    str(PROFILE_RATE),
                    "--format",
                    "raw",
                    "--output",
                    str(output),
                    "--nonblocking",
                ] + (["--gil"] if gil else [])
                recorder = subprocess.Popen(
                    command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
                )
                result = bench.drive(server, bodies, load.duration_s, "once")
                _, errors = recorder.communicate()
                if recorder.returncode != 0:
                    raise BenchFailure(f"py-spy failed: {errors.decode(errors='replace')}")
                what = "GIL holder only" if gil else "all busy threads"
                print(f"\n  {what}: {result.rps:.0f} req/s while recording; stacks in {output}")
                summarise_profile(output)


def py_spy() -> str:
    """py-spy from the venv, installed with pip when missing."""
    path = Path(sys.executable).parent / "py-spy"
    if not path.exists():
        print("bench: installing py-spy into the venv", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "py-spy"], check=True)
    return str(path)


# Each sample is charged to the first category found walking its stack from the leaf up, so
# e.g. json.dumps called by the engine counts as JSON, not as engine code.
PROFILE_CATEGORIES = (
    ("SQLite C: execute (incl. waits for the write lock)", ("do_execute (",)),
    ("SQLite C: commit (fsync)", ("do_commit (",)),
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


def summarise_profile(path: Path) -> None:
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
    for frame, count in ours.most_common(12):
        print(f"    {count / total:6.1%}  {frame}")


def categorise(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, markers in PROFILE_CATEGORIES:
            if any(marker in frame for marker in markers):
                return name
    return "other"


def frame_name(frame: str) -> str:
    """``func (path/to/file.py:123)`` -> ``func (to/file.py)``: lines merged, paths shortened."""
    name, _, location = frame.partition(" (")
    file = location.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({'/'.join(Path(file).parts[-2:])})" if file else name


# Entry point.


def print_header(bench: Bench) -> None:
    load = bench.load
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    wrk_version = subprocess.run([ensure_wrk(), "-v"], capture_output=True, text=True).stdout
    probe = sqlite_database(bench.workdir)
    probe.prepare()
    durability = probe.durability()
    for leftover in bench.workdir.glob("openexec.db*"):
        leftover.unlink()
    print(f"OpenExec benchmark  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  commit {commit or '?'}")
    print(
        f"  machine: {os.cpu_count()} cores, Python {platform.python_version()},"
        f" {wrk_version.splitlines()[0] if wrk_version else 'wrk'}"
    )
    print(
        f"  load: wrk -t{load.threads} -c{load.connections} -d{load.duration_s:g}s"
        f" after a {load.warmup_s:g}s warm-up; wrk shares the cores with the server"
    )
    print(
        "  server: python -m uvicorn APP --workers N --log-level warning --no-access-log;"
        " a fresh process and database per scenario"
    )
    print(
        f"  SQLite as the service opens it: synchronous={durability['synchronous']},"
        f" journal_mode={durability['journal_mode']}\n",
        flush=True,
    )
    if durability["synchronous"] not in ("FULL", "EXTRA"):
        raise BenchFailure(
            "the targets are for durable commits, but SQLite is not synchronous=FULL"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run.sh", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs (about 2 minutes)")
    parser.add_argument("--memory", action="store_true", help="RSS across a long run instead")
    parser.add_argument("--growth", action="store_true", help="large store vs empty instead")
    parser.add_argument("--profile", action="store_true", help="py-spy the v1 scenario instead")
    parser.add_argument("--table", action="store_true", help="also the throughput table")
    parser.add_argument("--skip-postgres", action="store_true", help="SQLite scenarios only")
    parser.add_argument("--duration", type=float, help="seconds per measurement (default 10)")
    parser.add_argument("--memory-requests", type=int, help="default 200,000 (--quick 20,000)")
    parser.add_argument("--growth-rows", type=int, help="default 1,000,000 (--quick 100,000)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load = Load(
        duration_s=args.duration or (4.0 if args.quick else 10.0),
        warmup_s=1.0 if args.quick else 3.0,
    )
    workdir = Path(tempfile.mkdtemp(prefix="openexec-bench-"))
    bench = Bench(load, workdir, use_postgres=not args.skip_postgres)
    special = args.memory or args.growth or args.profile
    try:
        print_header(bench)
        if args.table or not special:
            run_table(bench)
        elif not bench.ceiling_rps:  # the other modes size their body files by the ceiling
            ceiling = run_scenario(bench, CEILING)
            print(COLUMNS)
            print(row(ceiling, None), flush=True)
        if args.growth:
            run_growth(bench, args.growth_rows or (100_000 if args.quick else 1_000_000))
        if args.memory:
            run_memory(bench, args.memory_requests or (20_000 if args.quick else 200_000))
        if args.profile:
            run_profile(bench)
    except BenchFailure as failure:
        print(f"\nbench: FAILED: {failure}\n  (scratch files and server logs kept in {workdir})")
        return 1
    shutil.rmtree(workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
