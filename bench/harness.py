"""What every benchmark mode shares: scenarios, fresh state per scenario, wrk rounds, and the
checks that read the store afterwards to prove each answered request ran exactly once."""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from bench.bodies import mint_bodies, nonce_of, write_bodies
from bench.server import BenchFailure, Server, running
from bench.stores import Database, Postgres, sqlite_database
from bench.wrk import Measurement, WrkResult, run_wrk
from openexec.receipts import private_key_pem

CEILING_APP = "bench.ceiling:app"
SERVICE_APP = "main:app"
BODY_MARGIN = 1.5  # bodies minted per request the ceiling says a scenario could possibly send
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


@dataclass(frozen=True)
class Load:
    """How hard and how long wrk drives each scenario: ``rounds`` runs of ``round_s`` seconds
    after a warm-up, summarised by their medians."""

    round_s: float
    rounds: int
    warmup_s: float
    threads: int = 2
    connections: int = 32


@dataclass
class Bench:
    """What every scenario of one invocation shares: keys, load, scratch space, the ceiling."""

    load: Load
    workdir: Path
    use_postgres: bool
    approver: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    ceiling_rps: dict[int, float] = field(default_factory=dict)
    beside: tuple[Server, Path] | None = None  # the running ceiling and its bodies, if kept
    _postgres: Postgres | None = None
    _scenarios: int = 0

    def __post_init__(self) -> None:
        self.receipt_key = self.workdir / "receipt-key.pem"
        self.receipt_key.write_bytes(private_key_pem(Ed25519PrivateKey.generate()))
        self.approver_pem = (
            self.approver.public_key()
            .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )

    def database(self, store: str, directory: Path) -> Database:
        if store == "sqlite":
            return sqlite_database(directory)
        if self._postgres is None:
            self._postgres = Postgres()
        return self._postgres.database(f"{self._scenarios:02d}")

    def scratch(self, label: str) -> Path:
        self._scenarios += 1
        directory = self.workdir / f"{self._scenarios:02d}-{label.replace(' ', '-')}"
        directory.mkdir()
        return directory

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

    def mint_rounds(self, scenario: Scenario, space: Space) -> list[Path]:
        """One file of fresh bodies per measured round (each wrk run starts at line one)."""
        count = self.budget(scenario.workers, self.load.round_s)
        return [self.mint(scenario, space, f"round{i}", count) for i in range(self.load.rounds)]

    def drive(self, server: Server, bodies: Path, seconds: float, mode: str) -> WrkResult:
        return run_wrk(
            server.url,
            bodies,
            duration_s=seconds,
            threads=self.load.threads,
            connections=self.load.connections,
            mode=mode,
        )

    def warm(self, server: Server, bodies: Path, mode: str = "once") -> WrkResult:
        return self.drive(server, bodies, self.load.warmup_s, mode)

    def measure(self, server: Server, files: Sequence[Path], mode: str) -> Measurement:
        """One round per file (``mode`` "once") or ``rounds`` rounds over one file; each after
        a round of the kept ceiling, when there is one."""
        results, ceiling_results = [], []
        for path in files if mode == "once" else [files[0]] * self.load.rounds:
            if self.beside is not None:
                ceiling, bodies = self.beside
                ceiling_results.append(self.drive(ceiling, bodies, self.load.round_s, "cycle"))
            results.append(self.drive(server, path, self.load.round_s, mode))
        return Measurement(tuple(results), tuple(ceiling_results))

    def slack(self, wrk_runs: int) -> int:
        """Rows a store may hold beyond the answers wrk counted: each run that ends abandons
        up to one request per connection, which the server still finishes."""
        return wrk_runs * self.load.connections


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


def select_bodies(sources: Sequence[Path], nonces: set[str], target: Path) -> Path:
    """The lines of ``sources`` whose nonce is in ``nonces``: requests known to have finished."""
    kept = 0
    with target.open("w") as out:
        for source in sources:
            with source.open() as lines:
                for line in lines:
                    if nonce_of(line) in nonces:
                        out.write(line)
                        kept += 1
    if not kept:
        raise BenchFailure("no finished executions to replay")
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


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"
