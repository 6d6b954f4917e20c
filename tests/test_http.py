"""The HTTP surface itself: media types, methods, paths, what errors echo back, the OpenAPI
document and the offline API docs."""

from __future__ import annotations

import json
import re
import socket
from html.parser import HTMLParser

import openexec_echo
import pytest

from openexec.api.routes import is_json
from tests.conftest import PROBE, execute, stored_rows
from tests.support.processes import Uvicorn

JSON = {"content-type": "application/json"}
EXECUTE_BODY = b'{"action":"echo","payload":{"x":1},"nonce":"media-type"}'
HUGE = "x" * 20_000
SMALL = 2_000  # bytes: any error answer to a 20 KB input must stay under this
DETAIL_LIMIT = 256  # characters: the longest detail an error answer carries


@pytest.fixture
def http(openexec_client):
    """A SQLite app serving the echo and probe packs: the HTTP surface does not depend on the
    store, so these tests run once, not once per backend."""
    return openexec_client(openexec_echo, PROBE)


def assert_problem(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status and problem["code"] == code
    return problem


# 1. Content type: only application/json, at most with charset=utf-8.

REFUSED_CONTENT_TYPES = [
    None,
    "",
    "text/plain;json",
    "application/x-www-form-urlencoded; x=json",
    "multipart/form-data; boundary=json",
    "text/json",
    "application/jsonx",
    "application/json-seq",
    "application/problem+json",
    "application/json, text/plain",
    "application/json; charset=latin-1",
    "application/json; charset=utf-8; boundary=x",
    "application/json; charset=utf-8; charset=utf-8",
    "application/json; x=json",
    "application/json; charset",
    "application /json",
    "text/plain",
    # str.strip() takes these for white space; HTTP's optional white space is SP and HTAB only
    "application/json\x1c",
    "\xa0application/json",
    "application/json;\x85charset=utf-8\x1f",
    'application/json\x1e;\x1fcharset="utf-8"',
]
ACCEPTED_CONTENT_TYPES = [
    "application/json",
    "APPLICATION/JSON",
    "Application/Json; Charset=UTF-8",
    "application/json;charset=utf-8",
    "application/json ; charset=utf-8 ",
    'application/json; charset="utf-8"',
    'application/json; charset="UTF-8"',
]


@pytest.mark.parametrize("content_type", [c for c in REFUSED_CONTENT_TYPES if c is not None])
def test_is_json_refuses_what_the_service_refuses(content_type):
    assert not is_json([content_type])


def with_content_type(content_type: str | None) -> dict[str, bytes]:
    """The header as the bytes a client sends (latin-1, as HTTP fields are)."""
    return {} if content_type is None else {"content-type": content_type.encode("latin-1")}


@pytest.mark.parametrize("content_type", REFUSED_CONTENT_TYPES)
def test_execute_refuses_every_other_media_type_with_415(client, content_type):
    response = client.post(
        "/execute", content=EXECUTE_BODY, headers=with_content_type(content_type)
    )
    assert_problem(response, 415, "unsupported_media_type")
    assert stored_rows(client) == []


@pytest.mark.parametrize("content_type", REFUSED_CONTENT_TYPES)
def test_verify_refuses_every_other_media_type_with_415(http, content_type):
    envelope = execute(http, "echo", {"x": 1}).json()["receipt_envelope"]
    body = json.dumps({"envelope": envelope}).encode()
    response = http.post("/receipts/verify", content=body, headers=with_content_type(content_type))
    assert_problem(response, 415, "unsupported_media_type")


def test_two_content_type_headers_are_415(client):
    headers = [("content-type", "application/json"), ("content-type", "text/plain")]
    response = client.post("/execute", content=EXECUTE_BODY, headers=headers)
    assert_problem(response, 415, "unsupported_media_type")
    assert stored_rows(client) == []


@pytest.mark.parametrize("content_type", ACCEPTED_CONTENT_TYPES)
def test_application_json_with_at_most_charset_utf8_is_accepted(http, content_type):
    response = http.post("/execute", content=EXECUTE_BODY, headers={"content-type": content_type})
    assert response.status_code == 200, response.text
    envelope = response.json()["receipt_envelope"]
    verdict = http.post(
        "/receipts/verify",
        content=json.dumps({"envelope": envelope}).encode(),
        headers={"content-type": content_type},
    )
    assert verdict.status_code == 200 and verdict.json()["valid"] is True


# 2. A client that goes away mid-body is not an error worth a traceback.


def send_headers_then_hang_up(port: int) -> None:
    """Declare a 1000-byte body, send 10 bytes of it, close the connection."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"POST /execute HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
            b'{"action":'
        )


def test_a_client_disconnecting_mid_body_logs_no_traceback(tmp_path):
    log = tmp_path / "uvicorn.log"
    env = {
        "OPENEXEC_DB_URL": f"sqlite:///{tmp_path / 'openexec.db'}",
        "OPENEXEC_PROBE_DIR": str(tmp_path / "files"),
    }
    server = Uvicorn("tests.support.server:app", env, log=log)
    try:
        before = log.read_text()
        hang_ups = 5
        for _ in range(hang_ups):
            send_headers_then_hang_up(server.port)
    finally:
        server.stop()  # a graceful stop waits for the requests in flight: their logging is done
    logged = log.read_text()[len(before) :]
    assert "Traceback" not in logged, logged
    assert "Exception" not in logged, logged
    assert len(logged.splitlines()) <= hang_ups, logged
    assert all(len(line) < 200 for line in logged.splitlines()), logged


# 3. HEAD works on every GET route; 4. /receipts/verify is POST only; 5. no redirects.


def get_paths(client, exec_id: str) -> list[str]:
    """Every GET route: those the OpenAPI document lists, path parameters filled in, and the
    ones it leaves out (the document itself and the docs pages)."""
    documented = [
        path.replace("{exec_id}", exec_id).replace(
            "{path}", "000.p/1" if "receipts" in path else "0/000.p/1"
        )
        for path, operations in client.get("/openapi.json").json()["paths"].items()
        if "get" in operations
    ]
    return [*documented, "/openapi.json", "/docs", "/redoc"]


def test_head_answers_every_get_route_like_get_without_a_body(http):
    exec_id = execute(http, "echo", {"x": 1}).json()["id"]
    http.app.state.ledger.integrator.integrate()  # the ledger's routes then serve it
    paths = get_paths(http, exec_id)
    assert {"/", "/health", "/ready", "/version", "/actions", "/receipts/keys"} <= set(paths)
    assert f"/receipts/{exec_id}" in paths and "/openapi.json" in paths and "/docs" in paths
    for path in paths:
        got, head = http.get(path), http.head(path)
        assert head.status_code == got.status_code == 200, path
        assert head.content == b"", path
        assert head.headers["content-type"] == got.headers["content-type"], path
        if path != "/version":  # its timestamp may be a character shorter or longer
            assert head.headers["content-length"] == got.headers["content-length"], path
    for asset in links_of(http.get("/docs").text):
        head = http.head(asset)
        assert head.status_code == 200 and head.content == b"", asset
        assert int(head.headers["content-length"]) == len(http.get(asset).content), asset


def test_head_on_a_missing_receipt_is_a_bodiless_404(http):
    head = http.head("/receipts/00000000-0000-0000-0000-000000000000")
    assert head.status_code == 404 and head.content == b""
    assert head.headers["content-type"] == "application/problem+json"


def test_a_405_on_a_get_route_allows_get_and_head(http):
    problem = assert_problem(http.post("/health", json={}), 405, "method_not_allowed")
    assert problem["detail"]
    allowed = {method.strip() for method in http.post("/health").headers["allow"].split(",")}
    assert allowed == {"GET", "HEAD"}


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND"])
def test_verify_answers_any_other_method_with_405_allow_post(http, method):
    response = http.request(method, "/receipts/verify")
    assert_problem(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "POST"


def test_head_on_verify_is_405_allow_post(http):
    response = http.head("/receipts/verify")
    assert response.status_code == 405 and response.headers["allow"] == "POST"


def test_execute_answers_get_with_405_allow_post(http):
    response = http.get("/execute")
    assert_problem(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "POST"


@pytest.mark.parametrize(
    "method, path",
    [
        ("GET", "/health/"),
        ("GET", "/receipts/keys/"),
        ("GET", "/docs/"),
        ("POST", "/execute/"),
        ("POST", "/receipts/verify/"),
        ("GET", "/receipts/00000000-0000-0000-0000-000000000000/"),
    ],
)
def test_a_trailing_slash_is_a_404_never_a_redirect(http, method, path):
    response = http.request(
        method, path, headers={"host": "evil.example"}, json={}, follow_redirects=False
    )
    assert_problem(response, 404, "not_found")
    assert "location" not in response.headers
    assert "evil.example" not in response.text


# 6. Nothing a caller sends comes back unbounded.


def assert_not_echoed(response) -> None:
    """No more of a 20 KB input comes back than a detail may quote."""
    assert response.status_code < 500, response.text[:500]
    assert "x" * (DETAIL_LIMIT + 1) not in response.text, response.text[:500]


def assert_small(response) -> None:
    assert_not_echoed(response)
    assert len(response.content) < SMALL, (response.status_code, response.text[:500])


def test_a_20kb_receipt_id_is_quoted_shortened(http):
    problem = assert_problem(http.get(f"/receipts/{HUGE}"), 404, "receipt_not_found")
    assert "x" * 64 + "…" in problem["detail"] and "x" * 65 not in problem["detail"]


def test_20kb_inputs_to_every_route_get_small_answers(http):
    for path in [f"/{HUGE}", f"/receipts/{HUGE}", f"/receipts/{HUGE}/x", f"/health/{HUGE}"]:
        assert_small(http.get(path))
        assert_small(http.post(path, json={}))
    for path in ["/", "/health", "/ready", "/version", "/actions", "/receipts/keys"]:
        assert_small(http.post(path, json={}))
        assert_not_echoed(http.get(path, params={HUGE: HUGE}))
    for body in [
        {"action": HUGE, "nonce": "n"},
        {"action": "echo", "nonce": HUGE},
        {"action": "echo", "nonce": "n", HUGE: 1},
        {"action": "add", "nonce": "n", "payload": {"a": 1, "b": 2, HUGE: 3}},
        {"action": "add", "nonce": "n", "payload": {"a": HUGE, "b": 2}},
        {"action": "echo", "nonce": "n", "approval_artifact": HUGE},
    ]:
        assert_small(http.post("/execute", json=body))
    for body in [
        {HUGE: 1},
        {"exec_id": HUGE, "receipt": "r", "result": None},
        {"exec_id": "x", "receipt": HUGE, "result": None},
        {"envelope": {HUGE: HUGE}},
        {"envelope": {"payloadType": HUGE, "payload": "", "signatures": []}},
    ]:
        assert_small(http.post("/receipts/verify", json=body))
    assert_small(http.post("/execute", content=b"{" + HUGE.encode(), headers=JSON))
    assert_small(http.post("/execute", content=EXECUTE_BODY, headers={"content-type": HUGE}))
    assert stored_rows(http) == []


def test_many_invalid_fields_get_a_bounded_list_of_errors(http):
    body = {"action": "echo", "nonce": "n", **{f"extra{i}": i for i in range(5000)}}
    problem = assert_problem(http.post("/execute", json=body), 422, "invalid_request")
    assert 0 < len(problem["errors"]) <= 20
    assert len(http.post("/execute", json=body).content) < 5 * SMALL


def test_a_20kb_field_in_an_approval_is_not_echoed(make_client, approver):
    shield = make_client(**approver.settings())
    artifact = {**approver.v1("echo", {}), HUGE: 1}
    response = execute(shield, "echo", {}, approval_artifact=artifact)
    problem = assert_problem(response, 403, "approval_malformed")
    assert len(problem["detail"]) <= DETAIL_LIMIT + 1 and problem["detail"].endswith("…")
    assert len(response.content) < SMALL


# 7. The OpenAPI document describes every error answer.

ERROR_ANSWERS = [
    ("/execute", "post", [403, 404, 409, 413, 415, 422, 503]),
    ("/receipts/{exec_id}", "get", [404]),
    ("/receipts/verify", "post", [413, 415, 422]),
]


def test_openapi_describes_the_problem_schema(http):
    schema = http.get("/openapi.json").json()
    problem = schema["components"]["schemas"]["Problem"]
    assert set(problem["required"]) == {"type", "status", "code", "detail"}
    assert {"errors", "approval_request", "outcome"} <= set(problem["properties"])


@pytest.mark.parametrize("path, method, statuses", ERROR_ANSWERS)
def test_openapi_lists_the_error_answers_as_problem_json(http, path, method, statuses):
    responses = http.get("/openapi.json").json()["paths"][path][method]["responses"]
    for status in statuses:
        answer = responses[str(status)]
        assert answer["description"], status
        assert set(answer["content"]) == {"application/problem+json"}, status
        schema = answer["content"]["application/problem+json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/Problem"}, status


def test_openapi_lists_the_success_answers(http):
    paths = http.get("/openapi.json").json()["paths"]
    assert "application/json" in paths["/execute"]["post"]["responses"]["200"]["content"]
    assert "application/json" in paths["/receipts/verify"]["post"]["responses"]["200"]["content"]


# 8. The API docs work offline.


class Links(HTMLParser):
    """Every src and href in a page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        self.links += [value for name, value in attrs if name in ("src", "href") and value]


def links_of(html: str) -> list[str]:
    parser = Links()
    parser.feed(html)
    return parser.links


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_api_docs_reference_no_outside_url_and_their_assets_are_served(http, page):
    response = http.get(page)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    assert not re.search(r"https?://|//[a-z]", response.text, re.IGNORECASE), response.text
    links = links_of(response.text)
    assert any(link.endswith(".js") for link in links), links
    assert page == "/redoc" or any(link.endswith(".css") for link in links), links
    for link in links:
        assert link.startswith("/"), link
        asset = http.get(link)
        assert asset.status_code == 200 and asset.content, link
    assert "/openapi.json" in response.text


def test_the_docs_assets_directory_lists_nothing(http):
    for link in links_of(http.get("/docs").text):
        folder = link.rsplit("/", 1)[0]
        assert http.get(folder).status_code == 404
        assert http.get(folder + "/").status_code == 404


# 9. /health says "healthy".


def test_health_status_is_healthy(http):
    assert http.get("/health").json()["status"] == "healthy"
