"""The ceiling: the least work an honest ``POST /execute`` answer takes, with no database.

It parses the same request body, verifies the same ClawShield v1 signature and action-hash
binding (docs/approvals.md) with the approver key parsed once at startup, signs a receipt-sized
message with an Ed25519 key and answers with a body the size of the service's. For
``exec.run`` (bench/exec.py) it also spawns the payload's argv with asyncio, as a bare endpoint
would, and answers its exit code and output. Every scenario's
throughput is reported as a fraction of this app's, measured in the same run under the same
uvicorn flags, so the ratio shows what the store, the ORM and the engine's bookkeeping cost.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import uuid
from datetime import UTC, datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from openexec.app import NO_TELEMETRY
from openexec.serving import nodelay_on_inherited_listeners

RECEIPT_TYPE = b"application/vnd.in-toto+json"
V1_SIGNED_FIELDS = ("approval_id", "tenant_id", "action_hash", "issued_at", "expires_at")


def _approver_key() -> Ed25519PublicKey:
    key = load_pem_public_key(os.environ["CLAWSHIELD_PUBLIC_KEY"].encode())
    if not isinstance(key, Ed25519PublicKey):
        raise SystemExit("ceiling: CLAWSHIELD_PUBLIC_KEY is not an Ed25519 public key")
    return key


APPROVER_KEY = _approver_key()
RECEIPT_KEY = Ed25519PrivateKey.generate()
RECEIPT_KEY_ID = hashlib.sha256(RECEIPT_KEY.public_key().public_bytes_raw()).hexdigest()[:16]

app = FastAPI(telemetry=NO_TELEMETRY)  # as the service: see openexec/app.py
nodelay_on_inherited_listeners()  # served like the service: see openexec/serving.py


def refuse(code: str) -> JSONResponse:
    return JSONResponse({"status": 403, "code": code, "detail": "refused"}, 403)


async def run_command(argv: list[str]) -> dict[str, object]:
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"PATH": "/usr/bin:/bin"},
    )
    stdout, stderr = await process.communicate()
    return {"exit_code": process.returncode, "stdout": stdout.decode(), "stderr": stderr.decode()}


@app.post("/execute")
async def execute(request: Request) -> JSONResponse:
    body = json.loads(await request.body())
    action, payload, artifact = body["action"], body.get("payload") or {}, body["approval_artifact"]
    message = "".join(artifact[field] for field in V1_SIGNED_FIELDS).encode()
    try:
        APPROVER_KEY.verify(base64.b64decode(artifact["signature"]), message)
    except InvalidSignature:
        return refuse("approval_invalid_signature")
    binding = json.dumps(
        {"action": action, "payload": payload}, sort_keys=True, separators=(",", ":")
    )
    if hashlib.sha256(binding.encode()).hexdigest() != artifact["action_hash"]:
        return refuse("approval_hash_mismatch")
    exec_id = str(uuid.uuid4())
    result = await run_command(payload["argv"]) if action == "exec.run" else {"echo": payload}
    now = datetime.now(UTC).isoformat()
    predicate = {
        "exec_id": exec_id,
        "tenant_id": artifact["tenant_id"] or None,
        "nonce": body["nonce"],
        "action": action,
        "plugin": {"name": "openexec-echo", "version": "0.1.0"},
        "mode": "clawshield",
        "approval": {
            "id": artifact["approval_id"],
            "format": "clawshield-v1",
            "sha256": hashlib.sha256(json.dumps(artifact).encode()).hexdigest(),
            "key_id": RECEIPT_KEY_ID,
        },
        "request_sha256": hashlib.sha256(binding.encode()).hexdigest(),
        "status": "succeeded",
        "result_sha256": hashlib.sha256(json.dumps(result).encode()).hexdigest(),
        "error": None,
        "started_at": now,
        "completed_at": now,
        "service": {"name": "openexec", "version": "0.1.0"},
    }
    statement = json.dumps(
        {
            "_type": "https://in-toto.io/Statement/v1",
            "subject": [
                {
                    "name": f"openexec/execution/{exec_id}",
                    "digest": {"sha256": predicate["request_sha256"]},
                }
            ],
            "predicateType": "urn:openexec:receipt:v1",
            "predicate": predicate,
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    signature = RECEIPT_KEY.sign(
        b"DSSEv1 %d %s %d %s" % (len(RECEIPT_TYPE), RECEIPT_TYPE, len(statement), statement)
    )
    return JSONResponse(
        {
            "id": exec_id,
            "action": action,
            "result": result,
            "approved": True,
            "receipt": hashlib.sha256(statement).hexdigest(),
            "status": "succeeded",
            "error": None,
            "replayed": False,
            "nonce": body["nonce"],
            "tenant_id": predicate["tenant_id"],
            "request_sha256": predicate["request_sha256"],
            "receipt_envelope": {
                "payloadType": RECEIPT_TYPE.decode(),
                "payload": base64.b64encode(statement).decode(),
                "signatures": [
                    {"keyid": RECEIPT_KEY_ID, "sig": base64.b64encode(signature).decode()}
                ],
            },
        }
    )


@app.get("/ready")
async def ready() -> dict[str, bool]:
    return {"ready": True}
