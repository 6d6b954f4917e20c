"""Section 10: every malformed, oversized or wrongly typed request gets a clear 4xx and changes
nothing; none gets a 500."""

from __future__ import annotations

import json

import pytest

from tests.conftest import execute, journal, stored_rows

JSON = {"content-type": "application/json"}


def post_raw(client, body: bytes | str, headers=JSON):
    return client.post("/execute", content=body, headers=headers)


def assert_problem(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == status and problem["code"] == code
    assert isinstance(problem["detail"], str) and problem["detail"]
    return problem


def test_declared_oversized_body_is_413(make_client):
    client = make_client(max_request_bytes=1000)
    body = json.dumps({"action": "echo", "payload": {"x": "a" * 2000}, "nonce": "big"})
    assert_problem(post_raw(client, body), 413, "request_too_large")
    assert stored_rows(client) == []


def test_streamed_oversized_body_without_length_is_413(make_client):
    client = make_client(max_request_bytes=1000)
    chunks = [b'{"action":"echo","nonce":"big","payload":{"x":"', b"a" * 800, b"a" * 800, b'"}}']
    response = client.post("/execute", content=iter(chunks), headers=JSON)
    assert "content-length" not in response.request.headers
    assert_problem(response, 413, "request_too_large")
    assert stored_rows(client) == []


def test_body_just_under_the_limit_is_accepted(make_client):
    client = make_client(max_request_bytes=1000)
    body = json.dumps({"action": "echo", "payload": {"x": "a" * 900}, "nonce": "fits"})
    assert len(body) <= 1000
    assert post_raw(client, body).status_code == 200


@pytest.mark.parametrize(
    "body, fragment",
    [
        ("not json", "malformed JSON"),
        ("", "malformed JSON"),
        ('{"action":"echo","payload":{"x":NaN},"nonce":"n"}', "NaN"),
        ('{"action":"echo","payload":{"x":Infinity},"nonce":"n"}', "Infinity"),
        ('{"action":"echo","payload":{"x":-Infinity},"nonce":"n"}', "Infinity"),
        ('{"action":"echo","payload":{},"nonce":"a","nonce":"b"}', "duplicate key"),
        ('{"action":"echo","payload":{"x":1,"x":2},"nonce":"n"}', "duplicate key"),
        ('{"action":"echo","payload":{"x":9007199254740992},"nonce":"n"}', "2**53"),
        ('{"action":"echo","payload":{"x":"\\ud800"},"nonce":"n"}', "surrogate"),
        ('{"action":"echo","payload":{"x":1e400},"nonce":"n"}', "finite"),
        ('{"action":"echo","payload":{"x":[-1e999]},"nonce":"n"}', "finite"),
        ('{"action":"echo","payload":{"\\udfff":1},"nonce":"n"}', "surrogate"),
    ],
)
def test_unacceptable_json_is_422(client, body, fragment):
    problem = assert_problem(post_raw(client, body), 422, "invalid_request")
    assert fragment in problem["detail"]
    assert stored_rows(client) == []


def test_invalid_utf8_is_422(client):
    problem = assert_problem(
        post_raw(client, b'{"action":"echo","nonce":"\xff"}'), 422, "invalid_request"
    )
    assert "UTF-8" in problem["detail"]


@pytest.mark.parametrize("depth", [65, 1000, 100_000])
def test_deep_nesting_is_422(client, depth):
    payload = "[" * depth + "]" * depth
    body = '{"action":"echo","nonce":"deep","payload":{"x":' + payload + "}}"
    problem = assert_problem(post_raw(client, body), 422, "invalid_request")
    assert "nested deeper" in problem["detail"]


def test_nesting_within_the_bound_is_accepted(client):
    value: dict = {}
    for _ in range(60):
        value = {"x": value}
    response = client.post("/execute", json={"action": "echo", "payload": value, "nonce": "ok"})
    assert response.status_code == 200


@pytest.mark.parametrize(
    "request_body, field",
    [
        ({"action": 1, "payload": {}, "nonce": "n"}, "action"),
        ({"action": "echo", "payload": [1], "nonce": "n"}, "payload"),
        ({"action": "echo", "payload": "text", "nonce": "n"}, "payload"),
        ({"action": "echo", "payload": {}, "nonce": 5}, "nonce"),
        ({"action": "echo", "payload": {}}, "nonce"),
        ({"payload": {}, "nonce": "n"}, "action"),
        ({"action": "echo", "payload": {}, "nonce": ""}, "nonce"),
        ({"action": "echo", "payload": {}, "nonce": "x" * 256}, "nonce"),
        ({"action": "echo", "payload": {}, "nonce": "has space"}, "nonce"),
        ({"action": "echo", "payload": {}, "nonce": "tab\t"}, "nonce"),
        ({"action": "echo", "payload": {}, "nonce": "é"}, "nonce"),
        (
            {"action": "echo", "payload": {}, "nonce": "n", "approval_artifact": "sig"},
            "approval_artifact",
        ),
        ({"action": "echo", "payload": {}, "nonce": "n", "surprise": 1}, "surprise"),
        ({"action": "", "payload": {}, "nonce": "n"}, "action"),
    ],
)
def test_wrongly_shaped_requests_are_422_naming_the_field(client, request_body, field):
    response = client.post("/execute", json=request_body)
    problem = assert_problem(response, 422, "invalid_request")
    assert any(field in error["loc"] for error in problem["errors"])
    assert stored_rows(client) == []


@pytest.mark.parametrize("body", ["[]", '"text"', "42", "null"])
def test_a_body_that_is_not_an_object_is_422(client, body):
    assert_problem(post_raw(client, body), 422, "invalid_request")


def test_longest_valid_nonce_is_accepted(client):
    nonce = "".join(chr(33 + i % 94) for i in range(255))
    response = client.post("/execute", json={"action": "echo", "payload": {}, "nonce": nonce})
    assert response.status_code == 200 and response.json()["nonce"] == nonce


def test_null_payload_means_empty(client):
    response = client.post("/execute", json={"action": "echo", "payload": None, "nonce": "p"})
    assert response.json()["result"] == {"echo": {}}


def test_unknown_action_is_404(client):
    assert_problem(
        client.post("/execute", json={"action": "rm.rf", "nonce": "n"}), 404, "unknown_action"
    )
    assert stored_rows(client) == []


def test_non_json_content_type_is_415(client):
    body = '{"action":"echo","payload":{},"nonce":"form"}'
    response = post_raw(client, body, {"content-type": "application/x-www-form-urlencoded"})
    assert_problem(response, 415, "unsupported_media_type")
    assert stored_rows(client) == []


def test_payload_failing_the_input_model_is_422_with_errors(client):
    response = client.post("/execute", json={"action": "add", "payload": {"a": 1}, "nonce": "n"})
    problem = assert_problem(response, 422, "payload_invalid")
    assert problem["errors"][0]["loc"] == ["b"]
    assert journal(client) == [] and stored_rows(client) == []


def test_unknown_routes_and_methods_are_problem_json(client):
    assert_problem(client.get("/nowhere"), 404, "not_found")
    assert_problem(client.get("/execute"), 405, "method_not_allowed")
    assert_problem(client.get("/receipts/not-an-execution"), 404, "receipt_not_found")
    assert_problem(client.get("/receipts/a%00b"), 404, "receipt_not_found")
    assert_problem(client.get("/receipts/" + "9" * 5000), 404, "receipt_not_found")


def test_hostile_verify_inputs_are_answered_not_crashed(client):
    done = execute(client, "echo", {"x": 1}, nonce="v").json()
    deep = "[" * 5000 + "]" * 5000
    for request in [
        {"exec_id": done["id"], "receipt": done["receipt"], "result": deep},
        {"envelope": done["receipt_envelope"], "result": deep},
        {"exec_id": "a\u0000b", "receipt": done["receipt"], "result": None},
    ]:
        response = client.post("/receipts/verify", json=request)
        assert response.status_code == 200 and response.json()["valid"] is False


@pytest.mark.parametrize(
    "body",
    [
        "{}",
        '{"exec_id": "x"}',
        '{"envelope": "text"}',
        '{"envelope": {}, "exec_id": "x", "receipt": "r"}',
        '{"exec_id": 1, "receipt": "r", "result": {}}',
        '{"surprise": true}',
        "[",
    ],
)
def test_bad_verify_requests_are_422(client, body):
    response = client.post("/receipts/verify", content=body, headers=JSON)
    assert_problem(response, 422, "invalid_request")


def test_an_input_model_that_raises_is_a_422_not_a_500(client):
    """A pack's validator bug (a TypeError pydantic lets through) refuses the payload; nothing
    is reserved."""
    answer = client.post(
        "/execute", json={"action": "probe.picky", "payload": {"word": "x"}, "nonce": "p"}
    )
    assert answer.status_code == 422, answer.text
    assert answer.json()["code"] == "payload_invalid"
    assert "TypeError" not in answer.text
    assert stored_rows(client) == []
