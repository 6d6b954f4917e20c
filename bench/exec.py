"""The exec pack against its ceiling: ``python -m bench.exec [--round-s S] [--rounds N]``.

Three servers run side by side, each a fresh ``python -m uvicorn`` with one worker:

* the ceiling (bench/ceiling.py): a bare FastAPI endpoint that verifies the same ClawShield v1
  approval, spawns ``true`` with asyncio and signs a receipt-sized message;
* the service, clawshield mode, ``exec.run ["true"]`` with the pack's supervisor, policy and
  store, ``sandbox = "none"``;
* the same with ``sandbox = "bwrap"``.

wrk drives them in turn, one round each, ``--rounds`` times, so every service round has a
ceiling round just before it on the same machine; the ratios are medians over those pairs.
The throughput phase uses 8 connections; the latency phase one, so the sandbox's added p50 is
its own cost and not queueing. Every request carries its own nonce and approval, and the
database is read afterwards to check that every answer was a new execution. It prints the
figures; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
from contextlib import ExitStack
from pathlib import Path
from statistics import median

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.bodies import mint_bodies, write_bodies
from bench.server import running
from bench.wrk import WrkResult, run_wrk
from openexec.receipts import private_key_pem, public_key_pem

CONNECTIONS = 8
THREADS = 2
BODIES_PER_SECOND = 1200  # far more than exec.run answers on two cores


def service_env(directory: Path, approver_pem: str, sandbox: str) -> dict[str, str]:
    policy = directory / "policy.toml"
    policy.write_text(f'sandbox = "{sandbox}"\n')
    workspace = directory / "workspace"
    return {
        "OPENEXEC_MODE": "clawshield",
        "CLAWSHIELD_PUBLIC_KEY": approver_pem,
        "OPENEXEC_PLUGINS": "openexec-exec",
        "OPENEXEC_DB_URL": f"sqlite:///{directory / 'openexec.db'}",
        "OPENEXEC_EXEC_WORKSPACE": str(workspace),
        "OPENEXEC_EXEC_STATE": str(directory / "state"),
        "OPENEXEC_EXEC_POLICY": str(policy),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round-s", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    approver = Ed25519PrivateKey.generate()
    approver_pem = public_key_pem(approver.public_key())
    scratch = Path(tempfile.mkdtemp(prefix="openexec-bench-exec-"))
    scratch.chmod(0o711)  # commands of a root service run as nobody, who must reach the workspace
    per_round = int(BODIES_PER_SECOND * args.round_s)
    phases = [("throughput", CONNECTIONS, THREADS), ("latency", 1, 1)]
    servers = {}
    with ExitStack() as stack:
        for name, sandbox in (("ceiling", None), ("service", "none"), ("service+bwrap", "bwrap")):
            directory = scratch / name
            directory.mkdir()
            if sandbox is None:
                env, app = {"CLAWSHIELD_PUBLIC_KEY": approver_pem}, "bench.ceiling:app"
            else:
                env, app = service_env(directory, approver_pem, sandbox), "main:app"
            (directory / "key.pem").write_bytes(private_key_pem(Ed25519PrivateKey.generate()))
            env["OPENEXEC_RECEIPT_KEY"] = str(directory / "key.pem")
            server = stack.enter_context(running(app, env, 1, directory / "uvicorn.log"))
            servers[name] = (server, directory)
        results: dict[tuple[str, str], list[WrkResult]] = {}
        sent: dict[str, int] = dict.fromkeys(servers, 0)
        for phase, connections, threads in phases:
            for round_number in range(args.rounds + 1):  # round 0 warms up
                for name, (server, directory) in servers.items():
                    # Every round has bodies of its own: a nonce sent twice would be a replay.
                    bodies = directory / f"{phase}-{round_number}.jsonl"
                    prefix = f"{name}-{phase}-{round_number}"
                    write_bodies(bodies, mint_bodies("exec.run", "v1", per_round, approver, prefix))
                    result = run_wrk(
                        server.url,
                        bodies,
                        duration_s=args.round_s,
                        threads=threads,
                        connections=connections,
                        mode="cycle" if name == "ceiling" else "once",
                    )
                    sent[name] += result.requests
                    if round_number:
                        results.setdefault((phase, name), []).append(result)
    for name, (_, directory) in servers.items():
        if name != "ceiling":
            with sqlite3.connect(directory / "openexec.db") as database:
                (ran,) = database.execute(
                    "SELECT count(*) FROM executions WHERE status = 'succeeded'"
                ).fetchone()
            print(f"{name}: {sent[name]} requests answered, {ran} executions succeeded")
    print(
        f'exec.run ["true"], clawshield v1, 1 worker, {args.rounds} rounds of '
        f"{args.round_s:g} s per phase, cpu count {os.cpu_count()}"
    )
    for phase, connections, threads in phases:
        print(f"{phase}: wrk -t{threads} -c{connections}")
        print(f"  {'server':<16} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'x ceil rps':>10}")
        ceiling = results[(phase, "ceiling")]
        for name in servers:
            rounds = results[(phase, name)]
            ratio = median(r.rps / c.rps for r, c in zip(rounds, ceiling, strict=True))
            print(
                f"  {name:<16} {median(r.rps for r in rounds):>7.0f} "
                f"{median(r.p50_ms for r in rounds):>7.2f} "
                f"{median(r.p99_ms for r in rounds):>7.2f} {ratio:>10.2f}"
            )
    pairs = zip(results[("latency", "service+bwrap")], results[("latency", "service")], strict=True)
    added = median(bwrap.p50_ms - plain.p50_ms for bwrap, plain in pairs)
    print(f"sandbox added p50, one request at a time: {added:.2f} ms")


if __name__ == "__main__":
    main()
