"""The ``*** Begin Patch`` format: parsing it, and applying its hunks to text.

Nothing here touches the disk: ``parse`` turns a patch into operations (a malformed patch is a
``PatchSyntaxError`` naming its line, which the payload model turns into a 422), and
``apply_hunks`` computes a file's new text from its old text. ``apply_patch.py`` does the rest.

The grammar::

    *** Begin Patch
    *** Add File: <path>          then lines "+text" (the new file's lines)
    *** Delete File: <path>
    *** Update File: <path>       optionally "*** Move to: <path>", then hunks:
    @@ [context line]             then " kept", "-removed", "+added" lines;
                                  optionally "*** End of File"
    *** End Patch

A line of the patch may end in CRLF; the CR is not part of the line. An empty line inside a
hunk is an empty kept line. The first hunk of an Update may leave out its ``@@`` line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from openexec.paths import check_path

BEGIN, END = "*** Begin Patch", "*** End Patch"
ADD, DELETE, UPDATE, MOVE = (
    "*** Add File: ",
    "*** Delete File: ",
    "*** Update File: ",
    "*** Move to: ",
)
END_OF_FILE = "*** End of File"
HUNK = "@@"


class PatchSyntaxError(ValueError):
    """The patch does not follow the grammar; the message names the line."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")


@dataclass
class Hunk:
    line: int  # where it starts in the patch, for messages
    context: str | None = None
    body: list[tuple[str, str]] = field(default_factory=list)  # (" ", "-" or "+", text)
    end_of_file: bool = False

    @property
    def old(self) -> list[str]:
        return [text for kind, text in self.body if kind != "+"]

    @property
    def new(self) -> list[str]:
        return [text for kind, text in self.body if kind != "-"]

    def replacement(self, matched: list[str]) -> list[str]:
        """The new lines, where each kept line is the file's own (``matched``, the lines the
        old ones matched): a line matched ignoring its whitespace keeps that whitespace."""
        kept = iter(
            line for line, (kind, _) in zip(matched, self.old_kinds(), strict=True) if kind == " "
        )
        return [next(kept) if kind == " " else text for kind, text in self.body if kind != "-"]

    def old_kinds(self) -> list[tuple[str, str]]:
        return [(kind, text) for kind, text in self.body if kind != "+"]


@dataclass
class Operation:
    kind: str  # "add", "delete" or "update"
    path: str
    line: int
    lines: list[str] = field(default_factory=list)  # an Add's content
    move_to: str | None = None
    hunks: list[Hunk] = field(default_factory=list)


def parse(text: str) -> list[Operation]:
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines or lines[0].strip() != BEGIN:
        raise PatchSyntaxError(1, f"a patch starts with {BEGIN!r}")
    if len(lines) < 2 or lines[-1].strip() != END:
        raise PatchSyntaxError(len(lines), f"a patch ends with {END!r}")
    operations: list[Operation] = []
    body = lines[1:-1]  # body[i] is line i + 2 of the patch (1-based; line 1 is Begin)
    index = 0
    while index < len(body):
        line, number = body[index], index + 2
        if line.startswith(ADD):
            operation = Operation("add", _path(line, ADD, number), number)
            index += 1
            while index < len(body) and not body[index].startswith("*** "):
                if not body[index].startswith("+"):
                    raise PatchSyntaxError(index + 2, "an added file's lines start with '+'")
                operation.lines.append(body[index][1:])
                index += 1
        elif line.startswith(DELETE):
            operation = Operation("delete", _path(line, DELETE, number), number)
            index += 1
        elif line.startswith(UPDATE):
            operation = Operation("update", _path(line, UPDATE, number), number)
            index += 1
            if index < len(body) and body[index].startswith(MOVE):
                operation.move_to = _path(body[index], MOVE, index + 2)
                index += 1
            index = _hunks(body, index, operation)
            if not operation.hunks and operation.move_to is None:
                raise PatchSyntaxError(number, "an Update File needs a hunk or a Move to")
        elif not line.strip():
            index += 1
            continue
        else:
            raise PatchSyntaxError(number, f"expected a file operation, found {line[:40]!r}")
        operations.append(operation)
    if not operations:
        raise PatchSyntaxError(1, "the patch changes no file")
    _check_distinct(operations)
    return operations


def _path(line: str, prefix: str, number: int) -> str:
    path = line[len(prefix) :].strip()
    try:
        return check_path(path)
    except ValueError as exc:
        raise PatchSyntaxError(number, f"{path!r}: {exc}") from None


