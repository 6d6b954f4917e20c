"""The pack inside a real app over HTTP, via the ``openexec_client`` fixture of openexec.testing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import openexec_files

ACTIONS = [
    "files.apply_patch",
    "files.delete",
    "files.list",
    "files.mkdir",
    "files.move",
    "files.read",
    "files.stat",
    "files.write",
]


def execute(client: Any, action: str, payload: dict[str, Any], nonce: str) -> Any:
    return client.post("/execute", json={"action": action, "payload": payload, "nonce": nonce})


def test_actions_are_listed_with_input_schemas(
    openexec_client: Callable[..., Any], tmp_path: Path
) -> None:
    client = openexec_client(
        openexec_files, settings={"OPENEXEC_FILES_ROOT": str(tmp_path / "root")}
    )
    listed = {entry["name"]: entry for entry in client.get("/actions").json()}
    assert sorted(listed) == ACTIONS
    for entry in listed.values():
        assert entry["plugin"] == "openexec-files"
        assert entry["description"]
        assert entry["input_schema"]["type"] == "object"
        assert entry["input_schema"]["additionalProperties"] is False
    write = listed["files.write"]["input_schema"]
    assert write["required"] == ["path", "content"]
    assert write["properties"]["mode"]["enum"] == ["create", "overwrite", "append"]
    assert listed["files.move"]["input_schema"]["required"] == ["src", "dst"]


def test_a_filtered_action_is_refused_with_403(
    openexec_client: Callable[..., Any], tmp_path: Path
) -> None:
    root = tmp_path / "root"
    client = openexec_client(
        openexec_files,
        settings={"OPENEXEC_FILES_ROOT": str(root)},
        allowed_actions=("files.read", "files.list"),
    )
    assert sorted(entry["name"] for entry in client.get("/actions").json()) == [
        "files.list",
        "files.read",
    ]
    refused = execute(client, "files.write", {"path": "a.txt", "content": "x"}, "n-1")
    assert refused.status_code == 403
    assert refused.json()["code"] == "action_not_allowed"
    assert not (root / "a.txt").exists()
    listed = execute(client, "files.list", {}, "n-2")
    assert listed.status_code == 200
    assert listed.json()["result"] == {"path": ".", "entries": [], "truncated": False}


def test_bad_paths_are_422_and_failures_are_recorded(
    openexec_client: Callable[..., Any], tmp_path: Path
) -> None:
    client = openexec_client(
        openexec_files, settings={"OPENEXEC_FILES_ROOT": str(tmp_path / "root")}
    )
    invalid = execute(client, "files.write", {"path": "../escape.txt", "content": "x"}, "n-1")
    assert invalid.status_code == 422
    assert invalid.json()["code"] == "payload_invalid"
    assert not (tmp_path / "escape.txt").exists()
    missing = execute(client, "files.read", {"path": "missing.txt"}, "n-2")
    assert missing.status_code == 200
    body = missing.json()
    assert (body["status"], body["result"], body["error"]["code"]) == ("failed", None, "not_found")


def test_a_replayed_write_never_writes_twice(
    openexec_client: Callable[..., Any], tmp_path: Path
) -> None:
    root = tmp_path / "root"
    client = openexec_client(openexec_files, settings={"OPENEXEC_FILES_ROOT": str(root)})
    payload = {"path": "log.txt", "content": "first\n", "mode": "append"}
    first = execute(client, "files.write", payload, "append-once")
    assert first.status_code == 200
    assert first.json()["status"] == "succeeded"
    assert first.json()["replayed"] is False
    with (root / "log.txt").open("a") as log:  # out of band, between the two requests
        log.write("out of band\n")
    again = execute(client, "files.write", payload, "append-once")
    assert again.status_code == 200
    assert again.json()["replayed"] is True
    assert again.json()["result"] == first.json()["result"]
    assert (root / "log.txt").read_text() == "first\nout of band\n"


def test_apply_patch_through_the_host_replays_without_writing(
    openexec_client: Callable[..., Any], tmp_path: Path
) -> None:
    root = tmp_path / "root"
    client = openexec_client(openexec_files, settings={"OPENEXEC_FILES_ROOT": str(root)})
    body = {
        "action": "files.apply_patch",
        "payload": {"patch": "*** Begin Patch\n*** Add File: a.txt\n+hi\n*** End Patch\n"},
        "nonce": "patch-once",
    }
    first = client.post("/execute", json=body).json()
    assert first["status"] == "succeeded" and first["result"]["added"] == ["a.txt"]
    (root / "a.txt").unlink()
    replay = client.post("/execute", json=body).json()
    assert replay["replayed"] and replay["result"] == first["result"]
    assert not (root / "a.txt").exists()  # the stored answer; nothing was written again
    malformed = {**body, "nonce": "bad", "payload": {"patch": "*** Begin Patch\nno\n"}}
    answer = client.post("/execute", json=malformed)
    assert answer.status_code == 422 and "line 2" in answer.text
