"""Where an auditor or a witness reads a log from: the service's ``/ledger/`` URL, or a
directory ``openexec ledger export`` wrote. Both hold the same paths:

* ``checkpoint``, ``key``: the signed checkpoint (with cosignatures) and the verifier key;
* ``tile/<L>/<N>[.p/<W>]``, ``tile/entries/<N>[.p/<W>]``: tlog-tiles;
* ``receipts/<N>[.p/<W>]``: the receipt envelopes of entry bundle N, one JSON a line;
* ``receipt-keys``: the receipt public keys, as ``GET /receipts/keys`` lists them.

Nothing read from a source is trusted: the checkpoint is checked against a verifier key the
auditor brings, and everything else against the checkpoint.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from typing import Protocol

from openexec.ledger.tiles import TILE_WIDTH, decode_bundle, entries_path, tile_path

# What one read may bring, by kind: a log cannot make an auditor hold more than this.
MAX_FETCH_BYTES = 64 * 1024 * 1024  # a receipt bundle: 256 envelopes of a few KB
MAX_TILE_BYTES = TILE_WIDTH * 32
MAX_BUNDLE_BYTES = TILE_WIDTH * (2 + 65_535)
MAX_NOTE_BYTES = 1024 * 1024  # a checkpoint, its signatures and cosignatures; a key list


class SourceError(Exception):
    """A source that could not be read (not a missing path: that is None)."""


class LogSource(Protocol):
    def read(self, path: str, limit: int = MAX_NOTE_BYTES) -> bytes | None:
        """The bytes at ``path``, or None if there is nothing there; SourceError past
        ``limit`` bytes."""
        ...


class DirectorySource:
    def __init__(self, root: Path) -> None:
        if not root.is_dir():
            raise SourceError(f"{str(root)!r} is not a directory")
        self.root = root

    def read(self, path: str, limit: int = MAX_NOTE_BYTES) -> bytes | None:
        try:
            with (self.root / path).open("rb") as handle:
                data = handle.read(limit + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SourceError(f"cannot read {path}: {exc.strerror}") from None
        if len(data) > limit:
            raise SourceError(f"{path} is over {limit} bytes")
        return data


class UrlSource:
    """A log served over HTTP(S), by the URL of its ``/ledger/`` prefix."""

    def __init__(self, base: str, timeout_s: float = 30.0) -> None:
        self.base = base.rstrip("/") + "/"
        self.timeout_s = timeout_s

    def read(self, path: str, limit: int = MAX_NOTE_BYTES) -> bytes | None:
        try:
            with urllib.request.urlopen(self.base + path, timeout=self.timeout_s) as answer:
                data = answer.read(limit + 1)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise SourceError(f"GET {self.base + path}: HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise SourceError(f"GET {self.base + path}: {exc}") from None
        if len(data) > limit:
            raise SourceError(f"GET {self.base + path}: over {limit} bytes")
        return data

    def post(self, path: str, body: bytes, content_type: str) -> bytes:
        request = urllib.request.Request(
            self.base + path, data=body, method="POST", headers={"Content-Type": content_type}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as answer:
                return answer.read(MAX_FETCH_BYTES)
        except urllib.error.HTTPError as exc:
            detail = exc.read(4096).decode("utf-8", "replace")
            raise SourceError(f"POST {self.base + path}: HTTP {exc.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise SourceError(f"POST {self.base + path}: {exc}") from None


def open_source(location: str) -> DirectorySource | UrlSource:
    if location.startswith(("http://", "https://")):
        return UrlSource(location)
    return DirectorySource(Path(location))


class SourceTiles:
    """A ``TileReader`` over a source: the partial tile a tree size needs, or its full tile
    once the log has one (tlog-tiles lets a log delete partial tiles then)."""

    def __init__(self, source: LogSource) -> None:
        self.source = source

    def read_tile(self, level: int, index: int, width: int) -> bytes:
        data = self._read(
            tile_path(level, index, width), tile_path(level, index), width, MAX_TILE_BYTES
        )
        if len(data) < width * 32:
            raise SourceError(f"tile {tile_path(level, index, width)} is short")
        return data[: width * 32]

    def entries(self, index: int, width: int) -> list[bytes]:
        data = self._read(entries_path(index, width), entries_path(index), width, MAX_BUNDLE_BYTES)
        try:
            entries = decode_bundle(data)
        except ValueError as exc:
            raise SourceError(f"entry bundle {entries_path(index, width)}: {exc}") from None
        if len(entries) < width:
            raise SourceError(f"entry bundle {entries_path(index, width)} is short")
        return entries[:width]

    def receipts(self, index: int, width: int) -> list[bytes]:
        partial = "receipts/" + entries_path(index, width).removeprefix("tile/entries/")
        full = "receipts/" + entries_path(index).removeprefix("tile/entries/")
        return self._read(partial, full, width, MAX_FETCH_BYTES).splitlines()

    def _read(self, path: str, full_path: str, width: int, limit: int) -> bytes:
        data = self.source.read(path, limit)
        if data is None and width < TILE_WIDTH:
            data = self.source.read(full_path, limit)
        if data is None:
            raise SourceError(f"{path} is missing")
        return data
