"""Two configurations of the same service side by side: ``python -m bench.pairs COMPARISON
[--workers N] [--rounds N] [--round-s S]``.

Comparisons:

* ``uvicorn-standard``: uvicorn's plain install (``--loop asyncio --http h11``) against what
  ``uvicorn[standard]`` adds and uvicorn then picks by itself (``--loop uvloop --http
  httptools``);
* ``metrics``: ``OPENEXEC_METRICS=off`` against on, with one scrape of ``/metrics`` a second
  while wrk runs, as a Prometheus server would (every 15 s by default; once a second is worse).

Both servers run at once (clawshield mode, v1 approvals, ``echo``, SQLite, fresh databases),
and wrk drives them in turn, one round each, so every round of the second has a round of the
first just before it; the ratios are medians over those pairs. It prints the figures; nothing
is asserted.
"""

from __future__ import annotations

import argparse
import os
import threading
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from tempfile import mkdtemp

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.bodies import mint_bodies, write_bodies
from bench.server import running
from bench.wrk import WrkResult, run_wrk
from openexec.receipts import private_key_pem, public_key_pem

CONNECTIONS = 32
THREADS = 2
BODIES_PER_SECOND = 2500


@dataclass(frozen=True)
class Variant:
    name: str
    env: dict[str, str] = field(default_factory=dict)
    flags: tuple[str, ...] = ()
    scrape: bool = False  # GET /metrics once a second during its rounds


COMPARISONS = {
    "uvicorn-standard": (
        Variant("asyncio+h11", flags=("--loop", "asyncio", "--http", "h11")),
        Variant("uvloop+httptools", flags=("--loop", "uvloop", "--http", "httptools")),
    ),
    "metrics": (
        Variant("metrics off", env={"OPENEXEC_METRICS": "off"}),
        Variant("metrics on", env={"OPENEXEC_METRICS": "on"}, scrape=True),
    ),
}


def service_env(directory: Path, approver: Ed25519PrivateKey) -> dict[str, str]:
    """A fresh clawshield-mode service on a SQLite file in ``directory``."""
    (directory / "key.pem").write_bytes(private_key_pem(Ed25519PrivateKey.generate()))
    return {
        "OPENEXEC_MODE": "clawshield",
        "CLAWSHIELD_PUBLIC_KEY": public_key_pem(approver.public_key()),
        "OPENEXEC_PLUGINS": "openexec-echo",
        "OPENEXEC_DB_URL": f"sqlite:///{directory / 'openexec.db'}",
        "OPENEXEC_RECEIPT_KEY": str(directory / "key.pem"),
    }


def drive(
    url: str, directory: Path, tag: str, approver: Ed25519PrivateKey, round_s: float
) -> WrkResult:
    """One wrk round of fresh single-use bodies (nonces prefixed ``tag``) against ``url``."""
    bodies = directory / f"round-{tag}.jsonl"
    count = int(BODIES_PER_SECOND * round_s)
    write_bodies(bodies, mint_bodies("echo", "v1", count, approver, tag))
    return run_wrk(
        url, bodies, duration_s=round_s, threads=THREADS, connections=CONNECTIONS, mode="once"
    )


class Scraper(threading.Thread):
    """GET /metrics once a second until stopped."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.stop = url, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            with urllib.request.urlopen(f"{self.url}/metrics", timeout=30) as answer:
                answer.read()


def compare(variants: tuple[Variant, Variant], args: argparse.Namespace) -> None:
    scratch = Path(mkdtemp(prefix="openexec-bench-pairs-"))
    approver = Ed25519PrivateKey.generate()
    results: dict[str, list[WrkResult]] = {variant.name: [] for variant in variants}
    with ExitStack() as stack:
        servers = []
        for number, variant in enumerate(variants):
            directory = scratch / f"variant-{number}"
            directory.mkdir()
            env = {**service_env(directory, approver), **variant.env}
            log = directory / "uvicorn.log"
            server = stack.enter_context(running("main:app", env, args.workers, log, variant.flags))
            servers.append((variant, server, directory))
        for round_number in range(args.rounds + 1):  # round 0 warms up
            for number, (variant, server, directory) in enumerate(servers):
                scraper = Scraper(server.url) if variant.scrape else None
                if scraper is not None:
                    scraper.start()
                tag = f"v{number}-{round_number}"
                result = drive(server.url, directory, tag, approver, args.round_s)
                if scraper is not None:
                    scraper.stop.set()
                    scraper.join()
                if round_number:
                    results[variant.name].append(result)
    print(
        f"/execute, clawshield v1 echo, SQLite, {args.workers} worker(s), wrk -t{THREADS} "
        f"-c{CONNECTIONS}, {args.rounds} rounds of {args.round_s:g} s, cpu count {os.cpu_count()}"
    )
    print(f"  {'':<18} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7}")
    for variant in variants:
        rounds = results[variant.name]
        print(
            f"  {variant.name:<18} {median(r.rps for r in rounds):>7.0f} "
            f"{median(r.p50_ms for r in rounds):>7.2f} {median(r.p99_ms for r in rounds):>7.2f}"
        )
    first, second = (results[variant.name] for variant in variants)
    rps = median(b.rps / a.rps for a, b in zip(first, second, strict=True))
    p99 = median(b.p99_ms / a.p99_ms for a, b in zip(first, second, strict=True))
    print(f"  {variants[1].name} / {variants[0].name}: throughput {rps:.2f}x, p99 {p99:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("comparison", choices=sorted(COMPARISONS))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--round-s", type=float, default=5.0)
    args = parser.parse_args()
    compare(COMPARISONS[args.comparison], args)


if __name__ == "__main__":
    main()
