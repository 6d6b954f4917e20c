"""Pre-minted request bodies: minting happens before wrk starts, so signing costs the client
nothing during a measurement and every request carries its own nonce and approval."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from openexec.approvals import mint_v1, mint_v2

APPROVAL_TTL_S = 3 * 3600  # long enough for the slowest --memory run to use its bodies
FILE_CONTENT = "benchmark line: the quick brown fox jumps over the lazy dog\n" * 2

Request = tuple[str, dict[str, Any]]  # action, payload


def echo_request(tag: str) -> Request:
    return "echo", {"msg": "hello from the benchmark", "ref": tag}


def files_write_request(tag: str) -> Request:
    return "files.write", {"path": f"bench-{tag}.txt", "content": FILE_CONTENT}


def exec_true_request(tag: str) -> Request:
    return "exec.run", {"argv": ["true"], "env": {"BENCH_TAG": tag}}


REQUESTS: dict[str, Callable[[str], Request]] = {
    "echo": echo_request,
    "files.write": files_write_request,
    "exec.run": exec_true_request,
}


def body(action: str, payload: dict[str, Any], nonce: str, approval: dict[str, Any] | None) -> str:
    return json.dumps(
        {"action": action, "payload": payload, "nonce": nonce, "approval_artifact": approval},
        separators=(",", ":"),
    )


def mint_bodies(
    action: str, approval: str | None, count: int, key: Ed25519PrivateKey, prefix: str
) -> Iterable[str]:
    """``count`` bodies for ``action``, each with a unique nonce and (``approval`` = ``v1`` or
    ``v2``) its own single-use approval; ``approval=None`` for demo mode. ``prefix`` names the
    batch: it keeps nonces and files.write paths apart from other batches in one database. A
    nonce begins with random characters, so a batch's nonces spread over the whole index, as
    clients' random nonces do, rather than gathering at one place in it."""
    make_request = REQUESTS[action]
    for seq in range(count):
        tag = f"{prefix}-{seq}"
        name, payload = make_request(tag)
        nonce = f"{uuid.uuid4().hex[:12]}-{tag}"  # random first, like a real client's
        if approval == "v1":
            artifact = mint_v1(key, name, payload, ttl_s=APPROVAL_TTL_S)
        elif approval == "v2":
            artifact = mint_v2(key, name, payload, ttl_s=APPROVAL_TTL_S, nonce=nonce)
        else:
            artifact = None
        yield body(name, payload, nonce, artifact)


def write_bodies(path: Path, bodies: Iterable[str]) -> None:
    """Write newline-delimited bodies, the format bench/post.lua reads."""
    with path.open("w") as handle:
        for line in bodies:
            handle.write(line + "\n")


def nonce_of(line: str) -> str:
    return json.loads(line)["nonce"]
