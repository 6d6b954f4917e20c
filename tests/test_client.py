"""``openexec.client``, sync and async, against real uvicorn processes.

Faults are made between the client and a real service by a small forwarding proxy in this
file: it can drop a connection after the service answered (the answer is lost, the action ran),
or answer one request with a load balancer's 503 itself. The service is never imitated."""

from __future__ import annotations

import asyncio
import http.client
import re
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from openexec.approvals import mint_v1, mint_v2
from openexec.client import (
    PROBLEM_CLASSES,
    ApprovalInvalidSignature,
    ApprovalRequired,
    AsyncClient,
    Client,
    ExecutionInProgress,
    LedgerPending,
    NonceReused,
    PayloadInvalid,
    ReceiptNotFound,
    RetryPolicy,
    UnknownAction,
)
from openexec.ledger.note import parse_vkey
from openexec.ledger.offline import prove
from openexec.receipts import public_key_pem
from tests.support.commands import wait_until
from tests.support.processes import Uvicorn

ROOT = Path(__file__).resolve().parents[1]
FAST = RetryPolicy(backoff_s=0.01, max_delay_s=0.1, deadline_s=30)


class Proxy:
    """Forwards HTTP/1.1 requests to ``upstream`` one by one and records ``(path, status)``
    of each. ``drop_next`` forwards the next request and then closes the client's connection
    instead of relaying the answer; ``unavailable_next`` answers the next one with a plain
    503 without forwarding it."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.seen: list[tuple[str, int]] = []
        self.drop_next = False
        self.unavailable_next = False
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                proxy.handle(self)

            do_POST = do_GET

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def requests(self, path: str) -> list[int]:
        """The statuses of the requests for ``path`` so far (0: answer dropped)."""
        with self._lock:
            return [status for seen, status in self.seen if seen == path]

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        body = request.rfile.read(int(request.headers.get("Content-Length", 0)))
        with self._lock:
            unavailable, self.unavailable_next = self.unavailable_next, False
        if unavailable:
            self._answer(request, 503, [("Content-Type", "text/plain")], b"upstream restarting")
            with self._lock:
                self.seen.append((request.path, 503))
            return
        upstream = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, 60)
        skip = {"host", "connection", "content-length"}
        headers = {k: v for k, v in request.headers.items() if k.lower() not in skip}
        upstream.request(request.command, request.path, body, headers)
        answer = upstream.getresponse()
        data = answer.read()
        upstream.close()
        with self._lock:
            drop, self.drop_next = self.drop_next, False
            self.seen.append((request.path, 0 if drop else answer.status))
        if drop:  # the action ran and answered; the client never hears of it
            request.close_connection = True
            request.connection.shutdown(socket.SHUT_RDWR)
            return
        skip = {"connection", "content-length", "transfer-encoding", "date", "server"}
        self._answer(
            request,
            answer.status,
            [h for h in answer.getheaders() if h[0].lower() not in skip],
            data,
        )

    @staticmethod
    def _answer(
        request: BaseHTTPRequestHandler, status: int, headers: list[tuple[str, str]], data: bytes
    ) -> None:
        request.send_response_only(status)
        for name, value in headers:
            request.send_header(name, value)
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class BlockingAsync:
    """``AsyncClient`` behind ``Client``'s interface, so one test body checks both: each
    method call runs in an event loop of its own with a fresh ``AsyncClient``."""

    def __init__(self, url: str, **options: Any) -> None:
        self.url, self.options = url, options

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            async def run() -> Any:
                async with AsyncClient(self.url, **self.options) as client:
                    return await getattr(client, name)(*args, **kwargs)

            return asyncio.run(run())

        return call


@pytest.fixture(params=["sync", "async"])
def connect(request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    """``connect(url, **options)``: a ``Client``, or the ``AsyncClient`` made to look like one."""
    opened: list[Client] = []

    def make(url: str, **options: Any) -> Any:
        if request.param == "async":
            return BlockingAsync(url, **options)
        opened.append(Client(url, **options))
        return opened[-1]

    yield make
    for client in opened:
        client.close()


class Service:
    """A uvicorn serving the probe pack, its journal, and a proxy in front of it."""

    def __init__(self, directory: Path, **env: str) -> None:
        self.probe = directory / "probe"
        settings = {
            "OPENEXEC_DB_URL": f"sqlite:///{directory / 'openexec.db'}",
            "OPENEXEC_PROBE_DIR": str(self.probe),
            "OPENEXEC_LEDGER_INTERVAL_MS": "100",
            **env,
        }
        self.server = Uvicorn("tests.support.server:app", settings, log=directory / "uvicorn.log")
        self.url = self.server.url
        self.proxy = Proxy(self.url)

    def runs(self, note: str) -> list[str]:
        """The execution ids of the probe.bump runs with ``note``: one line per real run."""
        journal = self.probe / "journal.txt"
        lines = journal.read_text().splitlines() if journal.exists() else []
        return [line.split()[0] for line in lines if line.split()[1:] == [note]]

    def stop(self) -> None:
        self.proxy.close()
        self.server.stop()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    service = Service(tmp_path_factory.mktemp("demo"))
    yield service
    service.stop()


APPROVER = Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def shield(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    service = Service(
        tmp_path_factory.mktemp("shield"),
        OPENEXEC_MODE="clawshield",
        CLAWSHIELD_PUBLIC_KEY=public_key_pem(APPROVER.public_key()),
    )
    yield service
    service.stop()


def note() -> str:
    """A fresh journal note, so tests sharing a service count only their own runs."""
    return f"n-{uuid.uuid4().hex[:12]}"


def test_execute_echo_and_its_replay(tmp_path: Path, connect: Callable[..., Any]) -> None:
    server = Uvicorn(
        "main:app",
        {"OPENEXEC_DB_URL": f"sqlite:///{tmp_path / 'db'}", "OPENEXEC_PLUGINS": "openexec-echo"},
    )
    try:
        client = connect(server.url)
        first = client.execute("echo", {"msg": "hi"})
        assert first.status == "succeeded" and first.succeeded and first.error is None
        assert first.result == {"echo": {"msg": "hi"}} and first.replayed is False
        again = client.execute("echo", {"msg": "hi"}, nonce=first.nonce)
        assert again.replayed is True and again.id == first.id
        assert again.receipt_envelope == first.receipt_envelope
        # Each call without a nonce makes its own: a second call is a second execution.
        other = client.execute("echo", {"msg": "hi"})
        assert other.nonce != first.nonce and other.id != first.id and not other.replayed
    finally:
        server.stop()


def test_a_failed_execution_is_an_answer_not_an_exception(
    demo: Service, connect: Callable[..., Any]
) -> None:
    answer = connect(demo.url).execute("probe.refuse")
    assert answer.status == "failed" and answer.result is None
    assert answer.error is not None and answer.error.code == "refused"


def test_refusals_raise_their_class_and_are_not_retried(
    demo: Service, connect: Callable[..., Any]
) -> None:
    client = connect(demo.proxy.url, retry=FAST)
    with pytest.raises(UnknownAction) as unknown:
        client.execute("no.such", {}, nonce="unknown-1")
    assert (unknown.value.status, unknown.value.code) == (404, "unknown_action")
    assert unknown.value.nonce == "unknown-1" and unknown.value.problem["status"] == 404
    with pytest.raises(PayloadInvalid) as invalid:
        client.execute("probe.bump", {"unexpected": 1})
    assert invalid.value.status == 422 and invalid.value.errors[0]["loc"]
    first = client.execute("probe.bump", {"note": note()})
    with pytest.raises(NonceReused) as reused:
        client.execute("probe.bump", {"note": "another"}, nonce=first.nonce)
    assert reused.value.nonce == first.nonce and "different request" in reused.value.detail
    # One request each: nothing that refused was asked again.
    assert sorted(demo.proxy.requests("/execute")[-4:]) == [200, 404, 422, 422]


def test_every_documented_problem_code_has_its_class() -> None:
    table = (ROOT / "docs" / "api.md").read_text().split("## Errors", 1)[1]
    documented = set(re.findall(r"^\| \d{3} \| (.+?) \|", table, re.MULTILINE))
    codes = {code for cell in documented for code in re.findall(r"`([a-z_]+)`", cell)}
    assert len(codes) > 25 and codes <= PROBLEM_CLASSES.keys(), codes - PROBLEM_CLASSES.keys()
    for code, kind in PROBLEM_CLASSES.items():
        assert kind.problem_code == code


def test_a_retry_after_the_connection_dropped_mid_request_gets_the_replay(
    demo: Service, connect: Callable[..., Any]
) -> None:
    """The service ran the action and answered, but the answer never reached the client: its
    retry sends the same nonce, so it gets the stored answer and the action ran once."""
    marker = note()
    demo.proxy.drop_next = True
    before = len(demo.proxy.requests("/execute"))
    answer = connect(demo.proxy.url, retry=FAST).execute("probe.bump", {"note": marker})
    assert demo.proxy.requests("/execute")[before:] == [0, 200]
    assert demo.runs(marker) == [answer.id]  # ran exactly once
    assert answer.replayed is True and answer.status == "succeeded"


def test_a_503_from_in_front_of_the_service_is_retried(
    demo: Service, connect: Callable[..., Any]
) -> None:
    marker = note()
    demo.proxy.unavailable_next = True
    before = len(demo.proxy.requests("/execute"))
    answer = connect(demo.proxy.url, retry=FAST).execute("probe.bump", {"note": marker})
    assert demo.proxy.requests("/execute")[before:] == [503, 200]
    assert demo.runs(marker) == [answer.id] and answer.replayed is False


def test_a_409_in_progress_is_waited_out_with_the_same_nonce(
    demo: Service, connect: Callable[..., Any]
) -> None:
    marker, nonce = note(), f"slow-{uuid.uuid4()}"
    payload = {"note": marker, "hold_s": 1.5}
    first: list[Any] = []
    with Client(demo.url) as direct:
        runner = threading.Thread(
            target=lambda: first.append(direct.execute("probe.bump", payload, nonce=nonce))
        )
        runner.start()
        try:
            wait_until(lambda: demo.runs(marker))  # it is running now
            impatient = connect(demo.proxy.url, retry=RetryPolicy(attempts=2, max_delay_s=0.05))
            with pytest.raises(ExecutionInProgress) as busy:
                impatient.execute("probe.bump", payload, nonce=nonce)
            assert busy.value.nonce == nonce and busy.value.retry_after >= 1
            before = len(demo.proxy.requests("/execute"))
            patient = connect(demo.proxy.url, retry=RetryPolicy(max_delay_s=0.2, attempts=50))
            answer = patient.execute("probe.bump", payload, nonce=nonce)
        finally:
            runner.join()
    statuses = demo.proxy.requests("/execute")[before:]
    assert statuses[0] == 409 and statuses[-1] == 200 and set(statuses) == {409, 200}
    assert answer.replayed is True and answer.id == first[0].id
    assert demo.runs(marker) == [answer.id]


def test_helpers_list_actions_health_receipts_and_ledger_proofs(
    demo: Service, connect: Callable[..., Any]
) -> None:
    client = connect(demo.url)
    actions = {action.name: action for action in client.actions()}
    assert actions["probe.bump"].input_schema["properties"].keys() == {"note", "hold_s"}
    health = client.health()
    assert health.exec_mode == "demo" and health.plugins[0].name == "probe-pack"
    [key, *_] = client.receipt_keys()
    assert key.key_id == health.receipt_key_id
    answer = client.execute("probe.bump", {"note": note()})
    assert client.receipt(answer.id) == answer.receipt_envelope
    with pytest.raises(ReceiptNotFound):
        client.receipt(str(uuid.uuid4()))

    def proof() -> str | None:
        try:
            return client.ledger_proof(answer.id)
        except LedgerPending:
            return None

    text = wait_until(proof)
    vkey = parse_vkey(httpx2.get(f"{demo.url}/ledger/key", timeout=10).text.strip())
    assert prove(answer.receipt_envelope.as_json(), text, vkey).exec_id == answer.id


def test_clawshield_refusal_carries_the_request_to_sign_then_runs_signed(
    shield: Service, connect: Callable[..., Any]
) -> None:
    client = connect(shield.url)
    marker = note()
    with pytest.raises(ApprovalRequired) as refused:
        client.execute("probe.bump", {"note": marker})
    asked = refused.value.approval_request
    assert refused.value.status == 403 and asked is not None
    assert asked["action"] == "probe.bump" and asked["payload"] == {"note": marker}
    assert asked["nonce"] == refused.value.nonce and shield.runs(marker) == []
    artifact = mint_v2(
        APPROVER,
        asked["action"],
        asked["payload"],
        nonce=asked["nonce"],
        tenant_id=asked["tenant_id"],
        aud=asked["aud"],
    )
    answer = client.execute("probe.bump", {"note": marker}, refused.value.nonce, artifact)
    assert answer.approved and answer.status == "succeeded" and not answer.replayed
    assert shield.runs(marker) == [answer.id]
    # A v1 artifact, and a forged one, which is refused with the request to sign attached.
    v1 = mint_v1(APPROVER, "probe.bump", {"note": marker})
    assert client.execute("probe.bump", {"note": marker}, approval=v1).status == "succeeded"
    forged = mint_v1(Ed25519PrivateKey.generate(), "probe.bump", {"note": marker})
    with pytest.raises(ApprovalInvalidSignature) as invalid:
        client.execute("probe.bump", {"note": marker}, approval=forged)
    assert invalid.value.approval_request["v1_action_hash"] == v1["action_hash"]
    assert len(shield.runs(marker)) == 2