def _hunks(body: list[str], index: int, operation: Operation) -> int:
    """Read an Update's hunks from ``body[index]``; return where the next operation starts."""
    hunk: Hunk | None = None
    while index < len(body):
        line, number = body[index], index + 2
        if line.startswith("*** ") and line.strip() != END_OF_FILE:
            break
        if line.strip() == END_OF_FILE:
            if hunk is None or not hunk.body:
                raise PatchSyntaxError(number, f"{END_OF_FILE!r} outside a hunk")
            hunk.end_of_file = True
            hunk = None
        elif line.startswith(HUNK):
            context = line[len(HUNK) :].strip()
            hunk = Hunk(number, context or None)
            operation.hunks.append(hunk)
        else:
            if hunk is None:
                if operation.hunks:  # after an End of File, only a new hunk may follow
                    raise PatchSyntaxError(number, "a hunk starts with '@@'")
                hunk = Hunk(number)  # the first hunk may leave out its @@ line
                operation.hunks.append(hunk)
            kind, rest = (line[:1], line[1:]) if line else (" ", "")
            if kind not in " -+":
                raise PatchSyntaxError(number, "a hunk's lines start with ' ', '-' or '+'")
            hunk.body.append((kind, rest))
        index += 1
    for hunk in operation.hunks:
        if not hunk.body:
            raise PatchSyntaxError(hunk.line, "an empty hunk")
    return index


def _check_distinct(operations: list[Operation]) -> None:
    """A path is touched once: two operations on one file would depend on their order."""
    seen: dict[str, int] = {}
    for operation in operations:
        for path in filter(None, (operation.path, operation.move_to)):
            if path in seen:
                raise PatchSyntaxError(
                    operation.line, f"{path!r} is already touched on line {seen[path]}"
                )
            seen[path] = operation.line


# Applying hunks to a file's text.

Comparison = Callable[[str], str]
TOLERANCES: tuple[Comparison, ...] = (lambda s: s, str.rstrip, str.strip)


class HunkMismatch(Exception):
    """A hunk whose old lines are nowhere at or after where the previous hunk ended."""

    def __init__(self, number: int, hunk: Hunk) -> None:
        super().__init__(f"hunk {number} (line {hunk.line} of the patch) matches nowhere")


@dataclass(frozen=True)
class Text:
    """A file's lines and how it writes them: CRLF or LF, a final newline or not."""

    lines: list[str]
    crlf: bool
    final_newline: bool

    @classmethod
    def of(cls, text: str) -> Text:
        if not text:
            return cls([], False, True)
        crlf = "\r\n" in text and text.count("\r\n") == text.count("\n")
        body = text.replace("\r\n", "\n") if crlf else text
        final_newline = body.endswith("\n")
        lines = body.split("\n")
        if final_newline:
            lines.pop()
        return cls(lines, crlf, final_newline)

    def render(self, lines: list[str]) -> str:
        if not lines:
            return ""
        newline = "\r\n" if self.crlf else "\n"
        return newline.join(lines) + (newline if self.final_newline else "")


def apply_hunks(text: str, hunks: list[Hunk]) -> str:
    """The new text: each hunk's old lines are found at or after the previous hunk's end
    (after its context line when it has one), exactly, then ignoring trailing whitespace, then
    ignoring surrounding whitespace, and replaced with its new lines. A hunk with no old lines
    inserts after its context line, or at the end of the file."""
    original = Text.of(text)
    lines = list(original.lines)
    position = 0
    for number, hunk in enumerate(hunks, start=1):
        if hunk.context is not None:
            found = _find(lines, [hunk.context], position, end_of_file=False)
            if found is None:
                raise HunkMismatch(number, hunk)
            position = found + 1
        if not hunk.old:
            at = position if hunk.context is not None else len(lines)
            lines[at:at] = hunk.new
            position = at + len(hunk.new)
            continue
        old = hunk.old
        found = _find(lines, old, position, hunk.end_of_file)
        if found is None:
            raise HunkMismatch(number, hunk)
        new = hunk.replacement(lines[found : found + len(old)])
        lines[found : found + len(old)] = new
        position = found + len(new)
    return original.render(lines)


def _find(lines: list[str], wanted: list[str], start: int, end_of_file: bool) -> int | None:
    last = len(lines) - len(wanted)
    starts = [last] if end_of_file else range(start, last + 1)
    for tolerance in TOLERANCES:
        expected = [tolerance(line) for line in wanted]
        seen = [tolerance(line) for line in lines]
        for at in starts:
            if at >= start and seen[at : at + len(wanted)] == expected:
                return at
    return None


def added_text(lines: list[str]) -> str:
    """An Add File's content: its lines, each ending in a newline."""
    return "".join(line + "\n" for line in lines)
