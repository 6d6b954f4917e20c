"""Packs installed for a test: real distributions on disk that importlib.metadata finds."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest


class FakeDistributions:
    """Real distributions on disk (dist-info + module) that importlib.metadata discovers."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = root
        self.root.mkdir(exist_ok=True)
        monkeypatch.syspath_prepend(str(root))
        self._monkeypatch = monkeypatch

    def add(self, dist: str, module: str, source: str, version: str = "1.2.3", **more: str) -> None:
        """Install ``module`` as distribution ``dist``; ``more`` adds further modules, each with
        its own entry point in the same distribution."""
        info = self.root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        modules = {module: source, **more}
        lines = "".join(f"{name} = {name}\n" for name in modules)
        (info / "entry_points.txt").write_text(f"[openexec]\n{lines}")
        for name, text in modules.items():
            (self.root / f"{name}.py").write_text(text)
            self._monkeypatch.delitem(sys.modules, name, raising=False)
