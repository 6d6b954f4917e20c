"""The load benchmark: ``bench/run.sh [--quick] [--memory] [--growth] [--profile] ...``.

Each scenario gets a fresh database and a fresh ``python -m uvicorn`` process, is driven by wrk
with pre-minted bodies (bench/post.lua), and is compared with the ceiling app (bench/ceiling.py)
measured in the same invocation under the same flags. After each scenario the database itself
is read to check that every answered request ran exactly once and succeeded.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from statistics import median

from bench.growth import GROWTH_ROUNDS, run_growth
from bench.harness import (
    CEILING_APP,
    SETTLE_S,
    Bench,
    Load,
    Scenario,
    Space,
    check_exactly_once,
    check_replays,
    scenario_space,
    select_bodies,
    verdict,
)
from bench.memory import run_memory
from bench.profile import run_profile
from bench.server import REPO, BenchFailure, Server
from bench.stores import sqlite_database
from bench.wrk import Measurement, ensure_wrk

CEILING_BODIES = 5000  # the ceiling keeps no state, so these are sent round and round

CEILING = Scenario("ceiling (no database)", app=CEILING_APP)
CEILING_2W = Scenario("ceiling (no database)", app=CEILING_APP, workers=2)
V1 = Scenario("clawshield v1 echo")
V1_2W = Scenario("clawshield v1 echo", workers=2)
REPLAY = Scenario("clawshield v1 replay", replay=True)
SCENARIOS = (
    CEILING,
    Scenario("demo echo", mode="demo", approval=None),
    V1,
    Scenario("clawshield v2 echo", approval="v2"),
    REPLAY,
    Scenario("clawshield v1 files.write", action="files.write"),
    Scenario("clawshield v1 echo", store="postgresql"),
    Scenario("clawshield v1 replay", store="postgresql", replay=True),
    CEILING_2W,
    V1_2W,
)


@dataclass(frozen=True)
class Outcome:
    scenario: Scenario
    measurement: Measurement
    check: str


def run_scenario(bench: Bench, scenario: Scenario) -> Outcome:
    with scenario_space(bench, scenario, scenario.label) as space:
        if scenario.is_ceiling:
            return run_ceiling(bench, scenario, space)
        warmup = bench.mint(
            scenario, space, "warmup", bench.budget(scenario.workers, bench.load.warmup_s)
        )
        rounds = [] if scenario.replay else bench.mint_rounds(scenario, space)
        with space.serve(scenario) as server:
            warm = bench.warm(server, warmup)
            if scenario.replay:
                time.sleep(SETTLE_S)
                stored = space.database.status_counts()
                nonces = space.database.succeeded_nonces()
                replays = select_bodies([warmup], nonces, space.directory / "replay.jsonl")
                measurement = bench.measure(server, [replays], "replay")
            else:
                measurement = bench.measure(server, rounds, "once")
        if scenario.replay:
            check = check_replays(space.database, stored, measurement.requests)
        else:
            check = check_exactly_once(
                space.database,
                warm.requests + measurement.requests,
                bench.slack(1 + len(rounds)),
                space.files_root if scenario.action == "files.write" else None,
            )
    return Outcome(scenario, measurement, check)


def run_ceiling(bench: Bench, scenario: Scenario, space: Space) -> Outcome:
    with ceiling_server(bench, scenario, space) as (outcome, _, _):
        return outcome


@contextmanager
def ceiling_server(
    bench: Bench, scenario: Scenario, space: Space
) -> Iterator[tuple[Outcome, Server, Path]]:
    """The ceiling measured on its own, then left running while the caller's block runs."""
    bodies = bench.mint(scenario, space, "ceiling", CEILING_BODIES)
    with space.serve(scenario) as server:
        bench.warm(server, bodies, "cycle")
        measurement = bench.measure(server, [bodies], "cycle")
        bench.ceiling_rps[scenario.workers] = measurement.rps
        yield Outcome(scenario, measurement, "stateless"), server, bodies


@contextmanager
def kept_ceiling(bench: Bench) -> Iterator[Outcome]:
    """The 1-worker ceiling, kept running: every later scenario drives it for one round just
    before each of its own rounds, and is compared with those rounds (``Bench.beside``)."""
    with ExitStack() as stack:
        space = stack.enter_context(scenario_space(bench, CEILING, CEILING.label))
        outcome, server, bodies = stack.enter_context(ceiling_server(bench, CEILING, space))
        bench.beside = (server, bodies)
        try:
            yield outcome
        finally:
            bench.beside = None


COLUMNS = (
    f"{'scenario':<26} {'store':<10} {'workers':>7} {'req/s':>6} {'(range)':>11}"
    f" {'p50 ms':>7} {'p99 ms':>7} {'ceil rps':>8} {'x ceil rps':>10} {'x ceil p99':>10}  check"
)


