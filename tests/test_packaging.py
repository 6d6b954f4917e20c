"""What ``pip install .`` ships: every package of the service, not only the top one."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_under_openexec_is_listed_for_setuptools() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "openexec").rglob("__init__.py")
    }
    assert set(declared["packages"]) == on_disk
