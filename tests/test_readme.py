"""The README and the docs: the clawshield walkthrough, run as written against a real uvicorn
process, and the links and commands the pages give."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import types
from datetime import UTC, datetime
from pathlib import Path

import openexec_echo
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient

from openexec.approvals import ApprovalVerifier
from openexec.receipts import private_key_pem
from openexec.testing import make_app
from tests.support.processes import Uvicorn, clean_environment, free_port

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
VERDICT = re.compile(
    r"valid [0-9a-f-]{36} succeeded mode=clawshield approval=[0-9a-f-]{36} \(openexec-v2\)"
)


def walkthrough() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Clawshield mode: from a key to a verified receipt", 1)[1]
    return re.search(r"```sh\n(.*?)```", section, re.DOTALL).group(1)


def run_walkthrough(cwd: Path, temporary: Path, port: int) -> subprocess.CompletedProcess[str]:
    """Run the block as a script would (``bash -euo pipefail``), with ``temporary`` as TMPDIR
    and ``port`` in place of 5000; whatever it leaves running is stopped."""
    temporary.mkdir(exist_ok=True)
    earlier = set(temporary.glob("*/openexec.log"))
    bin_dir = str(Path(sys.executable).parent)
    env = clean_environment(PYTHONPATH=str(ROOT), TMPDIR=str(temporary))
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    process = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", walkthrough().replace("5000", str(port))],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):  # a server a failed run left behind
            os.killpg(process.pid, signal.SIGTERM)
    # The server's log, for a failure's message.
    logs = "".join(log.read_text() for log in set(temporary.glob("*/openexec.log")) - earlier)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr + logs)


def git(checkout: Path, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    return subprocess.run(
        ["git", *args], cwd=checkout, env=environment, capture_output=True, text=True, check=False
    )


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """An empty git work tree that ignores what the project's .gitignore ignores."""
    directory = tmp_path / "checkout"
    directory.mkdir()
    assert git(directory, "init", "-q").returncode == 0
    shutil.copy(ROOT / ".gitignore", directory / ".gitignore")
    return directory


def test_walkthrough_runs_twice_in_one_directory_and_verifies_an_approved_receipt_each_time(
    tmp_path: Path,
) -> None:
    commands = [line for line in walkthrough().splitlines() if line and not line.startswith("  ")]
    assert len(commands) < 10
    for run in (1, 2):
        done = run_walkthrough(tmp_path, tmp_path / "tmp", free_port())
        assert done.returncode == 0, f"run {run}: {done.stdout}{done.stderr}"
        assert VERDICT.fullmatch(done.stdout.strip().splitlines()[-1]), done.stdout


def test_walkthrough_fails_loudly_when_another_server_holds_the_port(tmp_path: Path) -> None:
    demo = Uvicorn(
        "main:app",
        {
            "OPENEXEC_DB_URL": f"sqlite:///{tmp_path / 'demo.db'}",
            "OPENEXEC_FILES_ROOT": str(tmp_path / "demo-files"),
        },
    )
    try:
        done = run_walkthrough(tmp_path, tmp_path / "tmp", demo.port)
    finally:
        demo.stop()
    assert done.returncode != 0
    assert not any(line.startswith("valid") for line in done.stdout.splitlines()), done.stdout
    assert "answers a demo-mode server" in done.stderr  # it says what is wrong


def test_walkthrough_keeps_its_keys_private_and_out_of_the_work_tree(
    tmp_path: Path, checkout: Path
) -> None:
    temporary = tmp_path / "tmp"
    done = run_walkthrough(checkout, temporary, free_port())
    assert done.returncode == 0, done.stdout + done.stderr
    # `git add .` in the directory it ran in would add nothing it wrote.
    untracked = git(checkout, "status", "--porcelain", "--untracked-files=all").stdout
    assert untracked.splitlines() == ["?? .gitignore"], untracked
    private_keys = [
        path
        for path in [*checkout.rglob("*"), *temporary.rglob("*")]
        if path.is_file() and b"PRIVATE KEY" in path.read_bytes()
    ]
    assert {path.name for path in private_keys} >= {"approver.pem"}
    for path in private_keys:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert checkout not in path.parents, path


@pytest.mark.parametrize(
    "path",
    [
        "approver.pem",
        "keys/approver.pem",
        "openexec-receipt-key.pem",
        "openexec.db",
        "openexec.db-wal",
        "openexec.db-shm",
        "openexec.db-writer-lock",
        "openexec-files/note.txt",
        "openexec-workspace/build.log",
        "openexec-exec-state/supervisor.lock",
    ],
)
def test_gitignore_ignores_keys_and_the_services_state(checkout: Path, path: str) -> None:
    assert git(checkout, "check-ignore", "-q", "--no-index", path).returncode == 0


@pytest.mark.parametrize(
    "path", ["tests/fixtures/store-v1/approver.pem", "tests/fixtures/store-v1/openexec.db"]
)
def test_gitignore_keeps_the_published_test_fixtures(checkout: Path, path: str) -> None:
    assert git(checkout, "check-ignore", "-q", "--no-index", path).returncode == 1


def shell_blocks(page: Path) -> list[str]:
    return re.findall(r"```(?:sh|bash|console)\n(.*?)```", page.read_text(), re.DOTALL)


