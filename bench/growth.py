"""``--growth``: /execute and replay latency with a large store, against an empty one.

Both servers run side by side and wrk alternates between them round by round, so a slow
moment of this shared machine hits both alike; the medians of the rounds are compared.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from bench.bodies import body, nonce_of, write_bodies
from bench.harness import (
    SETTLE_S,
    Bench,
    Scenario,
    Space,
    check_exactly_once,
    check_replays,
    scenario_space,
    select_bodies,
    verdict,
)
from bench.server import BenchFailure, Server
from bench.wrk import Measurement, WrkResult

GROWTH_LIMIT = 1.2
# A p99 is a few dozen requests. Whatever stalls the disk for a moment lifts the p99 of the round
# it lands in, whichever store that round measures: the kernel writing back a file's pages in one
# burst, or autovacuum of the other store's database (the empty store's, which it revisits as the
# table grows). With three rounds per store, two such rounds on one side decided a median (one
# run in twelve); with five, it takes three.
GROWTH_ROUNDS = 5
REPLAY_SAMPLE = 5000  # seeded rows replayed, spread over the whole insertion order


@dataclass(frozen=True)
class Phase:
    """One store state: its running server, its warm-up, and the bodies for each round."""

    space: Space
    server: Server
    warm: WrkResult
    rounds: list[Path]


def run_growth(bench: Bench, rows: int) -> None:
    print(
        f"\nGrowth: clawshield v1 echo and replay, empty store vs {rows:,} stored executions;"
        f" medians of {bench.load.rounds} alternating rounds"
    )
    print(
        f"{'store':<10} {'stored':>10} {'exec req/s':>10} {'p50 ms':>7} {'p99 ms':>7}"
        f" {'replay req/s':>12} {'p50 ms':>7} {'p99 ms':>7}",
        flush=True,
    )
    for store in ["sqlite", "postgresql"] if bench.use_postgres else ["sqlite"]:
        compare_store(bench, Scenario(f"growth {store}", store=store), rows)


def compare_store(bench: Bench, scenario: Scenario, rows: int) -> None:
    """v1 echo and replay on an empty store and on one seeded with ``rows`` executions
    (bulk-inserted copies of a real row); the seeded store replays a sample of its old rows."""
    rounds = bench.load.rounds
    with ExitStack() as stack:
        empty = start_phase(bench, scenario, stack, "empty")
        time.sleep(SETTLE_S)
        template = empty.space.database.template_row()
        template_body = find_body(empty.space.directory / "warmup.jsonl", str(template["nonce"]))

        def seed(space: Space) -> None:
            space.database.prepare()
            seconds, sample = space.database.seed(rows, template, REPLAY_SAMPLE)
            print(f"  seeded {rows:,} rows into {scenario.store} in {seconds:.0f}s", flush=True)
            replays = (renonce(template_body, nonce) for nonce in sample)
            write_bodies(space.directory / "replay.jsonl", replays)

        seeded = start_phase(bench, scenario, stack, "seeded", seed)
        phases = (empty, seeded)
        executes = alternate(bench, [(phase.server, phase.rounds) for phase in phases], "once")
        time.sleep(SETTLE_S)
        select_bodies(
            empty.rounds,
            empty.space.database.succeeded_nonces(),
            empty.space.directory / "replay.jsonl",
        )
        stored = [phase.space.database.status_counts() for phase in phases]
        replay_runs = [
            (phase.server, [phase.space.directory / "replay.jsonl"] * rounds) for phase in phases
        ]
        replays = alternate(bench, replay_runs, "replay")
        for phase, seeded_rows, execute, replay, before in zip(
            phases, (0, rows), executes, replays, stored, strict=True
        ):
            check_replays(phase.space.database, before, replay.requests)
            answered = seeded_rows + phase.warm.requests + execute.requests
            check_exactly_once(phase.space.database, answered, bench.slack(1 + rounds))
            print(growth_row(scenario.store, sum(before.values()), execute, replay), flush=True)
    for name, (before, after) in {"execute": executes, "replay": replays}.items():
        p50, p99 = after.p50_ms / before.p50_ms, after.p99_ms / before.p99_ms
        ok = p50 <= GROWTH_LIMIT and p99 <= GROWTH_LIMIT
        print(
            f"  {scenario.store} {name}: p50 {p50:.2f}x, p99 {p99:.2f}x, req/s"
            f" {after.rps / before.rps:.2f}x of the empty store's;"
            f" latency within {GROWTH_LIMIT}x: {verdict(ok)}",
            flush=True,
        )


def start_phase(
    bench: Bench,
    scenario: Scenario,
    stack: ExitStack,
    label: str,
    prepare: Callable[[Space], None] | None = None,
) -> Phase:
    """A fresh store (``prepare`` fills it before the server starts), bodies, a warm server."""
    space = stack.enter_context(scenario_space(bench, scenario, f"{scenario.label} {label}"))
    if prepare is not None:
        prepare(space)
    warmup = bench.mint(scenario, space, "warmup", bench.budget(1, bench.load.warmup_s))
    rounds = bench.mint_rounds(scenario, space)
    server = stack.enter_context(space.serve(scenario))
    return Phase(space, server, bench.warm(server, warmup), rounds)


def alternate(bench: Bench, runs: list[tuple[Server, list[Path]]], mode: str) -> list[Measurement]:
    """Round i of every server before round i+1 of any."""
    results: list[list[WrkResult]] = [[] for _ in runs]
    for round_number in range(bench.load.rounds):
        for (server, files), out in zip(runs, results, strict=True):
            out.append(bench.drive(server, files[round_number], bench.load.round_s, mode))
    return [Measurement(tuple(rounds)) for rounds in results]


def growth_row(store: str, stored: int, execute: Measurement, replay: Measurement) -> str:
    return (
        f"{store:<10} {stored:>10,} {execute.rps:>10.0f} {execute.p50_ms:>7.1f}"
        f" {execute.p99_ms:>7.1f} {replay.rps:>12.0f} {replay.p50_ms:>7.1f} {replay.p99_ms:>7.1f}"
    )


def find_body(bodies: Path, nonce: str) -> str:
    with bodies.open() as lines:
        for line in lines:
            if nonce_of(line) == nonce:
                return line.rstrip("\n")
    raise BenchFailure(f"no body with nonce {nonce!r} in {bodies.name}")


def renonce(line: str, nonce: str) -> str:
    """The same request and approval under another nonce: a replay of a seeded copy of it."""
    request = json.loads(line)
    return body(request["action"], request["payload"], nonce, request["approval_artifact"])
