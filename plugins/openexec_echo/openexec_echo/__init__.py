"""The echo pack: ``echo`` returns its payload, ``add`` sums two numbers. No side effects."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, RootModel

from openexec import Action, Context, hookimpl


class EchoInput(RootModel[dict[str, Any]]):
    """Any JSON object."""


class AddInput(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    a: int | float
    b: int | float


# Async handlers run on the event loop, with no thread hand-off: right for work that never
# blocks, as here. A handler that does I/O or heavy computation should be a plain function.
async def echo(payload: EchoInput, ctx: Context) -> dict[str, Any]:
    return {"echo": payload.root}


async def add(payload: AddInput, ctx: Context) -> dict[str, Any]:
    return {"sum": payload.a + payload.b}


@hookimpl
def register_actions() -> list[Action]:
    return [
        Action("echo", echo, EchoInput, "Return the payload unchanged, as {'echo': payload}."),
        Action("add", add, AddInput, "Add two numbers: {'a', 'b'} -> {'sum'}."),
    ]
