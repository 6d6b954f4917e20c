"""The witness ledger's cost: ``python -m bench.ledger [--round-s S] [--rounds N]
[--audit-entries N]``.

1. ``/execute`` with the ledger on against the same service with it off: two fresh
   ``python -m uvicorn main:app`` servers (clawshield mode, v1 approvals, ``echo``, SQLite, one
   worker), driven by wrk in turn, one round each, so every ledger-on round has a ledger-off
   round just before it; the ratios are medians over those pairs.
2. Inclusion lag under that load: in rounds of their own (``--lag-rounds``), while wrk drives
   the ledger-on server, a probe sends one execution at a time of its own and polls
   ``/ledger/proof/{id}`` every 10 ms until it is served; the lag is from the answer to the
   proof. The polls are requests the ledger-off server would not get, so these rounds give no
   throughput figure.
3. ``openexec ledger audit`` of a log of ``--audit-entries`` entries (default 1,000,000),
   seeded directly as an export directory: real receipts signed by a receipt key, tiles and
   entry bundles from the ledger's own code, a checkpoint signed by a ledger key.

It prints the figures; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from statistics import median, quantiles

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.pairs import CONNECTIONS, THREADS, drive, service_env
from bench.server import running
from bench.wrk import WrkResult
from openexec.approvals import mint_v1
from openexec.ledger.checkpoint import Checkpoint
from openexec.ledger.entries import entry_of_envelope, receipt_bundle
from openexec.ledger.merkle import TreeAccumulator, leaf_hash
from openexec.ledger.note import NoteSigner
from openexec.ledger.tiles import TILE_WIDTH, encode_bundle, entries_path, tile_path
from openexec.receipts import ReceiptSigner, private_key_pem, public_key_pem
from openexec.signing import key_id

REPO = Path(__file__).resolve().parents[1]


class LagProbe(threading.Thread):
    """One execution at a time, each followed by polling its proof until it is served."""

    def __init__(self, url: str, approver: Ed25519PrivateKey) -> None:
        super().__init__(daemon=True)
        self.url, self.approver = url, approver
        self.lags_ms: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            nonce = f"lag-{uuid.uuid4().hex}"
            body = {
                "action": "echo",
                "payload": {"msg": nonce},
                "nonce": nonce,
                "approval_artifact": mint_v1(self.approver, "echo", {"msg": nonce}),
            }
            request = urllib.request.Request(
                self.url + "/execute",
                data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=60) as answer:
                exec_id = json.loads(answer.read())["id"]
            answered = time.monotonic()
            while not self.stop.is_set():
                try:
                    with urllib.request.urlopen(f"{self.url}/ledger/proof/{exec_id}", timeout=60):
                        self.lags_ms.append((time.monotonic() - answered) * 1000)
                        break
                except urllib.error.HTTPError as exc:
                    if exc.code != 404:
                        raise
                self.stop.wait(0.01)


def throughput(args: argparse.Namespace, scratch: Path) -> None:
    approver = args.approver
    results: dict[str, list[WrkResult]] = {"off": [], "on": []}
    lags: list[float] = []
    with ExitStack() as stack:
        servers = {}
        for ledger in ("off", "on"):
            directory = scratch / f"ledger-{ledger}"
            directory.mkdir()
            env = {**service_env(directory, approver), "OPENEXEC_LEDGER": ledger}
            servers[ledger] = stack.enter_context(
                running("main:app", env, 1, directory / "uvicorn.log")
            )
        for round_number in range(args.rounds + 1):  # round 0 warms up
            for ledger, server in servers.items():
                tag = f"{ledger}-{round_number}"
                directory = scratch / f"ledger-{ledger}"
                result = drive(server.url, directory, tag, approver, args.round_s)
                if round_number:
                    results[ledger].append(result)
        # The probe's polls are requests too, which only the ledger-on server would answer:
        # its rounds are its own, after the paired ones, and give no throughput figure.
        for round_number in range(args.lag_rounds):
            probe = LagProbe(servers["on"].url, approver)
            probe.start()
            tag = f"lag-{round_number}"
            drive(servers["on"].url, scratch / "ledger-on", tag, approver, args.round_s)
            probe.stop.set()
            probe.join()
            lags.extend(probe.lags_ms)
    off, on = results["off"], results["on"]
    print(
        f"/execute, clawshield v1 echo, SQLite, 1 worker, wrk -t{THREADS} -c{CONNECTIONS}, "
        f"{args.rounds} rounds of {args.round_s:g} s, cpu count {os.cpu_count()}"
    )
    print(f"  {'ledger':<8} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7}")
    for name, rounds in (("off", off), ("on", on)):
        print(
            f"  {name:<8} {median(r.rps for r in rounds):>7.0f} "
            f"{median(r.p50_ms for r in rounds):>7.2f} {median(r.p99_ms for r in rounds):>7.2f}"
        )
    rps = median(a.rps / b.rps for a, b in zip(on, off, strict=True))
    p99 = median(a.p99_ms / b.p99_ms for a, b in zip(on, off, strict=True))
    print(f"  ledger on / off: throughput {rps:.2f}x (target >= 0.9), p99 {p99:.2f}x (<= 1.2)")
    if len(lags) >= 2:
        cuts = quantiles(lags, n=100)
        print(
            f"inclusion lag under that load ({len(lags)} probes, interval 500 ms): "
            f"p50 {median(lags):.0f} ms, p99 {cuts[98]:.0f} ms (target p99 <= 1500 ms)"
        )


def _signed_receipts(task: tuple[bytes, int, int]) -> list[str]:
    """Receipt envelopes for indexes [start, end), signed by the key in ``pem``."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    pem, start, end = task
    signer = ReceiptSigner(load_pem_private_key(pem, password=None))
    envelopes = []
    for index in range(start, end):
        exec_id = str(uuid.UUID(int=index))
        envelope, _ = signer.sign(
            {
                "exec_id": exec_id,
                "tenant_id": None,
                "nonce": f"seed-{index}",
                "action": "echo",
                "plugin": {"name": "openexec-echo", "version": "0.1.0"},
                "mode": "demo",
                "approval": None,
                "request_sha256": "0" * 64,
                "status": "succeeded",
                "result_sha256": "1" * 64,
                "error": None,
                "started_at": "2026-12-02T00:00:00.000000Z",
                "completed_at": "2026-12-02T00:00:00.000001Z",
                "service": {"name": "openexec", "version": "bench"},
            }
        )
        envelopes.append(json.dumps(envelope, separators=(",", ":")))
    return envelopes