def test_shell_examples_run_python3() -> None:
    for page in PAGES:
        for block in shell_blocks(page):
            assert not re.search(r"(?<![\w/.-])python(?![\w.-])", block), (page.name, block)


def relative_links(page: Path) -> list[str]:
    targets = re.findall(r"\]\(([^)\s]+)\)", page.read_text())
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:|#", t)]


def test_every_docs_page_exists_and_the_readme_links_each() -> None:
    docs = {page.name for page in PAGES[1:]}
    expected = {"api.md", "execution.md", "approvals.md", "receipts.md", "storage.md"}
    assert docs >= {*expected, "operations.md", "plugins.md"}
    linked = {Path(target.partition("#")[0]).name for target in relative_links(PAGES[0])}
    assert docs <= linked, docs - linked


def anchors(page: Path) -> set[str]:
    """The fragment ids a Markdown renderer gives the page's headings (GitHub's rule)."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_relative_links_point_at_files_and_headings_that_exist() -> None:
    for page in [*PAGES, ROOT / "SECURITY.md", ROOT / "CHANGELOG.md"]:
        for target in relative_links(page):
            name, _, fragment = target.partition("#")
            path = (page.parent / name).resolve()
            assert path.exists(), f"{page.relative_to(ROOT)} links to missing {target}"
            if fragment:
                assert fragment in anchors(path), f"{page.relative_to(ROOT)}: no #{fragment}"


def repository_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    return [ROOT / name.decode() for name in listed if name and (ROOT / name.decode()).is_file()]


WORD = "sp" + "ec"  # spelled in two, so that this file does not name what it looks for
REFERENCES = re.compile(  # the contract by name, by section, or as a bare noun
    rf"\b{WORD.upper()}\b|(?i:\bthe {WORD}\b(?![-/])|\b{WORD} (?:section|step|§))".encode()
)


def test_no_file_refers_to_a_spec_document() -> None:
    """The repository documents itself: nothing points readers at a document they cannot see."""
    offenders = {
        str(path.relative_to(ROOT)): match.group().decode()
        for path in repository_files()
        for match in REFERENCES.finditer(path.read_bytes())
    }
    assert offenders == {}


def python_block(page: str, heading: str) -> str:
    section = (ROOT / "docs" / page).read_text().split(heading, 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_the_signing_example_mints_artifacts_openexec_accepts(tmp_path: Path, monkeypatch) -> None:
    key = Ed25519PrivateKey.generate()
    (tmp_path / "approver.pem").write_bytes(private_key_pem(key))
    monkeypatch.chdir(tmp_path)
    example: dict = {}
    exec(python_block("approvals.md", "## Signing without OpenExec"), example)
    verifier = ApprovalVerifier((key.public_key(),), None, "my-openexec", 60)
    for artifact, expected in ((example["v1"], "clawshield-v1"), (example["v2"], "openexec-v2")):
        approval = verifier.verify(artifact, "echo", {"msg": "hi"}, "req-1")
        verifier.check_window(approval, datetime.now(UTC))
        assert approval.format == expected


def test_the_receipt_check_by_hand_verifies_a_real_receipt(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    app = make_app(openexec_echo, directory=tmp_path)
    with TestClient(app) as client:
        answer = client.post(
            "/execute", json={"action": "echo", "payload": {"msg": "hi"}, "nonce": "by-hand"}
        ).json()
        key_pem = client.get("/receipts/keys").json()[0]["public_key_pem"]
    (tmp_path / "receipt.json").write_text(json.dumps(answer["receipt_envelope"]))
    (tmp_path / "receipt-key.pub").write_text(key_pem)
    monkeypatch.chdir(tmp_path)
    check = python_block("receipts.md", "By hand")
    exec(check, {})
    assert capsys.readouterr().out.split() == [answer["id"], "succeeded", answer["receipt"]]
    forged = {**answer["receipt_envelope"], "payload": base64.b64encode(b"{}").decode()}
    (tmp_path / "receipt.json").write_text(json.dumps(forged))
    with pytest.raises(InvalidSignature):
        exec(check, {})


def test_the_readme_pack_example_runs_with_its_settings_and_startup_hook(
    tmp_path, openexec_client, monkeypatch
):
    readme = (ROOT / "README.md").read_text().split("## Writing an action pack", 1)[1]
    source = re.search(r"```python\n(# my_pack/__init__.py\n.*?)```", readme, re.DOTALL).group(1)
    module = types.ModuleType("my_pack")
    monkeypatch.setitem(sys.modules, "my_pack", module)  # where pydantic resolves annotations
    exec(compile(source, "README.md", "exec"), module.__dict__)
    log = tmp_path / "greetings"
    client = openexec_client(
        module,
        settings={"OPENEXEC_GREET_TIMES": "2", "OPENEXEC_GREET_LOG": str(log)},
    )
    assert log.is_dir()  # the startup hook ran
    answer = client.post(
        "/execute", json={"action": "greet.hello", "payload": {"name": "ada"}, "nonce": "g"}
    ).json()
    assert answer["result"] == {"greeting": "hello ada hello ada"}
    [plugin] = client.get("/health").json()["plugins"]
    assert plugin["settings"] == {
        "OPENEXEC_GREET_LOG": str(log),
        "OPENEXEC_GREET_TIMES": 2,
        "OPENEXEC_GREET_API_TOKEN": None,
    }
