"""Reading a service's ledger through its ASGI app, as an auditor reads a served one."""

from __future__ import annotations

from fastapi.testclient import TestClient


class ClientSource:
    """A log source read through the ASGI app, as ``UrlSource`` reads a served one."""

    def __init__(self, client: TestClient) -> None:
        self.client = client

    def read(self, path: str, limit: int = 0) -> bytes | None:
        answer = self.client.get(f"/ledger/{path}")
        if answer.status_code == 404:
            return None
        assert answer.status_code == 200, answer.text
        return answer.content