def seed_log(directory: Path, entries: int) -> Path:
    """An export directory holding ``entries`` entries; returns the verifier key file."""
    receipt_key = Ed25519PrivateKey.generate()
    ledger_signer = NoteSigner("bench.example/ledger", Ed25519PrivateKey.generate())
    pem = private_key_pem(receipt_key)
    accumulator = TreeAccumulator()
    bundles = [(s, min(s + TILE_WIDTH, entries)) for s in range(0, entries, TILE_WIDTH)]
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        for (start, end), envelopes in zip(
            bundles,
            pool.map(_signed_receipts, [(pem, s, e) for s, e in bundles], chunksize=8),
            strict=True,
        ):
            logged = [entry_of_envelope(json.loads(e)).bytes() for e in envelopes]
            name = entries_path(start // TILE_WIDTH, end - start)
            _write(directory / name, encode_bundle(logged))
            _write(
                directory / "receipts" / name.removeprefix("tile/entries/"),
                receipt_bundle(envelopes),
            )
            for data in logged:
                for level, index, tile in accumulator.add(leaf_hash(data)):
                    _write(directory / tile_path(level, index), tile)
    for level, index, tile in accumulator.partial_tiles():
        _write(directory / tile_path(level, index, len(tile) // 32), tile)
    public = receipt_key.public_key()
    keys = [{"key_id": key_id(public), "public_key_pem": public_key_pem(public)}]
    _write(directory / "receipt-keys", json.dumps(keys).encode())
    checkpoint = Checkpoint(ledger_signer.name, entries, accumulator.root())
    _write(directory / "checkpoint", ledger_signer.sign(checkpoint.text()).encode())
    vkey = directory.parent / "log.vkey"
    vkey.write_text(ledger_signer.vkey() + "\n")
    return vkey


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def audit_time(args: argparse.Namespace, scratch: Path) -> None:
    directory = scratch / "log"
    started = time.monotonic()
    vkey = seed_log(directory, args.audit_entries)
    print(f"seeded a {args.audit_entries:,}-entry log in {time.monotonic() - started:.0f} s")
    command = [str(Path(sys.executable).parent / "openexec"), "ledger", "audit", str(directory)]
    started = time.monotonic()
    done = subprocess.run([*command, "--vkey", str(vkey)], capture_output=True, text=True)
    elapsed = time.monotonic() - started
    print(f"openexec ledger audit: {elapsed:.1f} s (target <= 60 s): {done.stdout.strip()}")
    if done.returncode:
        print(done.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round-s", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lag-rounds", type=int, default=2, help="rounds with the lag probe")
    parser.add_argument("--audit-entries", type=int, default=1_000_000)
    parser.add_argument("--skip-load", action="store_true", help="only the audit")
    parser.add_argument("--skip-audit", action="store_true", help="only the load")
    args = parser.parse_args()
    args.approver = Ed25519PrivateKey.generate()
    scratch = Path(tempfile.mkdtemp(prefix="openexec-bench-ledger-"))
    if not args.skip_load:
        throughput(args, scratch)
    if not args.skip_audit:
        audit_time(args, scratch)


if __name__ == "__main__":
    main()
