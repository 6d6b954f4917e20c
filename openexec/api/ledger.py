"""``/ledger/``: the witness ledger in C2SP formats (docs/ledger.md).

Tiles and entry bundles are immutable once written, so they are served as Sunlight serves
them, cacheable for a week; the checkpoint moves, and is never cached.
"""

from __future__ import annotations

from anyio import to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from openexec.api.problems import quote
from openexec.api.routes import trusted_receipt_keys
from openexec.engine import Problem
from openexec.ledger.service import CosignatureRefused, Ledger, LedgerPending
from openexec.ledger.tiles import parse_tile_path
from openexec.models import ReceiptKey

ledger = APIRouter(prefix="/ledger", tags=["ledger"])

NOTE = "text/plain; charset=utf-8"
IMMUTABLE = {"Cache-Control": "public, max-age=604800, immutable"}
NO_STORE = {"Cache-Control": "no-store"}
MAX_COSIGNED_BYTES = 16_384  # a checkpoint and a few dozen signature lines
MAX_INDEX = 2**63 - 1  # the store's integers: a larger tile index names nothing


def ledger_of(request: Request) -> Ledger:
    return request.app.state.ledger


@ledger.get("/checkpoint")
async def checkpoint(request: Request) -> Response:
    try:
        note = await to_thread.run_sync(ledger_of(request).checkpoint)
    except LookupError:
        raise Problem(404, "ledger_pending", "No checkpoint is signed yet.") from None
    return Response(note, media_type=NOTE, headers=NO_STORE)


@ledger.get("/key")
def key(request: Request) -> Response:
    """The verifier key of the checkpoints (C2SP signed-note format)."""
    return Response(ledger_of(request).vkey + "\n", media_type=NOTE)


@ledger.get("/receipt-keys")
def receipt_keys(request: Request) -> list[ReceiptKey]:
    """The receipt keys entries are checked against, as ``/receipts/keys`` lists them (here
    too, so that a served log and an exported one have the same paths)."""
    return trusted_receipt_keys(request)


@ledger.get("/tile/{path:path}")
async def tile(path: str, request: Request) -> Response:
    full = "tile/" + path
    try:
        parsed = parse_tile_path(full)
    except ValueError:
        raise Problem(404, "not_found", f"No tile at {quote(full)}.") from None
    if parsed.index > MAX_INDEX >> 8:
        raise Problem(404, "not_found", f"No tile at {quote(full)}.")
    data = await to_thread.run_sync(ledger_of(request).tile, full)
    if data is None:
        raise Problem(404, "not_found", f"No tile at {quote(full)}.")
    return Response(data, media_type="application/octet-stream", headers=IMMUTABLE)


@ledger.get("/receipts/{path:path}")
async def receipts(path: str, request: Request) -> Response:
    """Receipt bundles beside the entry bundles: ``receipts/<N>[.p/<W>]`` holds the receipt
    envelopes of the entries of ``tile/entries/<N>[.p/<W>]``, as stored now (not cached)."""
    try:
        parsed = parse_tile_path("tile/entries/" + path)
    except ValueError:
        raise Problem(404, "not_found", f"No receipt bundle at {quote(path)}.") from None
    if parsed.index > MAX_INDEX >> 8:
        raise Problem(404, "not_found", f"No receipt bundle at {quote(path)}.")
    data = await to_thread.run_sync(ledger_of(request).receipts, parsed.index, parsed.width)
    if data is None:
        raise Problem(404, "not_found", f"No receipt bundle at {quote(path)}.")
    return Response(data, media_type="application/x-ndjson", headers=NO_STORE)


@ledger.get("/proof/{exec_id}")
async def proof(exec_id: str, request: Request) -> Response:
    """A C2SP tlog-proof of the execution's entry in the latest checkpoint."""
    try:
        text = await to_thread.run_sync(ledger_of(request).proof, exec_id)
    except LedgerPending:
        raise Problem(
            404, "ledger_pending", "The execution is not in a signed checkpoint yet; retry soon."
        ) from None
    if text is None:
        raise Problem(404, "receipt_not_found", f"No execution with id {quote(exec_id)}.")
    return Response(text, media_type=NOTE, headers=NO_STORE)


@ledger.post("/cosignatures")
async def cosignatures(request: Request) -> JSONResponse:
    """A witness's cosignature: the checkpoint it cosigned with its signature line(s)."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != "text/plain":
        raise Problem(415, "unsupported_media_type", "Send the cosigned checkpoint as text/plain.")
    body = await request.body()
    if len(body) > MAX_COSIGNED_BYTES:
        raise Problem(
            413,
            "payload_too_large",
            f"A cosigned checkpoint is at most {MAX_COSIGNED_BYTES} bytes.",
        )
    try:
        note = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Problem(422, "cosignature_malformed", "The body is not UTF-8 text.") from None
    try:
        cosigned = await to_thread.run_sync(ledger_of(request).add_cosignatures, note)
    except CosignatureRefused as exc:
        status = 409 if exc.code == "checkpoint_unknown" else 422
        raise Problem(status, exc.code, str(exc)) from None
    return JSONResponse({"size": cosigned.size, "witnesses": list(cosigned.witnesses)})