def row(outcome: Outcome) -> str:
    """One line of the table. Ratios are against the 1-worker ceiling, as the targets are, each
    the median over rounds of a round against the ceiling's round just before it."""
    scenario, measured = outcome.scenario, outcome.measurement
    store = "-" if scenario.is_ceiling else scenario.store
    ratios = f"{'':>8} {'':>10} {'':>10}"
    if measured.ceiling_rounds:
        beside = median(result.rps for result in measured.ceiling_rounds)
        rps, p99 = measured.against_ceiling("rps"), measured.against_ceiling("p99_ms")
        ratios = f"{beside:>8.0f} {rps:>9.2f}x {p99:>9.2f}x"
    return (
        f"{scenario.label:<26} {store:<10} {scenario.workers:>7} {measured.rps:>6.0f}"
        f" {'(' + measured.rps_range + ')':>11} {measured.p50_ms:>7.1f} {measured.p99_ms:>7.1f}"
        f" {ratios}  {outcome.check}"
    )


def print_targets(outcomes: dict[Scenario, Outcome]) -> None:
    """The issue's targets, judged only from figures printed above."""
    v1, replay, v1_2w = outcomes.get(V1), outcomes.get(REPLAY), outcomes.get(V1_2W)

    def ratio(outcome: Outcome, attribute: str = "rps") -> float:
        return outcome.measurement.against_ceiling(attribute)

    print("\nTargets (1 uvicorn worker, 32 connections, SQLite synchronous=FULL):")
    if v1:
        rps, p99 = ratio(v1), ratio(v1, "p99_ms")
        print(f"  clawshield v1 echo req/s >= 0.60x ceiling:   {rps:6.2f}x  {verdict(rps >= 0.6)}")
        print(f"  clawshield v1 echo p99 <= 2.00x ceiling p99: {p99:6.2f}x  {verdict(p99 <= 2)}")
    if replay:
        rps = ratio(replay)
        print(f"  clawshield v1 replay req/s >= 0.80x ceiling: {rps:6.2f}x  {verdict(rps >= 0.8)}")
    if v1 and v1_2w:
        gain = ratio(v1_2w) / ratio(v1)  # both against the ceiling beside them: drift cancels
        print(f"  2 workers raise v1 echo req/s:               {gain:6.2f}x  {verdict(gain > 1)}")
    if CEILING_2W in outcomes:
        two = ratio(outcomes[CEILING_2W])
        print(f"  (the 2-worker ceiling runs at {two:.2f}x the 1-worker one)")


def run_table(bench: Bench) -> None:
    print(COLUMNS, flush=True)
    outcomes: dict[Scenario, Outcome] = {}
    with ExitStack() as kept:
        for scenario in SCENARIOS:
            if scenario.store == "postgresql" and not bench.use_postgres:
                continue
            if scenario == CEILING:
                outcome = kept.enter_context(kept_ceiling(bench))
            else:
                outcome = run_scenario(bench, scenario)
            outcomes[scenario] = outcome
            print(row(outcome), flush=True)
    print_targets(outcomes)


def print_header(bench: Bench) -> None:
    """What the figures depend on, and the durability they were measured with."""
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
        f"  machine: {os.cpu_count()} cores (shared by wrk, the server and PostgreSQL),"
        f" Python {platform.python_version()}, {' '.join(wrk_version.split()[:2])}"
    )
    print(
        f"  load: wrk -t{load.threads} -c{load.connections}, {load.warmup_s:g}s warm-up, then"
        f" {load.rounds} x {load.round_s:g}s rounds; medians shown, with the req/s range"
    )
    print(
        "  server: python -m uvicorn APP --workers N --log-level warning --no-access-log,"
        " fresh process and database per scenario"
    )
    print(
        "  ratios: the 1-worker ceiling stays up, and each round of a scenario follows a round of"
        " it ('ceil rps', their median); a ratio is the median of each round over the ceiling"
        " round before it"
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
    parser.add_argument("--quick", action="store_true", help="one short round each (~1.5 min)")
    parser.add_argument("--memory", action="store_true", help="RSS over a long run instead")
    parser.add_argument("--growth", action="store_true", help="big store vs empty instead")
    parser.add_argument("--profile", action="store_true", help="py-spy the v1 scenario instead")
    parser.add_argument("--table", action="store_true", help="the table too, with a mode above")
    parser.add_argument("--skip-postgres", action="store_true", help="SQLite scenarios only")
    parser.add_argument(
        "--rounds", type=int, help="measured rounds per scenario (default 3, --growth 5)"
    )
    parser.add_argument("--round-seconds", type=float, help="seconds per round (default 5)")
    parser.add_argument("--memory-requests", type=int, help="default 200,000 (--quick 20,000)")
    parser.add_argument("--growth-rows", type=int, help="default 1,000,000 (--quick 100,000)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load = Load(
        round_s=args.round_seconds or (3.0 if args.quick else 5.0),
        rounds=args.rounds or (1 if args.quick else GROWTH_ROUNDS if args.growth else 3),
        warmup_s=1.0 if args.quick else 3.0,
    )
    workdir = Path(tempfile.mkdtemp(prefix="openexec-bench-"))
    bench = Bench(load, workdir, use_postgres=not args.skip_postgres)
    try:
        print_header(bench)
        if args.table or not (args.memory or args.growth or args.profile):
            run_table(bench)
        else:  # the other modes size their body files by the ceiling's pace
            print(COLUMNS)
            print(row(run_scenario(bench, CEILING)), flush=True)
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
