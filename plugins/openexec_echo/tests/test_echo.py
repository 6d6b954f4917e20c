"""The echo pack, tested in-process through the host with openexec.testing."""

import openexec_echo


def test_echo_returns_the_payload(openexec_client):
    client = openexec_client(openexec_echo)
    payload = {"msg": "hello", "nested": {"list": [1, 2.5, True, None]}, "text": "héllo"}
    body = client.post(
        "/execute", json={"action": "echo", "payload": payload, "nonce": "e-1"}
    ).json()
    assert body["status"] == "succeeded"
    assert body["result"] == {"echo": payload}


def test_add_sums_numbers(openexec_client):
    client = openexec_client(openexec_echo)
    for nonce, (a, b, total) in enumerate([(1, 2, 3), (1.5, 2, 3.5), (-4, 4, 0)]):
        response = client.post(
            "/execute", json={"action": "add", "payload": {"a": a, "b": b}, "nonce": f"a-{nonce}"}
        )
        assert response.status_code == 200
        assert response.json()["result"] == {"sum": total}


def test_add_rejects_non_numbers_before_running(openexec_client):
    client = openexec_client(openexec_echo)
    for bad in ({"a": "1", "b": 2}, {"a": True, "b": 2}, {"a": 1}, {"a": 1, "b": 2, "c": 3}):
        response = client.post("/execute", json={"action": "add", "payload": bad, "nonce": "bad"})
        assert response.status_code == 422
        assert response.json()["code"] == "payload_invalid"
    # the refused requests consumed nothing: the nonce is still free
    ok = client.post(
        "/execute", json={"action": "add", "payload": {"a": 1, "b": 1}, "nonce": "bad"}
    )
    assert ok.json()["result"] == {"sum": 2}


def test_actions_are_listed_with_plugin_and_schema(openexec_client):
    client = openexec_client(openexec_echo)
    listed = {a["name"]: a for a in client.get("/actions").json()}
    assert set(listed) == {"echo", "add"}
    assert listed["add"]["plugin"] == "openexec-echo"
    assert listed["add"]["input_schema"]["required"] == ["a", "b"]
    assert listed["echo"]["input_schema"]["type"] == "object"
